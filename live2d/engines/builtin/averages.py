"""Class sums and the class averages made from them.

Every particle is added to each (class, angle) frame it has weight in: its CTF-weighted spectrum
moved back by its weighted translations, and its CTF² times the frame's weight (:class:`ClassSums`).
Chunks of particles accumulate into sums of their own that are added up in chunk order
(:func:`merge_partials`), wherever they ran. The frames are turned back and summed per class into
Wiener-style averages (:func:`class_averages`), then masked, band-limited and optionally
re-centred and auto-masked (:func:`finish_classes`). Classes left with (almost) no weight are
re-seeded from the particles that fit worst (:func:`reseed`); in a streaming update, so is a
class that shows the same view as another, from the largest class (:func:`reseed_duplicates`);
in an ab initio job's startup cycles, so is a class left with almost no particles
(:func:`reseed_starved`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_fourier_shift import fourier_shift_image_2d

from live2d.engines.base import CycleParams, Reseeded, Split
from live2d.engines.builtin.geometry import EDGE_FALLOFF, Geometry, band_mask
from live2d.engines.builtin.io import RESULT_NAMES, prepare
from live2d.engines.builtin.shifts import ShiftCorrelator
from live2d.imaging import rotate, rotational_similarity, soft_disc

WIENER_CONSTANT = 0.05  # regularisation, relative to a class's mean CTF² weight
PAIR_WEIGHT_FLOOR = 1e-3  # (class, angle) pairs with less total weight are not accumulated
# A class whose likelihood weights sum to less than this (in particles) is empty: re-seeded.
EMPTY_CLASS_WEIGHT = PAIR_WEIGHT_FLOOR
# Two classes whose averages are at least this alike (view_similarity) show one view: a
# streaming update re-seeds one of them (reseed_duplicates). Two classes of one view share its
# particles' likelihood weights, so their averages reach 0.999 (tests/test_streaming.py); the
# phantom's distinct clean views reach 0.90 at most (12 views), a view and its mirror 0.89, and
# the averages of distinct views of simulated streaming sessions 0.79 (bench/quality.py
# --stream; the README's Streaming job).
DUPLICATE_SIMILARITY = 0.95
# In an ab initio job's startup cycles, a class whose particles are fewer than this share of the
# mean class's is re-seeded by splitting a large class (reseed_starved). Re-seeded from the
# particles that fit worst instead, as an empty class is, such classes caught a few junk picks
# each and kept them: on a continuum of views with 30% junk (10,000 picks, K = 20) 14 of the 20
# classes held under 100 particles, mostly junk, and the true particles crowded into 4
# (bench/continuum.py; the README's continuum table). 0.05 gained 0.020 and 0.052 there; with
# the worst-fitting particles as the seed, 0.05 and 0.1 gained alike and 0.2 and 0.5 lost.
STARVED_SHARE = 0.05
SPLIT_SAMPLE = 200  # particles of the large class averaged into the class re-seeded from it


@dataclass
class ClassSums:
    """Running sums per (class, angle) frame, frames ordered class-major (K·R of them)."""

    sums: torch.Tensor  # (K·R, W, W/2+1) complex: CTF-weighted particles, aligned to the frame
    weights: torch.Tensor  # (K·R, W, W/2+1): their CTF², times their weight in the frame
    mass: torch.Tensor  # (K,) summed likelihood weight per class

    @classmethod
    def zeros(cls, k: int, r: int, working: int, device: torch.device) -> ClassSums:
        half = working // 2 + 1
        return cls(torch.zeros((k * r, working, half), dtype=torch.complex64, device=device),
                   torch.zeros((k * r, working, half), device=device),
                   torch.zeros(k, device=device))

    def add_every_frame(self, correlator: ShiftCorrelator, corrected: torch.Tensor,
                        ctf: torch.Tensor, weights: torch.Tensor, pair: torch.Tensor) -> None:
        """Particles that met every frame: dense products, no per-pair FFTs. ``corrected``
        (B, W, H): CTF-weighted spectra; ``weights`` (B, F, T); ``pair`` (B, F) their sums."""
        self.sums += correlator.scatter_back(weights, corrected)
        self._add_weights(pair, ctf)

    def add_frames(self, corrected: torch.Tensor, ctf: torch.Tensor, weights: torch.Tensor,
                   pair: torch.Tensor, frames: torch.Tensor, shift_index: torch.Tensor) -> None:
        """Particles that met only ``frames`` (B, M): each added to those it has weight in
        (and always to its best one), through one FFT of its translation weights per pair.
        ``shift_index`` (T,): the translations' flat indices in the working box."""
        b, w = len(corrected), corrected.shape[-2]
        device = self.sums.device
        keep = pair >= PAIR_WEIGHT_FLOOR
        keep[torch.arange(b), pair.argmax(dim=1)] = True
        particle, slot = torch.nonzero(keep, as_tuple=True)
        frame = frames[particle, slot]
        maps = torch.zeros((len(particle), w * w), device=device)
        maps[:, shift_index] = weights[particle, slot]
        translation = torch.fft.rfft2(maps.view(-1, w, w)).conj()
        self.sums.index_add_(0, frame, corrected[particle] * translation)
        # Only the pairs kept, not a dense (B, K·R) product: at K = 50 that product made
        # (K·R)² numbers per batch, 5% of an 8 Å cycle for a few pairs per particle.
        kept = pair[particle, slot]
        self.weights.index_add_(0, frame, kept[:, None, None] * ctf[particle] ** 2)
        self.mass.index_add_(0, frame // (len(self.sums) // len(self.mass)), kept)

    def _add_weights(self, frame_weights: torch.Tensor, ctf: torch.Tensor) -> None:
        """Each particle's CTF² times its weight ``frame_weights`` (B, K·R) in each frame."""
        self.weights += (frame_weights.T @ (ctf**2).flatten(1)).view_as(self.weights)
        self.mass += frame_weights.sum(dim=0).view(len(self.mass), -1).sum(dim=1)

    def add(self, other: ClassSums) -> None:
        self.sums += other.sums.to(self.sums.device)
        self.weights += other.weights.to(self.weights.device)
        self.mass += other.mass.to(self.mass.device)


@dataclass
class Partial:
    """One chunk's contribution: partial class sums and its particles' results, in order."""

    sums: ClassSums
    results: dict[str, np.ndarray]


def merge_partials(total: ClassSums, partials: list[Partial]) -> dict[str, np.ndarray]:
    """Add the chunks' partial sums to ``total`` in chunk order; their per-particle results,
    joined."""
    for part in partials:
        total.add(part.sums)
    return {name: np.concatenate([part.results[name] for part in partials])
            for name in RESULT_NAMES}


@dataclass
class ReducedSums:
    """Class sums turned back to each class's own frame and summed over angles: what the
    averages are made of, independent of the angle grid (so a streaming update's kept sums of
    one batch can be added to another's made with other angles). ``numerators`` (K, W, W):
    CTF-weighted particle images; ``denominators`` (K, W, W/2+1): their CTF² weights;
    ``mass`` (K,): likelihood weight per class."""

    numerators: torch.Tensor
    denominators: torch.Tensor
    mass: torch.Tensor

    def add(self, other: ReducedSums) -> None:
        self.numerators += other.numerators
        self.denominators += other.denominators
        self.mass += other.mass

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"numerators": self.numerators, "denominators": self.denominators,
                "mass": self.mass}


def reduce_sums(sums: ClassSums, geometry: Geometry) -> ReducedSums:
    """``sums``' frames turned back by their angles and summed per class (on the CPU)."""
    k, r = len(sums.mass), len(geometry.psi)
    w = geometry.working
    half = w // 2 + 1
    angles = -np.tile(geometry.psi, k)
    numerators = rotate(torch.fft.irfft2(sums.sums, s=(w, w)).cpu(), angles)
    denominators = rotate_half_spectra(sums.weights.cpu(), angles)
    return ReducedSums(numerators.view(k, r, w, w).sum(dim=1),
                       denominators.view(k, r, w, half).sum(dim=1), sums.mass.cpu().clone())


def class_averages(sums: ClassSums | ReducedSums, geometry: Geometry,
                   band: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Class averages (K, box, box) from the sums, and the classes that stayed empty.
    ``band``: the working box's band mask."""
    reduced = sums if isinstance(sums, ReducedSums) else reduce_sums(sums, geometry)
    numerators, denominators, mass = reduced.numerators, reduced.denominators, reduced.mass
    k = len(mass)
    w, c = geometry.working, geometry.cropped
    half = w // 2 + 1
    band = band.cpu()
    level = (denominators * band).flatten(1).sum(dim=1) / band.sum().clamp_min(1)
    empty = [i for i in range(k) if float(mass[i]) < EMPTY_CLASS_WEIGHT
             or float(level[i]) <= 1e-8]
    spectra = torch.fft.rfft2(numerators) / (denominators + WIENER_CONSTANT *
                                             level.clamp_min(1e-8)[:, None, None])
    spectra = spectra * band
    padded = torch.zeros((k, c, c // 2 + 1), dtype=spectra.dtype)
    padded[:, : w // 2, : half] = spectra[:, : w // 2]
    padded[:, c - w // 2:, : half] = spectra[:, w // 2:]
    images = torch.fft.irfft2(padded, s=(c, c))
    out = torch.zeros((k, geometry.box, geometry.box))
    start = geometry.box // 2 - c // 2
    out[:, start:start + c, start:start + c] = images
    return out, empty


def rotate_half_spectra(half: torch.Tensor, angles: np.ndarray) -> torch.Tensor:
    """Turn real, centro-symmetric rfft2 maps (e.g. CTF² sums) like their images turn."""
    w = half.shape[-2]
    full = torch.cat([half, half[..., (-torch.arange(w)) % w, :][..., 1: w - half.shape[-1] + 1]
                      .flip(-1)], dim=-1)
    centred = torch.fft.fftshift(full, dim=(-2, -1))
    turned = torch.fft.ifftshift(rotate(centred, angles), dim=(-2, -1))
    return turned[..., : half.shape[-1]].clamp_min(0)


def finish_classes(classes: torch.Tensor, geometry: Geometry, params: CycleParams,
                   auto_center: bool) -> torch.Tensor:
    """Classes band-limited, zero-mean and masked; re-centred on their density if
    ``auto_center``, auto-masked if the parameters ask for it."""
    box = geometry.box
    falloff = EDGE_FALLOFF / geometry.pixel_size
    mask = soft_disc(box, geometry.mask_radius, falloff)
    spectra = torch.fft.rfft2(classes)
    spectra *= band_mask(box, geometry.pixel_size, params.high_res, params.low_res,
                         torch.device("cpu"))
    spectra[..., 0, 0] = 0  # zero mean: what cisTEM's averages and the scores assume
    classes = torch.fft.irfft2(spectra, s=(box, box)) * mask
    if auto_center:
        classes = centred(classes, mask)
    if params.auto_mask:
        classes = classes * automatic_mask(classes, mask)
    return classes


def centred(classes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each class moved so that the centre of its positive density within ``mask`` is the
    box's centre (then masked)."""
    box = classes.shape[-1]
    positive = classes.clamp_min(0) * mask
    mass = positive.flatten(1).sum(dim=1).clamp_min(1e-12)
    coords = torch.arange(box, dtype=torch.float32) - box // 2
    cy = (positive.sum(dim=2) * coords).sum(dim=1) / mass
    cx = (positive.sum(dim=1) * coords).sum(dim=1) / mass
    return fourier_shift_image_2d(classes, torch.stack([-cy, -cx], dim=1)) * mask


def view_similarity(averages: torch.Tensor, mask_radius_px: float) -> np.ndarray:
    """``(K, K)``: how alike each pair of class averages is whatever their in-plane angle and
    centring (each centred on its density, then the best correlation over rotations; the same
    view in two classes reaches about 1)."""
    mask = soft_disc(averages.shape[-1], mask_radius_px, 3.0)
    moved = centred(averages.float(), mask).numpy()
    similarity = rotational_similarity(moved, moved, mask_radius_px)
    return np.maximum(similarity, similarity.T)  # only one side turns: interpolation


def automatic_mask(classes: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
    """A soft mask around each class's density: threshold, dilate, soften."""
    smooth = torch.nn.functional.avg_pool2d(classes[:, None], 5, stride=1, padding=2)[:, 0]
    peak = smooth.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    binary = (smooth > 0.15 * peak).float()[:, None]
    grown = torch.nn.functional.max_pool2d(binary, 7, stride=1, padding=3)
    soft = torch.nn.functional.avg_pool2d(grown, 5, stride=1, padding=2)[:, 0]
    return torch.maximum(soft, torch.zeros_like(soft)) * disc


def reseed(averages: torch.Tensor, empty: list[int], stack: np.ndarray, used: np.ndarray,
           results: dict[str, np.ndarray], params: CycleParams,
           geometry: Geometry) -> torch.Tensor:
    """Empty classes restart from the particles that fit worst, where a missing view hides."""
    worst = used[np.argsort(results["logp"])]
    per_class = _seed_size(len(used), len(averages))
    for slot, start in zip(empty, range(0, len(worst), per_class), strict=False):
        averages[slot] = _seed(stack, worst[start:start + per_class], params, geometry)
    return averages


def reseed_duplicates(averages: torch.Tensor, counts: np.ndarray, empty: list[int],
                      stack: np.ndarray, used: np.ndarray, results: dict[str, np.ndarray],
                      params: CycleParams, geometry: Geometry,
                      threshold: float | None = None) -> list[Reseeded]:
    """Re-seed, in place, each class whose average shows the same view as another's
    (:func:`view_similarity` at least ``threshold``, default :data:`DUPLICATE_SIMILARITY`):
    of the two, the one with fewer particles (``counts``) restarts from the particles of
    ``used`` (their ``results``) that fit worst in the largest class not re-seeded, aligned as
    they matched it: that class split in two. ``empty`` classes (re-seeded already) are not
    judged. Returns what was re-seeded, most similar pair first."""
    threshold = DUPLICATE_SIMILARITY if threshold is None else threshold
    judged = [c for c in range(len(averages)) if c not in empty]
    if len(judged) < 2:
        return []
    similarity = view_similarity(averages[judged], geometry.mask_radius)
    pairs = sorted(((float(similarity[i, j]), judged[i], judged[j])
                    for i, j in zip(*np.triu_indices(len(judged), 1), strict=True)
                    if similarity[i, j] >= threshold), reverse=True)
    best = results["cls"].astype(np.int64) - 1
    done: list[Reseeded] = []
    for value, a, b in pairs:
        if any(r.cls in (a, b) for r in done):
            continue
        smaller, kept = (a, b) if (counts[a], -a) < (counts[b], -b) else (b, a)
        sources = [c for c in np.argsort(-counts, kind="stable").tolist()
                   if c not in empty and c != smaller and (best == c).any()
                   and all(c not in (r.cls, r.source) for r in done)]
        if not sources:
            break
        members = np.flatnonzero(best == sources[0])
        worst = members[np.argsort(results["logp"][members], kind="stable")][
            :_seed_size(len(used), len(averages))]
        # the part of the class that fits it least, as one of its two halves once split
        averages[smaller] = _aligned_mean(worst, stack, used, results, params, geometry)
        done.append(Reseeded(smaller, kept, value, sources[0]))
    return done


def reseed_starved(averages: torch.Tensor, counts: np.ndarray, empty: list[int],
                   stack: np.ndarray, used: np.ndarray, results: dict[str, np.ndarray],
                   params: CycleParams, geometry: Geometry, rng: np.random.Generator,
                   share: float | None = None) -> list[Split]:
    """Re-seed, in place, each class whose particles (``counts``) are fewer than ``share``
    (default :data:`STARVED_SHARE`) of the mean class's, from a random sample of the particles
    of one of the largest classes (a different one for each), aligned as they matched it: a
    second copy of that class, the two parting its particles between them as the cycles go on.
    (Its worst-fitting particles, as :func:`reseed_duplicates` takes, averaged into a blur that
    drew no particles in small sessions.) A source holds at least twice the particles it seeds
    with. ``empty`` classes (re-seeded already) are not judged. Returns what was re-seeded."""
    share = STARVED_SHARE if share is None else share
    floor = share * counts.sum() / max(len(counts), 1)
    starved = [c for c in range(len(counts)) if c not in empty and counts[c] < floor]
    per_class = _seed_size(len(used), len(averages))
    sources = [c for c in np.argsort(-counts, kind="stable").tolist()
               if c not in empty and c not in starved and counts[c] >= 2 * per_class]
    done = []
    for cls, source in zip(starved, sources, strict=False):
        members = np.flatnonzero(results["cls"].astype(np.int64) - 1 == source)
        sample = np.sort(rng.permutation(members)[:SPLIT_SAMPLE])
        averages[cls] = _aligned_mean(sample, stack, used, results, params, geometry)
        done.append(Split(cls, int(counts[cls]), source))
    return done


def _aligned_mean(rows: np.ndarray, stack: np.ndarray, used: np.ndarray,
                  results: dict[str, np.ndarray], params: CycleParams,
                  geometry: Geometry) -> torch.Tensor:
    """The mean of the particles ``rows`` (of ``used``), aligned as they matched their class
    (cisTEM's rotate(shift(P, (SHX, SHY)), PSI))."""
    images = _prepared(stack, used[rows], params, geometry)
    moved = fourier_shift_image_2d(images, torch.as_tensor(np.stack(
        [results["shy"][rows], results["shx"][rows]], axis=1) / params.pixel_size,
        dtype=torch.float32))
    return rotate(moved, results["psi"][rows]).mean(dim=0)


def _seed_size(used: int, classes: int) -> int:
    """Particles averaged into a re-seeded class."""
    return max(1, min(50, used // max(classes, 1)))


def _seed(stack: np.ndarray, members: np.ndarray, params: CycleParams,
          geometry: Geometry) -> torch.Tensor:
    """A class restarted from ``members``: their plain mean, as prepared for the search."""
    return _prepared(stack, members, params, geometry).mean(dim=0)


def _prepared(stack: np.ndarray, members: np.ndarray, params: CycleParams,
              geometry: Geometry) -> torch.Tensor:
    background = ~(soft_disc(geometry.box, geometry.mask_radius, 0.0) > 0)
    return prepare(stack, members, params, background, torch.device("cpu"))
