"""The search of one cycle: every particle scored against every turned class at every shift.

The classes are turned once per cycle by every angle of the psi grid into a bank of reference
spectra ("frames"). Every particle is scored against the frames at every translation within the
search range at once, with its own CTF and whitened by the noise spectrum: log-likelihoods,
scaled by the smoothing factor (inverse temperature) and a Gaussian prior on the shift, give
weights over (class, angle, shift), which :class:`ClassSums` accumulates. The translations come
from dense matrix products (:class:`ShiftCorrelator`), or, for the few frames a particle keeps
after a half-resolution pass over all of them (working boxes >= ``COARSE_SEARCH_MIN_BOX``), from
FFTs, or from matrix products at the search's translations only (:class:`PairShifts`, boxes >=
``PAIR_SHIFTS_MIN_BOX``). As in refine2d, each particle's previous best match (previous class,
psi and shift) is scored too and reported when it beats the grid, so a coarse or re-offset grid
does not throw away a finer earlier alignment; the class sums come from the grid's weights.

Conventions, the same as cisTEM's refine2d: a particle P with (PSI, SHX, SHY) matches its class
average A as ``A ≈ rotate(shift(P, (SHX, SHY)), PSI)``, so the reported shift is minus the
particle's displacement.
"""

from __future__ import annotations

import copy as _copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from live2d.engines.base import CycleParams
from live2d.engines.builtin.averages import ClassSums
from live2d.engines.builtin.geometry import (
    EDGE_FALLOFF,
    Geometry,
    band_mask,
    even_ceil,
    fourier_crop,
    parabola_peak,
    shell_average,
    shift_neighbours,
)
from live2d.engines.builtin.io import (
    CTF_COLUMNS,
    Rows,
    SerialReads,
    batches,
    prepare,
    star_column,
)
from live2d.engines.builtin.shifts import PairShifts, ShiftCorrelator
from live2d.engines.builtin.workers import run_ordered
from live2d.imaging import ctf_2d, rotate, shift_phases, soft_disc

LOG_WEIGHT_FLOOR = -80.0  # log-likelihood below the best one's at which a weight counts as 0
TURNED_REFERENCES_KEPT = 4096  # classes turned to previous psi values, kept for a cycle
# Working boxes from this size on (every box of a 40 -> 8 Å ramp on usual data) get a
# half-resolution pass over every (class, angle) frame; only the best frames of each particle
# are then searched at full resolution. Scoring every frame at every shift instead made the
# ramp's middle (16-30 px boxes, 17-26 Å) 10x slower than its 8 Å end, at no gain in quality ...
COARSE_SEARCH_MIN_BOX = 8
COARSE_CANDIDATE_FRACTION = 0.05  # ... this fraction of them,
COARSE_MIN_CANDIDATES = 16  # but never fewer than this.
PAIR_SHIFTS_MIN_BOX = 16  # working px: see Search.pair_shifts
# A parabola through three angles fits the score's peak only while they sit on its flanks: the
# reported psi is interpolated on grids this fine or finer.
ANGLE_REFINEMENT_MAX_STEP = 20.0


@dataclass
class PreviousMatch:
    """Per particle of a batch: its previous best match and how it scores now."""

    cls: torch.Tensor  # 0-based class
    psi: torch.Tensor
    shx: torch.Tensor
    shy: torch.Tensor
    corr: torch.Tensor
    signal: torch.Tensor  # |CTF·A|²/noise of that reference, as the grid's best has
    score: torch.Tensor  # on the grid's scale (smoothing × log-likelihood + prior); -inf: none


@dataclass
class Contribution:
    """What a scored batch adds to class sums (:meth:`Search.add`): kept apart from the scoring
    so that batches can be scored side by side and still be added in their order."""

    corrected: torch.Tensor  # (B, W, H) CTF-weighted spectra
    ctf: torch.Tensor  # (B, W, H)
    weights: torch.Tensor  # (B, M, T) over the frames searched and the translations
    pair: torch.Tensor  # (B, M) their sums over the translations
    frames: torch.Tensor  # (B, M) the frames searched


class Search:
    """The per-cycle state: rotated reference spectra, noise model and the running sums."""

    def __init__(self, geometry: Geometry, params: CycleParams, classes: torch.Tensor,
                 device: torch.device, threads: int = 1) -> None:
        """``threads``: threads turning the classes into the reference bank
        (:func:`~live2d.engines.builtin.workers.run_ordered`); the bank is the same for any."""
        self.g, self.params, self.device = geometry, params, device
        w = geometry.working
        self.k, self.r = len(classes), len(geometry.psi)
        self.half = w // 2 + 1
        self.background = ~(soft_disc(geometry.box, geometry.mask_radius, 0.0) > 0)
        self.edge = soft_disc(geometry.cropped, geometry.cropped / 2.0 - EDGE_FALLOFF /
                              geometry.pixel_size, EDGE_FALLOFF / geometry.pixel_size).to(device)
        self.band = band_mask(w, geometry.binned_pixel, params.high_res, params.low_res, device)
        self.pair_weights = torch.full((w, self.half), 2.0, device=device)
        self.pair_weights[:, 0] = 1.0
        if w % 2 == 0:
            self.pair_weights[:, -1] = 1.0
        self.usable = classes.flatten(1).std(dim=1) > 0  # all-zero classes are skipped
        self.classes = classes.to(device)  # for each particle's previous best match
        self._turned: dict[tuple[int, float], torch.Tensor] = {}
        self.references = self._turned_classes(classes, threads)  # (K·R, W, W/2+1)
        flat = geometry.shifts[:, 0] % w * w + geometry.shifts[:, 1] % w
        self.shift_index = flat.to(device)
        self.neighbours = shift_neighbours(geometry.shifts).to(device)
        self.log_prior = geometry.log_prior.to(device)
        self.reference_power = (self.references.abs() ** 2 * self.pair_weights).flatten(1)
        frames = self.k * self.r
        self.candidates = min(frames, max(COARSE_MIN_CANDIDATES,
                                          math.ceil(COARSE_CANDIDATE_FRACTION * frames)))
        self.coarse = (self._coarse_search()
                       if w >= COARSE_SEARCH_MIN_BOX and self.candidates < frames else None)
        # Without a coarse pass every particle meets every frame: one correlator for them all.
        self.everything = (ShiftCorrelator(self.references, geometry.shifts.to(device))
                           if self.coarse is None else None)
        # The frames each particle keeps: their translations by matrix products from
        # PAIR_SHIFTS_MIN_BOX on, by inverse FFTs (cheaper on the smallest boxes) below.
        self.pair_shifts = (PairShifts(w, geometry.shifts.to(device))
                            if self.coarse is not None and w >= PAIR_SHIFTS_MIN_BOX else None)
        self.noise = torch.ones((w, self.half), device=device)
        self.sums = self.empty_sums()

    def _turned_classes(self, classes: torch.Tensor, threads: int) -> torch.Tensor:
        """Spectra of every class turned by every angle of the grid, class-major; a class a
        unit of work (each image is turned and transformed on its own: the same numbers)."""
        banks: list[torch.Tensor] = []

        def turn(cls: int) -> torch.Tensor:
            turned = rotate(classes[cls].expand(self.r, -1, -1), self.g.psi)
            return self._spectra(turned.to(self.device))

        run_ordered(range(self.k), turn, lambda _, bank: banks.append(bank), threads)
        return torch.cat(banks)

    def _coarse_search(self) -> ShiftCorrelator:
        """Half-resolution references and band, shifts on every other working pixel."""
        size = even_ceil(self.g.working / 2)
        references = fourier_crop(self.references, size)
        self.coarse_band = fourier_crop(self.band, size)
        weights = torch.full((size, size // 2 + 1), 2.0, device=self.device)
        weights[:, 0] = 1.0
        weights[:, -1] = 1.0
        self.coarse_power = (references.abs() ** 2 * weights).flatten(1)
        shifts = torch.unique(torch.div(self.g.shifts, 2, rounding_mode="floor"), dim=0)
        return ShiftCorrelator(references, shifts.to(self.device))

    def _spectra(self, images: torch.Tensor) -> torch.Tensor:
        """Box-sized images -> working-box rfft2 spectra (crop, soft edge, Fourier crop)."""
        return fourier_crop(torch.fft.rfft2(self._cropped(images) * self.edge), self.g.working)

    def _cropped(self, images: torch.Tensor) -> torch.Tensor:
        """The centre of box-sized images that the search uses (``cropped`` px)."""
        c = self.g.cropped
        start = self.g.box // 2 - c // 2
        return images[..., start:start + c, start:start + c]

    def _particles(self, stack: np.ndarray, batch: np.ndarray,
                   rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows``: the star rows of ``batch``, in its order."""
        images = prepare(stack, batch, self.params, self.background, self.device)
        ctf = ctf_2d(*(star_column(rows, name, self.device) for name in CTF_COLUMNS),
                     self.g.binned_pixel, self.g.working)
        return self._spectra(images), ctf

    def estimate_noise(self, stack: np.ndarray, sample: np.ndarray, table: pd.DataFrame,
                       threads: int = 1) -> None:
        """Noise power per resolution shell from the particles' backgrounds, at the level the
        particles' own spectra (windowed by the soft edge) hold it; ``threads`` read and
        transform batches side by side, added up in order (the same for any).

        The background is read through itself, not through the edge window: where the mask
        nearly fills the box the edge cuts off almost all of it (on a 64-px box with an 88 Å
        mask, dividing by the background's area gave a level 70x too low: a likelihood 70x
        too sharp, every particle wholly in one class from the first cycle on)."""
        total = torch.zeros((self.g.working, self.half), device=self.device)
        outside = self.background.to(self.device)
        window = self._cropped(outside.float())
        # White noise of unit variance through a window w has power Σw² per coefficient.
        scale = float((self.edge**2).sum()) / max(float((window**2).sum()),
                                                  0.05 * float((self.edge**2).sum()))
        stack = SerialReads(stack)

        def background_power(batch: np.ndarray) -> torch.Tensor:
            images = prepare(stack, batch, self.params, self.background, self.device)
            spectra = fourier_crop(torch.fft.rfft2(self._cropped(images * outside)),
                                   self.g.working)
            return (spectra.abs() ** 2).sum(dim=0)

        def add(_: int, batch_power: torch.Tensor) -> None:
            total.add_(batch_power)

        run_ordered([batch for _, batch in batches(np.sort(sample), self.batch_size_for_noise)],
                    background_power, add, threads)
        power = total / max(len(sample), 1) * scale
        self.noise = shell_average(power).clamp_min(1e-6)

    batch_size_for_noise = 64

    def score(self, stack: np.ndarray, batch: np.ndarray,
              rows: Rows) -> tuple[dict[str, np.ndarray], Contribution]:
        """The particles' results and what they add to class sums; changes nothing of the
        search's own (but its cache of turned references), so threads may score side by side."""
        spectra, ctf = self._particles(stack, batch, rows)
        b, w = len(batch), self.g.working
        filtered = spectra * ctf * self.band / self.noise  # (B, W, H)
        particle_ctf = (ctf**2 * self.band / self.noise).flatten(1)
        previous = self._previous_match(filtered, particle_ctf, rows)
        norms = 0.5 * particle_ctf @ self.reference_power.T  # (B, KR): ½Σ|CTF·A|²/noise
        frames = self._candidates(filtered, particle_ctf)  # (B, M) frames to search
        batch_rows = torch.arange(b, device=self.device)[:, None]
        if self.everything is not None:
            corr = self.everything.at_shifts(filtered)  # (B, M, T)
        else:
            cross = filtered[:, None] * self.references[frames].conj()  # (B, M, W, H)
            if self.pair_shifts is not None:
                corr = self.pair_shifts.at_shifts(cross)  # (B, M, T)
            else:
                maps = torch.fft.irfft2(cross, s=(w, w)) * (w * w)
                corr = maps.flatten(2)[..., self.shift_index]  # (B, M, T)
                del maps
            del cross
        frame_norms = norms[batch_rows, frames]
        # in place where possible: these (B, M, T) arrays are the biggest of the cycle
        scores = corr - frame_norms[..., None]
        scores.mul_(self.params.smoothing).add_(self.log_prior)
        unusable = None
        if not bool(self.usable.all()):
            unusable = ~self.usable.to(self.device)[frames // self.r]
            scores.masked_fill_(unusable[..., None], -torch.inf)
        peak, best = scores.view(b, -1).max(dim=1)
        best_slot, best_shift = best // scores.shape[-1], best % scores.shape[-1]
        fine_shift, fine_angle = self._refine_peak(scores, frames, best_slot, best_shift,
                                                   filtered, norms)
        # Relative weights below e^-80 change nothing, and the CPU's vectorised exp is 10x
        # slower on arguments far below that; the scores are not needed after this.
        scores.sub_(peak[:, None, None]).clamp_min_(LOG_WEIGHT_FLOOR)
        if unusable is not None:
            scores.masked_fill_(unusable[..., None], -torch.inf)
        weights = scores.exp_()
        total = weights.view(b, -1).sum(dim=1)
        weights /= total[:, None, None]
        log_z = peak + torch.log(total)
        index = torch.arange(b, device=self.device)
        best_frame = frames[index, best_slot]
        best_class, best_angle = best_frame // self.r, best_frame % self.r
        pair = weights.sum(dim=2)  # (B, M) weight of each (class, angle) frame
        contribution = Contribution(spectra * ctf, ctf, weights, pair, frames)

        signal = 2.0 * frame_norms[index, best_slot]
        particle_power = ((spectra.abs() ** 2 * self.band / self.noise) *
                          self.pair_weights).flatten(1).sum(dim=1)
        best_corr = corr[index, best_slot, best_shift]
        shift = (self.g.shifts.to(self.device)[best_shift].float() + fine_shift) * \
            self.g.binned_pixel
        grid = torch.as_tensor(self.g.psi, device=self.device, dtype=torch.float32)
        psi = (-(grid[best_angle] + fine_angle * (360.0 / self.r))) % 360.0
        shx, shy = -shift[:, 1], -shift[:, 0]
        if previous is not None:  # where the previous match scores higher, it is reported
            wins = previous.score > peak
            best_class = torch.where(wins, previous.cls, best_class)
            psi, shx, shy = (torch.where(wins, new, old) for new, old in
                             ((previous.psi, psi), (previous.shx, shx), (previous.shy, shy)))
            best_corr = torch.where(wins, previous.corr, best_corr)
            signal = torch.where(wins, previous.signal, signal)
        residual = (particle_power - 2.0 * best_corr + signal).clamp_min(1e-12)
        same_class = (frames // self.r) == best_class[:, None]
        class_weight = (pair * same_class).sum(dim=1)
        out = {
            "cls": best_class + 1,
            "psi": psi,
            "shx": shx,
            "shy": shy,
            "occ": 100.0 * class_weight,
            "logp": log_z,
            "sigma": torch.sqrt(residual / signal.clamp_min(1e-12)).clamp(max=100.0),
            "score": 100.0 * best_corr / torch.sqrt(particle_power * signal).clamp_min(1e-12),
        }
        return {name: value.double().cpu().numpy() for name, value in out.items()}, contribution

    def _refine_peak(self, scores: torch.Tensor, frames: torch.Tensor, best_slot: torch.Tensor,
                     best_shift: torch.Tensor, filtered: torch.Tensor, norms: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best match between grid points, as refine2d interpolates its peaks: a parabola
        through the scores of the best translation's neighbours along dy and dx (working px,
        ``(B, 2)``), and through the neighbouring angles of the best class at the best
        translation (angle steps, ``(B,)``). Reporting grid points only cost homogeneity: half a
        15° step is 5 Å at the edge of a 40 Å mask. A neighbouring angle that the
        half-resolution pass left out is scored here at that translation: it was left out for
        half the particles, whose psi then stayed on the grid (twice the psi error, issue 30)."""
        b = len(scores)
        index = torch.arange(b, device=self.device)
        at_frame = scores[index, best_slot]  # (B, T)
        centre = at_frame[index, best_shift]
        neighbours = self.neighbours[best_shift]  # (B, 4)
        around = at_frame.gather(1, neighbours.clamp_min(0))
        around = around.masked_fill(neighbours < 0, -torch.inf)
        fine_shift = torch.stack([parabola_peak(around[:, 0], centre, around[:, 1]),
                                  parabola_peak(around[:, 2], centre, around[:, 3])], dim=1)
        if 360.0 / self.r > ANGLE_REFINEMENT_MAX_STEP:
            return fine_shift, torch.zeros(b, device=self.device)
        frame = frames[index, best_slot]
        cls, angle = frame // self.r, frame % self.r
        steps = torch.tensor([-1, 1], device=self.device)
        wanted = cls[:, None] * self.r + (angle[:, None] + steps) % self.r  # (B, 2)
        found = frames[:, None, :] == wanted[..., None]  # (B, 2, M)
        slot = found.float().argmax(dim=2)
        sides = scores[index[:, None], slot, best_shift[:, None]]  # (B, 2)
        # Only the sides the half-resolution pass left out, all in one product.
        particle, side = (~found.any(dim=2)).nonzero(as_tuple=True)
        if len(particle):
            sides[particle, side] = self._score_at(filtered[particle], norms[particle],
                                                   wanted[particle, side], best_shift[particle])
        return fine_shift, parabola_peak(sides[:, 0], centre, sides[:, 1])

    def _score_at(self, filtered: torch.Tensor, norms: torch.Tensor, frame: torch.Tensor,
                  shift: torch.Tensor) -> torch.Tensor:
        """``(B,)`` each particle's score against its own ``frame`` at its own translation
        (index into the grid's), on the grid's scale."""
        index = torch.arange(len(frame), device=self.device)
        dy, dx = self.g.shifts.to(self.device)[shift].float().unbind(dim=1)
        phase = shift_phases(dy, dx, self.g.working, sign=1.0)
        corr = ((filtered * self.references[frame].conj() * phase).real * self.pair_weights)
        corr = corr.flatten(1).sum(dim=1)
        return ((corr - norms[index, frame]) * self.params.smoothing
                + self.log_prior[shift])

    def _previous_match(self, filtered: torch.Tensor, particle_ctf: torch.Tensor,
                        rows: Rows) -> PreviousMatch | None:
        """As refine2d, each particle's previous best match (its previous class turned by its
        previous psi, at its previous shift) is scored like a grid point, so that an alignment
        between this cycle's grid points is kept when it fits better. -inf where there is none
        (never classified, or its class is now empty)."""
        if "2DCLS" not in rows:
            return None
        previous = np.abs(np.asarray(rows["2DCLS"], dtype=np.int64))
        classified = (previous >= 1) & (previous <= self.k)
        if not classified.any():
            return None
        cls = torch.as_tensor(np.clip(previous, 1, self.k) - 1, device=self.device)
        valid = torch.as_tensor(classified, device=self.device)
        valid &= self.usable.to(self.device)[cls]
        psi, shx, shy = (star_column(rows, name, self.device) for name in ("PSI", "SHX", "SHY"))
        references = self._turned_references(cls, np.array(rows["PSI"], dtype=np.float64))
        # the reported shift is minus the displacement: back to (dy, dx) working pixels
        dy, dx = -shy / self.g.binned_pixel, -shx / self.g.binned_pixel
        phase = shift_phases(dy, dx, self.g.working, sign=1.0)
        corr = ((filtered * references.conj() * phase).real * self.pair_weights).flatten(1)
        corr = corr.sum(dim=1)
        norm = 0.5 * (particle_ctf * (references.abs() ** 2 * self.pair_weights).flatten(1))
        norm = norm.sum(dim=1)
        log_prior = -(dy**2 + dx**2) / (2.0 * self.g.prior_sigma**2)
        score = (corr - norm) * self.params.smoothing + log_prior
        return PreviousMatch(cls=cls, psi=psi % 360.0, shx=shx, shy=shy, corr=corr,
                             signal=2.0 * norm,
                             score=torch.where(valid, score, torch.full_like(score, -torch.inf)))

    def _turned_references(self, cls: torch.Tensor, psi: np.ndarray) -> torch.Tensor:
        """Spectra of the classes turned to the particles' previous psi. Those are mostly the
        previous cycle's grid angles, so each (class, psi) is turned once per cycle and kept.
        Threads scoring side by side share the cache: it is only read and written key by key
        (each step atomic under the GIL), and a key's spectrum is the same whoever made it."""
        keys = list(zip(cls.tolist(), np.round(psi, 3).tolist(), strict=True))
        found = {key: self._turned.get(key) for key in set(keys)}
        missing = sorted(key for key, spectrum in found.items() if spectrum is None)
        if missing:
            classes = torch.as_tensor([c for c, _ in missing], device=self.device)
            angles = np.array([-angle for _, angle in missing])
            spectra = self._spectra(rotate(self.classes[classes], angles))
            found.update(zip(missing, spectra, strict=True))
            if len(self._turned) + len(missing) > TURNED_REFERENCES_KEPT:
                self._turned.clear()
            self._turned.update(zip(missing, spectra, strict=True))
        return torch.stack([found[key] for key in keys])

    def _candidates(self, filtered: torch.Tensor, particle_ctf: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` (class, angle) frames worth a full-resolution look: all of them for small
        boxes, else the best ones of a half-resolution pass over every frame and shift."""
        b, frames = len(filtered), self.k * self.r
        if self.coarse is None:
            return torch.arange(frames, device=self.device).expand(b, frames)
        size = self.coarse.size
        coarse = fourier_crop(filtered, size) * self.coarse_band
        coarse_norms = 0.5 * self._coarse_norms(particle_ctf)  # (B, F)
        best = self.coarse.best(coarse, coarse_norms)
        usable = self.usable.to(self.device).repeat_interleave(self.r)
        return best.masked_fill(~usable, -torch.inf).topk(self.candidates, dim=1).indices

    def _coarse_norms(self, particle_ctf: torch.Tensor) -> torch.Tensor:
        w = self.g.working
        ctf_power = fourier_crop(particle_ctf.view(-1, w, self.half), self.coarse.size)
        ctf_power = ctf_power * self.coarse_band
        return ctf_power.flatten(1) @ self.coarse_power.T

    def add(self, sums: ClassSums, batch: Contribution) -> None:
        """Add each particle of a scored batch to every (class, angle) frame of ``sums`` it has
        weight in, shifted back by the weighted translations, and its CTF² times the frame's
        weight to the frame's weights."""
        if self.everything is not None:  # every frame: dense products, no per-pair FFTs
            sums.add_every_frame(self.everything, batch.corrected, batch.ctf, batch.weights,
                                 batch.pair)
        else:
            sums.add_frames(batch.corrected, batch.ctf, batch.weights, batch.pair, batch.frames,
                            self.shift_index)

    def empty_sums(self) -> ClassSums:
        """Class sums of this search's frames, all zero."""
        return ClassSums.zeros(self.k, self.r, self.g.working, self.device)

    def without_sums(self) -> Search:
        """What the workers need, without the (empty) accumulators: less to send."""
        copy = _copy.copy(self)
        copy.sums = None  # type: ignore[assignment]
        return copy
