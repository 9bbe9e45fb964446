"""Live2D's built-in 2D classification engine: maximum likelihood in PyTorch, CPU or CUDA.

One cycle follows the semantics of cisTEM's refine2d (../shared/cistem-interface.md):

1. Particles are normalised (background mean 0, s.d. 1), turned white-protein, cropped to the box
   that the mask and search range need, and Fourier-cropped to the high-resolution limit, so the
   early low-resolution cycles are cheap.
2. A noise power spectrum is estimated from the particles' backgrounds.
3. The classes are turned once per cycle by every angle of the psi grid (random offset per
   cycle) into a bank of reference spectra ("frames"). Every particle is scored against every
   frame at every translation within the search range at once, with its own CTF and whitened by
   the noise spectrum: log-likelihoods, scaled by the smoothing factor (inverse temperature) and
   a Gaussian prior on the shift, give weights over (class, angle, shift). The translations come
   from dense matrix products (:class:`_ShiftCorrelator`), or, for the few frames a particle
   keeps after a half-resolution pass over all of them (working boxes >= 8 px), from FFTs.
   As in refine2d, each particle's previous best match (previous class, psi and shift) is
   scored too and reported when it beats the grid, so a coarse or re-offset grid does not
   throw away a finer earlier alignment; the class sums come from the grid's weights.
4. Class sums of CTF-weighted, aligned particles and of CTF² form Wiener-style averages, masked,
   band-limited and optionally re-centred and auto-masked. Classes left with (almost) no weight
   are re-seeded from the particles that fit worst.

Conventions, the same as cisTEM's refine2d (so either engine continues the other's cycles) and
:mod:`live2d.imaging`'s: a particle P with (PSI, SHX, SHY) matches its class average A as
``A ≈ rotate(shift(P, (SHX, SHY)), PSI)`` (rotate: counter-clockwise by PSI degrees about pixel
(box//2, box//2); shift: by (SHX, SHY) Å towards higher column/row indices), so the reported
shift is minus the particle's displacement. Unused particles (fraction < 1, or excluded for blank
edges) keep their row with the class negated and CHANGE 0. Class averages have protein white.

Memory: particles stream from the memory-mapped stack in batches of ``batch_size``; what a cycle
holds is the frame bank and sums (K × angles × working box²) plus per-batch arrays (batch × frames
× translations), independent of the number of particles (apart from 8 numbers per particle for
the star file): about 0.2 GB over PyTorch's own for K = 50, 8 Å, 128 px, batch 32.
"""

from __future__ import annotations

import copy as _copy
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mrcfile
import numpy as np
import pandas as pd
import torch
from torch_fourier_shift import fourier_shift_image_2d

from live2d import cistem_star
from live2d.atomic import replacing
from live2d.engines.base import (
    CycleCancelled,
    CycleParams,
    CycleRequest,
    CycleResult,
    Engine,
    EngineError,
    Progress,
    ProgressCallback,
    class_counts,
)
from live2d.imaging import blank_edges, ctf_2d, rotate, soft_disc
from live2d.mrc import read_images

if TYPE_CHECKING:
    from live2d.executors import Executor

EDGE_FALLOFF = 20.0  # Å of soft edge around masks and cropped boxes, as cisTEM
WIENER_CONSTANT = 0.05  # regularisation, relative to a class's mean CTF² weight
PAIR_WEIGHT_FLOOR = 1e-3  # (class, angle) pairs with less total weight are not accumulated
# A class whose likelihood weights sum to less than this (in particles) is empty: re-seeded.
EMPTY_CLASS_WEIGHT = PAIR_WEIGHT_FLOOR
LOG_WEIGHT_FLOOR = -80.0  # log-likelihood below the best one's at which a weight counts as 0
NOISE_SAMPLE = 300  # particles used to estimate the noise spectrum
EDGE_CHECK_BATCH = 1024  # particles read at once when looking for blank edges
TURNED_REFERENCES_KEPT = 4096  # classes turned to previous psi values, kept for a cycle
# Working boxes from this size on (every box of a 40 -> 8 Å ramp on usual data) get a
# half-resolution pass over every (class, angle) frame; only the best frames of each particle
# are then searched at full resolution. Scoring every frame at every shift instead made the
# ramp's middle (16-30 px boxes, 17-26 Å) 10x slower than its 8 Å end, at no gain in quality ...
COARSE_SEARCH_MIN_BOX = 8
COARSE_CANDIDATE_FRACTION = 0.05  # ... this fraction of them,
COARSE_MIN_CANDIDATES = 16  # but never fewer than this.
# Batches per chunk: the unit of work a cluster worker gets, and of the partial sums that are
# added up in order (the same in-process, so that both give the same averages).
CHUNK_BATCHES = 16


@dataclass(frozen=True)
class Geometry:
    box: int
    pixel_size: float
    cropped: int  # real-space crop holding mask and search range
    working: int  # Fourier-cropped box the search runs in
    binned_pixel: float
    psi: np.ndarray  # (R,) this cycle's angle grid, degrees
    shifts: torch.Tensor  # (T, 2) integer (dy, dx) translations in working pixels
    log_prior: torch.Tensor  # (T,) Gaussian prior on the translation
    prior_sigma: float  # working px: that prior's width
    mask_radius: float  # px of the stack


def plan_geometry(params: CycleParams, box: int, rng: np.random.Generator) -> Geometry:
    pixel = params.pixel_size
    search = params.search_range if params.search_range > 0 else box * pixel / 4.0
    needed = 2.0 * (search + params.mask_radius + EDGE_FALLOFF) / pixel
    cropped = min(box, _even_ceil(needed))
    high_res = max(params.high_res, 2.0 * pixel)
    working = min(cropped, _even_ceil(2.0 * cropped * pixel / high_res))
    binned = pixel * cropped / working
    mask_radius = min(params.mask_radius / pixel, box / 2.0 - 1.0)
    step = params.angular_step if params.angular_step > 0 else math.degrees(
        binned / max(params.mask_radius, binned))
    n_angles = max(1, round(360.0 / step))
    step = 360.0 / n_angles
    psi = (step / 2.0 * rng.uniform(-1.0, 1.0) + step * np.arange(n_angles)) % 360.0
    radius = min(search / binned, working / 2.0 - 1.0)
    reach = math.floor(radius)
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = dy**2 + dx**2 <= radius**2 + 1e-6
    shifts = torch.as_tensor(np.stack([dy[inside], dx[inside]], axis=1), dtype=torch.long)
    sigma = max(search / 2.0 / binned, 1.0)
    log_prior = -(shifts.float() ** 2).sum(dim=1) / (2.0 * sigma**2)
    return Geometry(box, pixel, cropped, working, binned, psi, shifts, log_prior, sigma,
                    mask_radius)


def _even_ceil(value: float) -> int:
    return max(2, math.ceil(value / 2.0) * 2)


class BuiltinEngine(Engine):
    name = "builtin"

    def __init__(self, device: str = "auto", batch_size: int | None = None,
                 executor: Executor | None = None, chunk_batches: int = CHUNK_BATCHES) -> None:
        """``batch_size``: particles per batch (memory grows linearly with it); default 32 on
        the CPU, 256 on a GPU, where bigger batches keep it busy. ``executor``: where the
        cycle's chunks of ``chunk_batches`` batches run (None: in this process); a distributed
        one runs them on its workers' CPUs."""
        self.executor = executor
        self.chunk_batches = max(1, chunk_batches)
        if executor is not None and executor.distributed:
            device = "cpu"  # the client only prepares references; workers classify on CPU
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("--device cuda: no CUDA GPU is visible to PyTorch (install a "
                              "CUDA build of torch, or use --device cpu)")
        self.device = torch.device(device)
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)

    def describe(self) -> str:
        where = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                 else f"cpu, {torch.get_num_threads()} threads")
        if self.executor is not None and self.executor.distributed:
            where = self.executor.describe()
        return f"builtin (torch {torch.__version__.split('+')[0]}, {where})"

    # ------------------------------------------------------------------ starting classes
    def start_classes(self, request: CycleRequest, progress: ProgressCallback,
                      cancel: threading.Event) -> CycleResult:
        """Random-start classes as refine2d's init mode: each class the mean of a random subset
        of normalised, white-protein particles, each shifted at random by up to 0.2 × mask."""
        started = time.monotonic()
        _check_cancel(cancel)
        torch.set_num_threads(max(1, request.threads))
        table, stack = _read_inputs(request)
        params, k = request.params, request.n_classes
        rng = np.random.default_rng(request.seed)
        n = len(table)
        used = np.flatnonzero(rng.random(n) < params.fraction) if params.fraction < 1 else \
            np.arange(n)
        if len(used) < k:
            raise EngineError(f"{len(used)} particles used ({params.fraction:.0%} of {n}) are "
                              f"too few for {k} classes")
        box = stack.shape[-1]
        geometry = plan_geometry(params, box, rng)
        background = ~(soft_disc(box, geometry.mask_radius, 0.0) > 0)
        sums = torch.zeros((k, box, box))
        counts = torch.zeros(k)
        max_shift = max(1, int(0.2 * geometry.mask_radius))
        for done, batch in _batches(used, self.batch_size):
            _check_cancel(cancel)
            images = _prepare(stack, batch, params, background, torch.device("cpu"))
            members = torch.as_tensor(rng.random((len(batch), k)) < 1.0 / k)
            offsets = rng.integers(-max_shift, max_shift + 1, size=(len(batch), 2))
            for i in range(len(batch)):
                moved = torch.roll(images[i], shifts=(int(offsets[i, 0]), int(offsets[i, 1])),
                                   dims=(0, 1))
                sums[members[i]] += moved
            counts += members.sum(dim=0)
            progress(Progress("starting classes", done / len(used),
                              done / max(time.monotonic() - started, 1e-9)))
        empty = torch.nonzero(counts == 0).flatten()
        for slot, index in zip(empty.tolist(), rng.choice(used, size=len(empty)), strict=True):
            sums[slot] = _prepare(stack, np.array([index]), params, background,
                                  torch.device("cpu"))[0]
            counts[slot] = 1
        classes = sums / counts.clamp_min(1)[:, None, None]
        classes = _finish_classes(classes, geometry, params, auto_center=False)
        _write_classes(request.classes_out, classes, params.pixel_size)
        seconds = time.monotonic() - started
        return CycleResult(request.classes_out, None, [0] * k, len(used), seconds,
                           [f"{k} random-start classes from {len(used)} particles"])

    # ------------------------------------------------------------------ one cycle
    def run_cycle(self, request: CycleRequest, progress: ProgressCallback,
                  cancel: threading.Event) -> CycleResult:
        started = time.monotonic()
        _check_cancel(cancel)
        torch.set_num_threads(max(1, request.threads))
        if request.classes_in is None:
            raise EngineError("a refinement cycle needs the previous class averages")
        table, stack = _read_inputs(request)
        params, device = request.params, self.device
        classes = _read_classes(request.classes_in, stack.shape[-1])
        rng = np.random.default_rng(request.seed)
        n, k, box = len(table), len(classes), stack.shape[-1]
        used = np.flatnonzero(rng.random(n) < params.fraction) if params.fraction < 1 else \
            np.arange(n)
        excluded = 0
        if params.exclude_blank_edges:  # as refine2d: left unused, like particles not drawn
            keep = np.concatenate([~blank_edges(stack[batch]) for _, batch in
                                   _batches(used, EDGE_CHECK_BATCH)] or [np.zeros(0, bool)])
            excluded, used = int((~keep).sum()), used[keep]
        if len(used) < k:
            raise EngineError(f"{len(used)} particles used ({params.fraction:.0%} of {n}"
                              f"{f', {excluded} with blank edges excluded' if excluded else ''})"
                              f" are too few for {k} classes")
        if request.n_classes != k:
            raise EngineError(f"{request.classes_in} holds {k} classes, not the "
                              f"{request.n_classes} asked for")
        geometry = plan_geometry(params, box, rng)
        search = _Search(geometry, params, classes, device)
        progress(Progress("noise spectrum", 0.0))
        search.estimate_noise(stack, rng.permutation(used)[:NOISE_SAMPLE], table)

        results = self._classify(search, stack, table, used, request, progress, cancel)
        _check_cancel(cancel)
        progress(Progress("averaging", 1.0))
        averages, empty = search.averages()
        if empty:
            averages = _reseed(averages, empty, stack, used, results, params, geometry)
        averages = _finish_classes(averages, geometry, params, params.auto_center)
        out_table = _updated_table(table, used, results)
        cistem_star.write_star(request.star_out, out_table,
                               [f"Live2D built-in engine, {len(used)} of {n} particles used"])
        _write_classes(request.classes_out, averages, params.pixel_size)
        seconds = time.monotonic() - started
        log = [f"{k} classes × {len(geometry.psi)} angles × {len(geometry.shifts)} shifts, "
               f"working box {geometry.working} px at {geometry.binned_pixel:.2f} Å/px"]
        if search.coarse is not None:
            log.append(f"half-resolution pass keeps {search.candidates} of {k * len(geometry.psi)} "
                       "(class, angle) frames per particle")
        if empty:
            log.append(f"classes {', '.join(str(c + 1) for c in empty)} were empty: re-seeded")
        if params.exclude_blank_edges:
            log.append(f"Number of excluded images with blank edges = {excluded}")
        return CycleResult(request.classes_out, request.star_out,
                           class_counts(out_table["2DCLS"], k), len(used), seconds, log)

    def _classify(self, search: _Search, stack: np.ndarray, table: pd.DataFrame,
                  used: np.ndarray, request: CycleRequest, progress: ProgressCallback,
                  cancel: threading.Event) -> dict[str, np.ndarray]:
        """Classify ``used`` in chunks of whole batches, each into partial sums of its own that
        are added up in chunk order: the same chunks whether they run here or on a cluster's
        workers, so the averages come out the same."""
        size = self.batch_size * self.chunk_batches
        chunks = [used[start:start + size] for start in range(0, len(used), size)]
        started = time.monotonic()
        if self.executor is None or not self.executor.distributed:
            partials = []
            for chunk in chunks:
                before = sum(len(c) for c in chunks[:len(partials)])

                def on_batch(done: int, before: int = before) -> None:
                    _check_cancel(cancel)
                    rate = (before + done) / max(time.monotonic() - started, 1e-9)
                    progress(Progress("classifying", (before + done) / len(used), rate))

                partials.append(_classify_chunk(search, stack, chunk, table.iloc[chunk],
                                                self.batch_size, on_batch))
        else:
            threads = max(1, request.threads)
            tasks = [_ChunkTask(str(request.stack), chunk, table.iloc[chunk][_CHUNK_COLUMNS],
                                self.batch_size, threads) for chunk in chunks]
            ends = np.cumsum([len(chunk) for chunk in chunks])

            def on_done(n: int) -> None:
                done = int(ends[n - 1]) if n else 0  # chunks finish out of order: an estimate
                rate = done / max(time.monotonic() - started, 1e-9)
                progress(Progress("classifying", done / len(used), rate))

            on_done(0)
            partials = self.executor.map(_run_chunk_task, search.without_sums(), tasks,
                                         cancel=cancel, on_done=on_done)
        return search.merge(partials)


class _Search:
    """The per-cycle state: rotated reference spectra, noise model and the running sums."""

    def __init__(self, geometry: Geometry, params: CycleParams, classes: torch.Tensor,
                 device: torch.device) -> None:
        self.g, self.params, self.device = geometry, params, device
        w = geometry.working
        self.k, self.r = len(classes), len(geometry.psi)
        self.half = w // 2 + 1
        self.background = ~(soft_disc(geometry.box, geometry.mask_radius, 0.0) > 0)
        self.edge = soft_disc(geometry.cropped, geometry.cropped / 2.0 - EDGE_FALLOFF /
                              geometry.pixel_size, EDGE_FALLOFF / geometry.pixel_size).to(device)
        self.band = _band(w, geometry.binned_pixel, params.high_res, params.low_res, device)
        self.pair_weights = torch.full((w, self.half), 2.0, device=device)
        self.pair_weights[:, 0] = 1.0
        if w % 2 == 0:
            self.pair_weights[:, -1] = 1.0
        self.usable = classes.flatten(1).std(dim=1) > 0  # all-zero classes are skipped
        self.classes = classes.to(device)  # for each particle's previous best match
        self._turned: dict[tuple[int, float], torch.Tensor] = {}
        angles = np.repeat(geometry.psi[None], self.k, axis=0).reshape(-1)
        turned = rotate(classes.repeat_interleave(self.r, dim=0), angles)
        self.references = self._spectra(turned.to(device))  # (K·R, W, W/2+1)
        flat = geometry.shifts[:, 0] % w * w + geometry.shifts[:, 1] % w
        self.shift_index = flat.to(device)
        self.log_prior = geometry.log_prior.to(device)
        self.reference_power = (self.references.abs() ** 2 * self.pair_weights).flatten(1)
        frames = self.k * self.r
        self.candidates = min(frames, max(COARSE_MIN_CANDIDATES,
                                          math.ceil(COARSE_CANDIDATE_FRACTION * frames)))
        self.coarse = (self._coarse_search()
                       if w >= COARSE_SEARCH_MIN_BOX and self.candidates < frames else None)
        # Without a coarse pass every particle meets every frame: one correlator for them all.
        self.everything = (_ShiftCorrelator(self.references, geometry.shifts.to(device))
                           if self.coarse is None else None)
        self.noise = torch.ones((w, self.half), device=device)
        self.sums = torch.zeros((self.k * self.r, w, self.half), dtype=torch.complex64,
                                device=device)
        self.weights = torch.zeros((self.k * self.r, w, self.half), device=device)
        self.mass = torch.zeros(self.k, device=device)  # summed likelihood weight per class

    def _coarse_search(self) -> _ShiftCorrelator:
        """Half-resolution references and band, shifts on every other working pixel."""
        size = _even_ceil(self.g.working / 2)
        references = _fourier_crop(self.references, size)
        self.coarse_band = _fourier_crop(self.band, size)
        weights = torch.full((size, size // 2 + 1), 2.0, device=self.device)
        weights[:, 0] = 1.0
        weights[:, -1] = 1.0
        self.coarse_power = (references.abs() ** 2 * weights).flatten(1)
        shifts = torch.unique(torch.div(self.g.shifts, 2, rounding_mode="floor"), dim=0)
        return _ShiftCorrelator(references, shifts.to(self.device))

    def _spectra(self, images: torch.Tensor) -> torch.Tensor:
        """Box-sized images -> working-box rfft2 spectra (crop, soft edge, Fourier crop)."""
        c, w = self.g.cropped, self.g.working
        start = self.g.box // 2 - c // 2
        cropped = images[..., start:start + c, start:start + c] * self.edge
        return _fourier_crop(torch.fft.rfft2(cropped), w)

    def _particles(self, stack: np.ndarray, batch: np.ndarray,
                   rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows``: the star rows of ``batch``, in its order."""
        images = _prepare(stack, batch, self.params, self.background, self.device)
        ctf = ctf_2d(*(_column(rows, name, self.device) for name in _CTF_COLUMNS),
                     self.g.binned_pixel, self.g.working)
        return self._spectra(images), ctf

    def estimate_noise(self, stack: np.ndarray, sample: np.ndarray, table: pd.DataFrame) -> None:
        """Noise power per resolution shell from the particles' backgrounds."""
        total = torch.zeros((self.g.working, self.half), device=self.device)
        outside = self.background.to(self.device)
        fraction = float(outside.float().mean())
        for _, batch in _batches(np.sort(sample), self.batch_size_for_noise):
            images = _prepare(stack, batch, self.params, self.background, self.device)
            total += (self._spectra(images * outside).abs() ** 2).sum(dim=0)
        power = total / max(len(sample), 1) / max(fraction, 0.05)
        self.noise = _shell_average(power).clamp_min(1e-6)

    batch_size_for_noise = 64

    def classify(self, stack: np.ndarray, batch: np.ndarray,
                 rows: pd.DataFrame) -> dict[str, np.ndarray]:
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
            maps = torch.fft.irfft2(cross, s=(w, w)) * (w * w)
            corr = maps.flatten(2)[..., self.shift_index]  # (B, M, T)
            del cross, maps
        frame_norms = norms[batch_rows, frames]
        # in place where possible: these (B, M, T) arrays are the biggest of the cycle
        scores = corr - frame_norms[..., None]
        scores.mul_(self.params.smoothing).add_(self.log_prior)
        unusable = None
        if not bool(self.usable.all()):
            unusable = ~self.usable.to(self.device)[frames // self.r]
            scores.masked_fill_(unusable[..., None], -torch.inf)
        peak, best = scores.view(b, -1).max(dim=1)
        # Relative weights below e^-80 change nothing, and the CPU's vectorised exp is 10x
        # slower on arguments far below that; the scores are not needed after this.
        scores.sub_(peak[:, None, None]).clamp_min_(LOG_WEIGHT_FLOOR)
        if unusable is not None:
            scores.masked_fill_(unusable[..., None], -torch.inf)
        weights = scores.exp_()
        total = weights.view(b, -1).sum(dim=1)
        weights /= total[:, None, None]
        log_z = peak + torch.log(total)
        best_slot, best_shift = best // weights.shape[-1], best % weights.shape[-1]
        index = torch.arange(b, device=self.device)
        best_frame = frames[index, best_slot]
        best_class, best_angle = best_frame // self.r, best_frame % self.r
        pair = weights.sum(dim=2)  # (B, M) weight of each (class, angle) frame
        self._accumulate(spectra, ctf, weights, pair, frames)

        signal = 2.0 * frame_norms[index, best_slot]
        particle_power = ((spectra.abs() ** 2 * self.band / self.noise) *
                          self.pair_weights).flatten(1).sum(dim=1)
        best_corr = corr[index, best_slot, best_shift]
        shift = self.g.shifts.to(self.device)[best_shift].float() * self.g.binned_pixel
        psi = torch.as_tensor((-self.g.psi) % 360.0, device=self.device,
                              dtype=torch.float32)[best_angle]
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
        return {name: value.double().cpu().numpy() for name, value in out.items()}

    def _previous_match(self, filtered: torch.Tensor, particle_ctf: torch.Tensor,
                        rows: pd.DataFrame) -> _PreviousMatch | None:
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
        psi, shx, shy = (_column(rows, name, self.device) for name in ("PSI", "SHX", "SHY"))
        references = self._turned_references(cls, np.array(rows["PSI"], dtype=np.float64))
        # the reported shift is minus the displacement: back to (dy, dx) working pixels
        dy, dx = -shy / self.g.binned_pixel, -shx / self.g.binned_pixel
        w = self.g.working
        fy = torch.fft.fftfreq(w, device=self.device)[None, :, None]
        fx = torch.fft.rfftfreq(w, device=self.device)[None, None, :]
        phase = torch.exp(2j * math.pi * (fy * dy[:, None, None] + fx * dx[:, None, None]))
        corr = ((filtered * references.conj() * phase).real * self.pair_weights).flatten(1)
        corr = corr.sum(dim=1)
        norm = 0.5 * (particle_ctf * (references.abs() ** 2 * self.pair_weights).flatten(1))
        norm = norm.sum(dim=1)
        log_prior = -(dy**2 + dx**2) / (2.0 * self.g.prior_sigma**2)
        score = (corr - norm) * self.params.smoothing + log_prior
        return _PreviousMatch(cls=cls, psi=psi % 360.0, shx=shx, shy=shy, corr=corr,
                              signal=2.0 * norm,
                              score=torch.where(valid, score, torch.full_like(score, -torch.inf)))

    def _turned_references(self, cls: torch.Tensor, psi: np.ndarray) -> torch.Tensor:
        """Spectra of the classes turned to the particles' previous psi. Those are mostly the
        previous cycle's grid angles, so each (class, psi) is turned once per cycle and kept."""
        keys = list(zip(cls.tolist(), np.round(psi, 3).tolist(), strict=True))
        missing = sorted(set(keys) - self._turned.keys())
        if len(self._turned) + len(missing) > TURNED_REFERENCES_KEPT:
            self._turned.clear()
            missing = sorted(set(keys))
        if missing:
            classes = torch.as_tensor([c for c, _ in missing], device=self.device)
            angles = np.array([-angle for _, angle in missing])
            spectra = self._spectra(rotate(self.classes[classes], angles))
            self._turned.update(zip(missing, spectra, strict=True))
        return torch.stack([self._turned[key] for key in keys])

    def _candidates(self, filtered: torch.Tensor, particle_ctf: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` (class, angle) frames worth a full-resolution look: all of them for small
        boxes, else the best ones of a half-resolution pass over every frame and shift."""
        b, frames = len(filtered), self.k * self.r
        if self.coarse is None:
            return torch.arange(frames, device=self.device).expand(b, frames)
        size = self.coarse.size
        coarse = _fourier_crop(filtered, size) * self.coarse_band
        coarse_norms = 0.5 * self._coarse_norms(particle_ctf)  # (B, F)
        best = self.coarse.best(coarse, coarse_norms)
        usable = self.usable.to(self.device).repeat_interleave(self.r)
        return best.masked_fill(~usable, -torch.inf).topk(self.candidates, dim=1).indices

    def _coarse_norms(self, particle_ctf: torch.Tensor) -> torch.Tensor:
        w = self.g.working
        ctf_power = _fourier_crop(particle_ctf.view(-1, w, self.half), self.coarse.size)
        ctf_power = ctf_power * self.coarse_band
        return ctf_power.flatten(1) @ self.coarse_power.T

    def _accumulate(self, spectra: torch.Tensor, ctf: torch.Tensor, weights: torch.Tensor,
                    pair: torch.Tensor, frames: torch.Tensor) -> None:
        """Add each particle to every (class, angle) frame it has weight in, shifted back by the
        weighted translations, and its CTF² times the frame's weight to the frame's weights."""
        b, w = len(spectra), self.g.working
        corrected = spectra * ctf
        if self.everything is not None:  # every frame: dense products, no per-pair FFTs
            self.sums += self.everything.scatter_back(weights, corrected)
            self.weights += (pair.T @ (ctf**2).flatten(1)).view_as(self.weights)
            self.mass += pair.sum(dim=0).view(self.k, self.r).sum(dim=1)
            return
        keep = pair >= PAIR_WEIGHT_FLOOR
        keep[torch.arange(b), pair.argmax(dim=1)] = True
        particle, slot = torch.nonzero(keep, as_tuple=True)
        frame = frames[particle, slot]
        maps = torch.zeros((len(particle), w * w), device=self.device)
        maps[:, self.shift_index] = weights[particle, slot]
        translation = torch.fft.rfft2(maps.view(-1, w, w)).conj()
        self.sums.index_add_(0, frame, corrected[particle] * translation)
        dense = torch.zeros((b, self.k * self.r), device=self.device)
        dense[particle, frame] = pair[particle, slot]
        self.weights += (dense.T @ (ctf**2).flatten(1)).view_as(self.weights)
        self.mass += dense.sum(dim=0).view(self.k, self.r).sum(dim=1)

    def fresh_sums(self) -> _Search:
        """A shallow copy that shares the references but accumulates into sums of its own."""
        copy = _copy.copy(self)
        w = self.g.working
        copy.sums = torch.zeros((self.k * self.r, w, self.half), dtype=torch.complex64,
                                device=self.device)
        copy.weights = torch.zeros((self.k * self.r, w, self.half), device=self.device)
        copy.mass = torch.zeros(self.k, device=self.device)
        return copy

    def without_sums(self) -> _Search:
        """What the workers need, without the (empty) accumulators: less to send."""
        copy = _copy.copy(self)
        copy.sums = copy.weights = copy.mass = None
        return copy

    def merge(self, partials: list[_Partial]) -> dict[str, np.ndarray]:
        """Add the chunks' partial sums in chunk order; their per-particle results, joined."""
        for part in partials:
            self.sums += part.sums.to(self.device)
            self.weights += part.weights.to(self.device)
            self.mass += part.mass.to(self.device)
        return {name: np.concatenate([part.results[name] for part in partials])
                for name in _RESULT_NAMES}

    def averages(self) -> tuple[torch.Tensor, list[int]]:
        """Class averages (K, box, box) from the sums, and the classes that stayed empty."""
        w, c = self.g.working, self.g.cropped
        angles = -np.tile(self.g.psi, self.k)
        numerators = rotate(torch.fft.irfft2(self.sums, s=(w, w)).cpu(), angles)
        numerators = numerators.view(self.k, self.r, w, w).sum(dim=1)
        denominators = _rotate_half_spectra(self.weights.cpu(), angles)
        denominators = denominators.view(self.k, self.r, w, self.half).sum(dim=1)
        band = self.band.cpu()
        level = (denominators * band).flatten(1).sum(dim=1) / band.sum().clamp_min(1)
        mass = self.mass.cpu()
        empty = [i for i in range(self.k) if float(mass[i]) < EMPTY_CLASS_WEIGHT
                 or float(level[i]) <= 1e-8]
        spectra = torch.fft.rfft2(numerators) / (denominators + WIENER_CONSTANT *
                                                 level.clamp_min(1e-8)[:, None, None])
        spectra = spectra * band
        padded = torch.zeros((self.k, c, c // 2 + 1), dtype=spectra.dtype)
        padded[:, : w // 2, : self.half] = spectra[:, : w // 2]
        padded[:, c - w // 2:, : self.half] = spectra[:, w // 2:]
        images = torch.fft.irfft2(padded, s=(c, c))
        out = torch.zeros((self.k, self.g.box, self.g.box))
        start = self.g.box // 2 - c // 2
        out[:, start:start + c, start:start + c] = images
        return out, empty


class _ShiftCorrelator:
    """Cross-correlations of particles with a fixed bank of reference spectra at every integer
    translation of a small set, as two dense matrix products instead of one inverse FFT per
    (particle, reference) pair.

    ``c[b, f, t] = Σ_k P_b(k) conj(A_f(k)) exp(2πi k·t / n)`` over the full plane equals
    ``Re Σ_kx w(kx) exp(2πi kx·tx / n) Σ_ky conj(A_f(ky, kx)) P_b(ky, kx) exp(2πi ky·ty / n)``
    over the rfft2 half plane (w = 1 on the kx = 0 and Nyquist columns, 2 elsewhere). The inner
    sum is one batched matmul per kx column (references × frequencies @ frequencies ×
    (particles · ty)), the outer one a matmul over kx. Only the translations inside the search
    square are evaluated: for working boxes up to ~32 px this was 3-6x faster than pocketfft's
    batched irfft2 on 2 CPU cores (the products run at BLAS speed; the FFTs of tiny boxes don't).
    """

    def __init__(self, references: torch.Tensor, shifts: torch.Tensor) -> None:
        # references (F, n, n // 2 + 1) complex; shifts (T, 2) integer (dy, dx)
        n, half = references.shape[-2:]
        device = references.device
        self.size, self.frames = n, len(references)
        reach = int(shifts.abs().max()) if len(shifts) else 0
        steps = torch.arange(-reach, reach + 1, device=device, dtype=torch.float32)
        self.steps = len(steps)
        ky = torch.fft.fftfreq(n, device=device) * n
        kx = torch.arange(half, device=device, dtype=torch.float32)
        weight = torch.full((half,), 2.0, device=device)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        unit = torch.ones((), device=device)
        self.rows = torch.polar(unit.expand(n, len(steps)),
                                2 * math.pi * ky[:, None] * steps[None, :] / n)  # (n, Ty)
        self.phases = torch.polar(unit.expand(len(steps), half),
                                  2 * math.pi * steps[:, None] * kx[None, :] / n)  # (Tx, half)
        self.columns = self.phases * weight
        # Complex products as real ones, so that the big intermediate comes out with real and
        # imaginary parts in separate rows: conj(A)·S = [[Ar, Ai], [-Ai, Ar]] @ [Sr; Si].
        ar, ai = (part.permute(2, 0, 1) for part in (references.real, references.imag))
        self.references = torch.cat([torch.cat([ar, ai], dim=2),
                                     torch.cat([-ai, ar], dim=2)], dim=1).contiguous()
        # (half, 2F, 2n); the outer sum takes Re(columns · inner) = cr·Ir - ci·Ii per kx
        self.outer = torch.stack([self.columns.real, -self.columns.imag], dim=2).reshape(
            len(steps), 2 * half).contiguous()
        inside = torch.zeros((len(steps), len(steps)), dtype=torch.bool, device=device)
        inside[shifts[:, 0] + reach, shifts[:, 1] + reach] = True  # (ty, tx)
        # -inf outside the search disc, (ty, tx) as correlate lays its output out
        self.outside_bias = torch.where(inside, 0.0, -torch.inf)
        self.order = ((shifts[:, 0] + reach) * self.steps + shifts[:, 1] + reach).long()

    def correlate(self, particles: torch.Tensor) -> torch.Tensor:
        """``(F, B, ty, tx)`` correlations of ``particles`` ``(B, n, n // 2 + 1)``."""
        b, n, half = particles.shape
        t = self.steps
        shifted = particles.permute(2, 1, 0)[..., None] * self.rows[None, :, None, :]
        shifted = shifted.reshape(half, n, b * t)
        stacked = torch.cat([shifted.real, shifted.imag], dim=1)  # (half, 2n, B·ty)
        inner = torch.bmm(self.references, stacked)  # (half, [Re; Im] × F, B·ty)
        # transposed operands cost BLAS nothing and give the (F, B, ty, tx) layout directly
        return (inner.view(2 * half, -1).T @ self.outer.T).view(self.frames, b, t, t)

    def scatter_back(self, weights: torch.Tensor, particles: torch.Tensor) -> torch.Tensor:
        """``(F, n, n // 2 + 1)``: ``Σ_b particles_b · Σ_t weights[b, f, t] exp(2πi k·t / n)``,
        each particle moved back by its weighted translations (the adjoint of ``at_shifts``)."""
        b, n, half = particles.shape
        t = self.steps
        square = torch.zeros((b, self.frames, t * t), device=weights.device)
        square[..., self.order] = weights
        by_column = square.view(b, self.frames, t, t).to(self.phases.dtype) @ self.phases
        by_column = by_column.permute(3, 1, 0, 2).reshape(half, self.frames, b * t)
        shifted = particles.permute(2, 1, 0)[..., None] * self.rows[None, :, None, :]
        summed = torch.bmm(by_column, shifted.reshape(half, n, b * t).transpose(1, 2))
        return summed.permute(1, 2, 0)  # (F, n, half)

    def at_shifts(self, particles: torch.Tensor) -> torch.Tensor:
        """``(B, F, T)`` correlations at the translations of the set, in its order."""
        corr = self.correlate(particles).view(self.frames, len(particles), -1)
        return corr[..., self.order].transpose(0, 1).contiguous()

    def best(self, particles: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` best ``correlation - norms`` over the translations of the set."""
        corr = self.correlate(particles)
        corr += self.outside_bias
        return corr.amax(dim=-1).amax(dim=-1).T - norms


# ---------------------------------------------------------------------------------- chunks
_RESULT_NAMES = ("cls", "psi", "shx", "shy", "occ", "logp", "sigma", "score")
_CTF_COLUMNS = ["DF1", "DF2", "ANGAST", "VOLT", "Cs", "AmpC", "PSHIFT"]  # ctf_2d's order
# What a chunk needs of its particles' rows: CTF, and the previous best match.
_CHUNK_COLUMNS = [*_CTF_COLUMNS, "2DCLS", "PSI", "SHX", "SHY"]


@dataclass
class _Partial:
    """One chunk's contribution: partial class sums and its particles' results, in order."""

    sums: torch.Tensor
    weights: torch.Tensor
    mass: torch.Tensor
    results: dict[str, np.ndarray]


@dataclass(frozen=True)
class _ChunkTask:
    stack: str  # path, opened by the worker (on the shared filesystem)
    chunk: np.ndarray  # particle indices into the stack
    rows: pd.DataFrame  # their _CHUNK_COLUMNS, in chunk order
    batch_size: int
    threads: int


@dataclass
class _PreviousMatch:
    """Per particle of a batch: its previous best match and how it scores now."""

    cls: torch.Tensor  # 0-based class
    psi: torch.Tensor
    shx: torch.Tensor
    shy: torch.Tensor
    corr: torch.Tensor
    signal: torch.Tensor  # |CTF·A|²/noise of that reference, as the grid's best has
    score: torch.Tensor  # on the grid's scale (smoothing × log-likelihood + prior); -inf: none


def _classify_chunk(search: _Search, stack: np.ndarray, chunk: np.ndarray, rows: pd.DataFrame,
                    batch_size: int, on_batch=None) -> _Partial:
    """Classify ``chunk`` batch by batch into fresh partial sums; depends on nothing but its
    arguments (no randomness), so it gives the same numbers wherever it runs."""
    own = search.fresh_sums()
    results = {name: np.zeros(len(chunk)) for name in _RESULT_NAMES}
    for done, batch in _batches(chunk, batch_size):
        start = done - len(batch)
        out = own.classify(stack, batch, rows.iloc[start:done])
        for name, values in out.items():
            results[name][start:done] = values
        if on_batch is not None:
            on_batch(done)
    return _Partial(own.sums, own.weights, own.mass, results)


def _run_chunk_task(search: _Search, task: _ChunkTask) -> _Partial:
    """A chunk on a Dask worker: the stack memory-mapped from the shared folder."""
    torch.set_num_threads(task.threads)
    try:
        mrc = mrcfile.mmap(task.stack, mode="r", permissive=True)
    except (OSError, ValueError) as exc:
        raise EngineError(f"built-in engine on a worker: cannot read {task.stack}: {exc}") \
            from None
    stack = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
    mrc.close()
    return _classify_chunk(search, stack, task.chunk, task.rows, task.batch_size)


# ---------------------------------------------------------------------------------- helpers
def _column(rows: pd.DataFrame, name: str, device: torch.device) -> torch.Tensor:
    """A star column of a batch's rows as float32 on ``device`` (copied: the rows may be a
    read-only view)."""
    return torch.as_tensor(np.array(rows[name], dtype=np.float64), dtype=torch.float32,
                           device=device)


def _check_cancel(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise CycleCancelled("the cycle was stopped")


def _batches(indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        batch = indices[start:start + size]
        yield start + len(batch), batch


def _read_inputs(request: CycleRequest) -> tuple[pd.DataFrame, np.ndarray]:
    """The star table and the particle stack, memory-mapped (read only as batches need it)."""
    try:
        table = cistem_star.read_star(request.star_in)
    except (OSError, cistem_star.StarFormatError) as exc:
        raise EngineError(f"built-in engine: cannot read {request.star_in}: {exc}") from None
    try:
        mrc = mrcfile.mmap(request.stack, mode="r", permissive=True)
    except (OSError, ValueError) as exc:
        raise EngineError(f"built-in engine: cannot read {request.stack}: {exc}") from None
    stack = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
    mrc.close()  # the memory map itself stays valid until its last reference goes
    if len(stack) < len(table):
        raise EngineError(f"{request.star_in} has {len(table)} particles but {request.stack} "
                          f"only {len(stack)}")
    return table, stack


def _read_classes(path: Path, box: int) -> torch.Tensor:
    data = read_images(path)
    if data.shape[1:] != (box, box):
        raise EngineError(f"{path} holds {data.shape[1]} px classes; the particles are {box} px")
    return torch.from_numpy(data)


def _prepare(stack: np.ndarray, batch: np.ndarray, params: CycleParams,
             background: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Particles of ``batch`` normalised and with white protein."""
    images = torch.from_numpy(np.array(stack[np.sort(batch)], dtype=np.float32))
    order = np.argsort(np.argsort(batch))  # stack reads go in file order
    images = images[torch.as_tensor(order)].to(device)
    if params.normalize:
        pixels = images[:, background.to(device)]
        mean, std = pixels.mean(dim=1), pixels.std(dim=1).clamp_min(1e-12)
        images = (images - mean[:, None, None]) / std[:, None, None]
    return images if params.invert_contrast else -images


def _fourier_crop(spectra: torch.Tensor, size: int) -> torch.Tensor:
    """The lowest frequencies of rfft2 half planes ``(..., n, n // 2 + 1)`` as ``size``-box
    half planes (values unscaled)."""
    n = spectra.shape[-2]
    return torch.cat([spectra[..., : size // 2, : size // 2 + 1],
                      spectra[..., n - size // 2:, : size // 2 + 1]], dim=-2)


def _band(w: int, pixel: float, high_res: float, low_res: float,
          device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(w, d=pixel, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, d=pixel, device=device)[None, :]
    radius = torch.sqrt(fx**2 + fy**2)
    band = (radius <= 1.0 / max(high_res, 2 * pixel)) & (radius >= 1.0 / max(low_res, 1e-6))
    return band.float()


def _shell_average(power: torch.Tensor) -> torch.Tensor:
    w = power.shape[0]
    fy = torch.fft.fftfreq(w, device=power.device)[:, None] * w
    fx = torch.fft.rfftfreq(w, device=power.device)[None, :] * w
    shell = torch.sqrt(fx**2 + fy**2).round().long()
    sums = torch.zeros(int(shell.max()) + 1, device=power.device).index_add_(
        0, shell.flatten(), power.flatten())
    counts = torch.zeros_like(sums).index_add_(0, shell.flatten(), torch.ones_like(power).flatten())
    return (sums / counts.clamp_min(1))[shell]


def _rotate_half_spectra(half: torch.Tensor, angles: np.ndarray) -> torch.Tensor:
    """Turn real, centro-symmetric rfft2 maps (e.g. CTF² sums) like their images turn."""
    w = half.shape[-2]
    full = torch.cat([half, half[..., (-torch.arange(w)) % w, :][..., 1: w - half.shape[-1] + 1]
                      .flip(-1)], dim=-1)
    centred = torch.fft.fftshift(full, dim=(-2, -1))
    turned = torch.fft.ifftshift(rotate(centred, angles), dim=(-2, -1))
    return turned[..., : half.shape[-1]].clamp_min(0)


def _finish_classes(classes: torch.Tensor, geometry: Geometry, params: CycleParams,
                    auto_center: bool) -> torch.Tensor:
    box = geometry.box
    falloff = EDGE_FALLOFF / geometry.pixel_size
    mask = soft_disc(box, geometry.mask_radius, falloff)
    spectra = torch.fft.rfft2(classes)
    spectra *= _band(box, geometry.pixel_size, params.high_res, params.low_res,
                     torch.device("cpu"))
    spectra[..., 0, 0] = 0  # zero mean: what cisTEM's averages and the scores assume
    classes = torch.fft.irfft2(spectra, s=(box, box)) * mask
    if auto_center:
        positive = classes.clamp_min(0) * mask
        mass = positive.flatten(1).sum(dim=1).clamp_min(1e-12)
        coords = torch.arange(box, dtype=torch.float32) - box // 2
        cy = (positive.sum(dim=2) * coords).sum(dim=1) / mass
        cx = (positive.sum(dim=1) * coords).sum(dim=1) / mass
        classes = fourier_shift_image_2d(classes, torch.stack([-cy, -cx], dim=1)) * mask
    if params.auto_mask:
        classes = classes * _automatic_mask(classes, mask)
    return classes


def _automatic_mask(classes: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
    """A soft mask around each class's density: threshold, dilate, soften."""
    smooth = torch.nn.functional.avg_pool2d(classes[:, None], 5, stride=1, padding=2)[:, 0]
    peak = smooth.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    binary = (smooth > 0.15 * peak).float()[:, None]
    grown = torch.nn.functional.max_pool2d(binary, 7, stride=1, padding=3)
    soft = torch.nn.functional.avg_pool2d(grown, 5, stride=1, padding=2)[:, 0]
    return torch.maximum(soft, torch.zeros_like(soft)) * disc


def _reseed(averages: torch.Tensor, empty: list[int], stack: np.ndarray, used: np.ndarray,
            results: dict[str, np.ndarray], params: CycleParams,
            geometry: Geometry) -> torch.Tensor:
    """Empty classes restart from the particles that fit worst, where a missing view hides."""
    worst = used[np.argsort(results["logp"])]
    background = ~(soft_disc(geometry.box, geometry.mask_radius, 0.0) > 0)
    per_class = max(1, min(50, len(used) // max(len(averages), 1)))
    for slot, start in zip(empty, range(0, len(worst), per_class), strict=False):
        members = worst[start:start + per_class]
        averages[slot] = _prepare(stack, members, params, background,
                                  torch.device("cpu")).mean(dim=0)
    return averages


def _updated_table(table: pd.DataFrame, used: np.ndarray,
                   results: dict[str, np.ndarray]) -> pd.DataFrame:
    out = table.copy()
    for column, default in (("OCC", 100.0), ("LogP", 0), ("SIGMA", 10.0), ("SCORE", 0.0),
                            ("CHANGE", 0.0), ("PSI", 0.0), ("SHX", 0.0), ("SHY", 0.0),
                            ("2DCLS", 0)):
        if column not in out:
            out[column] = default
    unused = np.setdiff1d(np.arange(len(table)), used)
    out.loc[out.index[unused], "2DCLS"] = -out["2DCLS"].iloc[unused].abs()
    out.loc[out.index[unused], "CHANGE"] = 0.0
    rows = out.index[used]
    previous_score = out.loc[rows, "SCORE"].to_numpy(dtype=float)
    out.loc[rows, "2DCLS"] = results["cls"].astype(np.int64)
    out.loc[rows, "PSI"] = results["psi"]
    out.loc[rows, "SHX"] = results["shx"]
    out.loc[rows, "SHY"] = results["shy"]
    out.loc[rows, "OCC"] = results["occ"]
    out.loc[rows, "LogP"] = np.rint(results["logp"]).astype(np.int64)
    out.loc[rows, "SIGMA"] = results["sigma"]
    out.loc[rows, "SCORE"] = results["score"]
    out.loc[rows, "CHANGE"] = results["score"] - previous_score
    return out


def _write_classes(path: Path, classes: torch.Tensor, pixel_size: float) -> None:
    """The class-average stack, replaced whole (a crash leaves the old file or the new one)."""
    with replacing(path) as scratch, mrcfile.new(scratch, overwrite=True) as mrc:
        mrc.set_data(classes.detach().cpu().numpy().astype(np.float32))
        mrc.voxel_size = pixel_size
