"""The built-in engine itself: a cycle's steps in order, and its chunks of particle batches.

:class:`BuiltinEngine` reads the inputs, plans the cycle's geometry, sets up the search,
classifies the particles in chunks of whole batches and writes the class averages and the star
table. A chunk (:func:`classify_chunk`) accumulates into partial sums of its own that are added
up in chunk order, so the averages are the same whether the chunks run in this process or on a
cluster's workers: a distributed :class:`~live2d.executors.Executor` sends each as a
:class:`ChunkTask` to :func:`run_chunk_task`, which the workers import by this module's path.
On the CPU a cycle's threads are :mod:`~live2d.engines.builtin.workers`' threads, each running
single-threaded PyTorch on a batch at a time and taking the next when done, not PyTorch's
intra-op threads: on a busy workstation a thread that lost its core then holds up only its own
batch. The batches are added to their chunk's sums in order, so the numbers do not depend on
the number of threads.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from live2d import cistem_star
from live2d.cistem_star import StarFormatError
from live2d.engines.base import (
    CycleParams,
    CycleRequest,
    CycleResult,
    Engine,
    Progress,
    ProgressCallback,
    Rebuilt,
    Reseeded,
    StreamBatch,
    class_counts,
    unfit_reasons,
)
from live2d.engines.builtin.averages import (
    Partial,
    ReducedSums,
    class_averages,
    finish_classes,
    merge_partials,
    reduce_sums,
    reseed,
    reseed_duplicates,
    reseed_starved,
)
from live2d.engines.builtin.geometry import (
    MIN_ALIGNED_FOR_PRIOR,
    Geometry,
    learned_shift_sigma,
    plan_geometry,
)
from live2d.engines.builtin.io import (
    CTF_COLUMNS,
    RESULT_NAMES,
    Rows,
    SerialReads,
    batches,
    prepare,
    read_classes,
    read_inputs,
    updated_table,
    usable,
    write_classes,
)
from live2d.engines.builtin.search import Contribution, Search
from live2d.engines.builtin.workers import run_ordered
from live2d.errors import CycleCancelled, EngineError
from live2d.executors import keep_freed_memory
from live2d.imaging import blank_edges, soft_disc
from live2d.kept_tensors import kept_key, load_kept, save_kept
from live2d.source_images import open_images

if TYPE_CHECKING:
    from live2d.executors import Executor

NOISE_SAMPLE = 300  # particles used to estimate the noise spectrum
EDGE_CHECK_BATCH = 1024  # particles read at once when looking for blank edges
# An update of new particles only takes its translation prior from at most this many kept batches.
KEPT_ROWS_FOR_PRIOR = 3
# Batches per chunk: the unit of work a cluster worker gets, and of the partial sums that are
# added up in order (the same in-process, so that both give the same averages).
CHUNK_BATCHES = 16
# What a chunk needs of its particles' rows: CTF, and the previous best match.
CHUNK_COLUMNS = [*CTF_COLUMNS, "2DCLS", "PSI", "SHX", "SHY"]


def _restoring_torch_threads(method: Callable[..., CycleResult]) -> Callable[..., CycleResult]:
    """The calling thread's PyTorch thread count as it was once the engine's step returns: the
    engine makes it single-threaded on the CPU (:meth:`BuiltinEngine._use_threads`), and what
    the caller does next with PyTorch (judging the classes, curation) keeps its own threads."""

    @functools.wraps(method)
    def restoring(*args, **kwargs) -> CycleResult:
        threads = torch.get_num_threads()
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return restoring


class BuiltinEngine(Engine):
    """Live2D's own 2D classification in PyTorch (CPU or GPU), reading the particle stacks in
    place; a distributed executor runs each cycle's chunks of batches on its workers."""
    name = "builtin"
    needs_particle_stack = False
    streams = True

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
        self.threads = torch.get_num_threads()  # the last cycle's, as describe() tells

    def describe(self) -> str:
        where = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                 else f"cpu, {self.threads} threads")
        if self.executor is not None and self.executor.distributed:
            where = self.executor.describe()
        return f"builtin (torch {torch.__version__.split('+')[0]}, {where})"

    # ------------------------------------------------------------------ starting classes
    @_restoring_torch_threads
    def start_classes(self, request: CycleRequest, progress: ProgressCallback,
                      cancel: threading.Event) -> CycleResult:
        """Random-start classes as refine2d's init mode: each class the mean of a random subset
        of normalised, white-protein particles, each shifted at random by up to 0.2 × mask."""
        started = time.monotonic()
        check_cancel(cancel)
        self._use_threads(request)  # a loop over particles: little for threads to share
        table, stack = read_inputs(request)
        params, k = request.params, request.n_classes
        rng = np.random.default_rng(request.seed)
        n = len(table)
        used = np.flatnonzero(rng.random(n) < params.fraction) if params.fraction < 1 else \
            np.arange(n)
        used = used[usable(stack, n)[used]]
        if len(used) < k:
            raise EngineError(f"{len(used)} particles used ({params.fraction:.0%} of {n}) are "
                              f"too few for {k} classes")
        box = stack.shape[-1]
        geometry = plan_geometry(params, box, rng)
        background = ~(soft_disc(box, geometry.mask_radius, 0.0) > 0)
        sums = torch.zeros((k, box, box))
        counts = torch.zeros(k)
        max_shift = max(1, int(0.2 * geometry.mask_radius))
        for done, batch in batches(used, self.batch_size):
            check_cancel(cancel)
            images = prepare(stack, batch, params, background, torch.device("cpu"))
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
            sums[slot] = prepare(stack, np.array([index]), params, background,
                                 torch.device("cpu"))[0]
            counts[slot] = 1
        classes = sums / counts.clamp_min(1)[:, None, None]
        classes = finish_classes(classes, geometry, params, auto_center=False)
        write_classes(request.classes_out, classes, params.pixel_size)
        seconds = time.monotonic() - started
        return CycleResult(request.classes_out, None, [0] * k, len(used), seconds,
                           [f"{k} random-start classes from {len(used)} particles"])

    # ------------------------------------------------------------------ one cycle
    @_restoring_torch_threads
    def run_cycle(self, request: CycleRequest, progress: ProgressCallback,
                  cancel: threading.Event) -> CycleResult:
        started = time.monotonic()
        check_cancel(cancel)
        workers = self._use_threads(request)
        if request.classes_in is None:
            raise EngineError("a refinement cycle needs the previous class averages")
        table, stack = read_inputs(request)
        params, device = request.params, self.device
        classes = read_classes(request.classes_in, stack.shape[-1])
        rng = np.random.default_rng(request.seed)
        n, k, box = len(table), len(classes), stack.shape[-1]
        used = np.flatnonzero(rng.random(n) < params.fraction) if params.fraction < 1 else \
            np.arange(n)
        used = used[usable(stack, n)[used]]  # left unused, as particles not drawn
        excluded = 0
        if params.exclude_blank_edges:  # as refine2d: left unused, like particles not drawn
            keep = np.concatenate([~blank_edges(stack[batch]) for _, batch in
                                   batches(used, EDGE_CHECK_BATCH)] or [np.zeros(0, bool)])
            excluded, used = int((~keep).sum()), used[keep]
        if len(used) < k:
            raise EngineError(f"{len(used)} particles used ({params.fraction:.0%} of {n}"
                              f"{f', {excluded} with blank edges excluded' if excluded else ''})"
                              f" are too few for {k} classes")
        if request.n_classes != k:
            raise EngineError(f"{request.classes_in} holds {k} classes, not the "
                              f"{request.n_classes} asked for")
        geometry = plan_geometry(params, box, rng,
                                 learned_shift_sigma(aligned_shifts(table.iloc[used])))
        search = Search(geometry, params, classes, device, workers)
        progress(Progress("noise spectrum", 0.0))
        search.estimate_noise(stack, rng.permutation(used)[:NOISE_SAMPLE], table, workers)

        results = self._classify(search, stack, table, used, request, progress, cancel)
        check_cancel(cancel)
        progress(Progress("averaging", 1.0))
        averages, empty = class_averages(search.sums, geometry, search.band)
        if empty:
            averages = reseed(averages, empty, stack, used, results, params, geometry)
        split = (reseed_starved(averages, np.asarray(class_counts(results["cls"], k)), empty,
                                stack, used, results, params, geometry, rng)
                 if params.rebalance else [])
        averages = finish_classes(averages, geometry, params, params.auto_center)
        out_table = updated_table(table, used, results)
        cistem_star.write_star(request.star_out, out_table,
                               [f"Live2D built-in engine, {len(used)} of {n} particles used"])
        write_classes(request.classes_out, averages, params.pixel_size)
        seconds = time.monotonic() - started
        log = [f"{k} classes × {len(geometry.psi)} angles × {len(geometry.shifts)} shifts, "
               f"working box {geometry.working} px at {geometry.binned_pixel:.2f} Å/px"]
        if search.coarse is not None:
            log.append(f"half-resolution pass keeps {search.candidates} of {k * len(geometry.psi)} "
                       "(class, angle) frames per particle")
        if params.exclude_blank_edges:
            log.append(f"Number of excluded images with blank edges = {excluded}")
        return CycleResult(request.classes_out, request.star_out,
                           class_counts(out_table["2DCLS"], k), len(used), seconds, log,
                           emptied=tuple(empty), split=tuple(split))

    # ------------------------------------------------------------------ streaming update
    @_restoring_torch_threads
    def run_update(self, request: CycleRequest, progress: ProgressCallback,
                   cancel: threading.Event) -> CycleResult:
        """Classify the batches marked ``classify`` (their rows: ``request.star_in``) against
        the current classes, each into sums of its own, turned back to the classes' frames
        (independent of this update's angle grid) and written with the batch's class counts
        to its ``sums_out``; the classes come from every batch's sums added in batch order.
        The star written holds the rows of the batches classified. With the same seed,
        classes and alignments, an update that classifies every batch gives a full cycle's
        classes (float rounding apart). A batch whose kept sums were made with another working
        box, class count, mask or band is classified again (its rows read from ``rows``), and
        the log says so. A kept batch counts nothing for the classes of its ``dropped``.
        A class whose average shows the same view as another's is re-seeded
        (:func:`~live2d.engines.builtin.averages.reseed_duplicates`) and the batches classified
        again against the re-seeded classes; no kept batch counts for a re-seeded class any
        more: its particles whose best class it was wait, counted in the result's ``waiting``.
        Reads and writes only the batches classified: O(new particles)."""
        started = time.monotonic()
        check_cancel(cancel)
        workers = self._use_threads(request)
        if request.classes_in is None:
            raise EngineError("a streaming update needs the current class averages")
        if not request.batches:
            raise EngineError("a streaming update needs its batches of particles")
        table, stack = read_inputs(request)
        params = request.params
        classes = read_classes(request.classes_in, stack.shape[-1])
        rng = np.random.default_rng(request.seed)  # drawn as run_cycle draws (same seed: same)
        n, k, box = request.batches[-1].stop, len(classes), stack.shape[-1]
        if len(stack) < n or request.n_classes != k:
            raise EngineError(f"the update's batches ({n} particles, {request.n_classes} "
                              f"classes) do not fit {request.stack} ({len(stack)} particles) "
                              f"and {request.classes_in} ({k} classes)")
        readable = usable(stack, n)
        geometry = plan_geometry(params, box, rng, update_shift_sigma(table, request.batches))
        search = Search(geometry, params, classes, self.device, workers)
        progress(Progress("noise spectrum", 0.0))
        search.estimate_noise(stack, rng.permutation(np.flatnonzero(readable))[:NOISE_SAMPLE],
                              table, workers)
        key = sums_key(geometry, params, k)
        log: list[str] = []
        kept = {b.start: _read_sums(b.sums, key) for b in request.batches if not b.classify}
        stale = [b for b in request.batches if not b.classify and kept[b.start] is None]
        todo = [b for b in request.batches if b.classify or b in stale]
        rebuilt = None
        if stale:
            reasons = (unfit_reasons(kept_key(b.sums), key, SUMS_KEY_PARTS) for b in stale)
            rebuilt = Rebuilt(tuple(b.start for b in stale), sum(b.size for b in stale),
                              tuple(dict.fromkeys(r for why in reasons for r in why)))
            log.append(f"{rebuilt.sentence()} (working box {geometry.working} px, {k} classes, "
                       f"mask {params.mask_radius:.0f} Å, {params.high_res:.1f}-"
                       f"{params.low_res:.0f} Å now)")
            table = pd.concat([table, *(b.kept_rows("sums") for b in stale)], ignore_index=True)
        index = table["POS"].to_numpy(dtype=np.int64) - 1  # each row's image in the stack
        chosen_parts, left_out = [], []
        for batch in todo:
            rows = np.flatnonzero((index >= batch.start) & (index < batch.stop))
            if len(rows) != batch.size:
                raise EngineError(f"{request.star_in} holds {len(rows)} of the {batch.size} "
                                  f"particles {batch.start + 1}-{batch.stop} to classify")
            rows = rows[np.argsort(index[rows], kind="stable")]
            readable_rows = readable[index[rows]]
            chosen, skipped = rows[readable_rows], rows[~readable_rows]
            if params.exclude_blank_edges and len(chosen):
                keep = np.concatenate([~blank_edges(stack[index[part]]) for _, part in
                                       batches(chosen, EDGE_CHECK_BATCH)])
                chosen, skipped = chosen[keep], np.concatenate([skipped, chosen[~keep]])
            chosen_parts.append(chosen)
            left_out.append(skipped)
        parts = [(index[chosen], chosen) for chosen in chosen_parts]
        classify = functools.partial(self._classify_batches, stack=stack, table=table,
                                     parts=parts, request=request, progress=progress,
                                     cancel=cancel, geometry=geometry, k=k)
        results_parts, fresh = classify(search)
        used_now = np.concatenate(chosen_parts) if chosen_parts else np.zeros(0, np.int64)
        results = {name: np.concatenate([part[name] for part in results_parts])
                   for name in RESULT_NAMES}
        total, counts, waiting = _add_up(request.batches, fresh, kept, set(), k, geometry.working)
        averages, empty = class_averages(total, geometry, search.band)
        reseeded: list[Reseeded] = []
        if len(used_now):
            if empty:
                averages = reseed(averages, empty, stack, index[used_now], results, params,
                                  geometry)
            reseeded = reseed_duplicates(averages, counts, empty, stack, index[used_now],
                                         results, params, geometry)
        else:  # no particle to re-seed from: an empty class stays empty, not re-seeded
            empty = []
        if reseeded:
            # Classified again against the re-seeded classes, so that from this update on a
            # re-seeded class holds only particles that chose its new average; the batches not
            # classified now count for it no more (their members of it wait to be re-visited).
            again = Search(geometry, params, finish_classes(averages, geometry, params,
                                                            params.auto_center),
                           self.device, workers)
            again.noise = search.noise
            progress(Progress("classifying again (re-seeded classes)", 0.0))
            results_parts, fresh = classify(again)
            results = {name: np.concatenate([part[name] for part in results_parts])
                       for name in RESULT_NAMES}
            total, counts, waiting = _add_up(request.batches, fresh, kept,
                                             {r.cls for r in reseeded}, k, geometry.working)
            averages, empty_again = class_averages(total, geometry, again.band)
            if empty_again:
                averages = reseed(averages, empty_again, stack, index[used_now], results,
                                  params, geometry)
                empty = sorted({*empty, *empty_again})
        progress(Progress("averaging", 1.0))
        for batch, sums in zip(todo, fresh, strict=True):
            _write_sums(batch.sums_out, sums, key, len(sums.chosen), sums.counts.tolist())
        averages = finish_classes(averages, geometry, params, params.auto_center)
        out_table = updated_table(table, used_now, results,
                                  np.concatenate(left_out) if left_out else None)
        done = np.sort(np.concatenate([used_now, *left_out]).astype(np.int64))
        cistem_star.write_star(request.star_out, out_table.iloc[done],
                               [f"Live2D built-in engine, streaming update: {len(used_now)} "
                                f"of {n} particles classified"])
        write_classes(request.classes_out, averages, params.pixel_size)
        seconds = time.monotonic() - started
        log.append(f"streaming update: {len(used_now)} particles in {len(todo)} batch(es) "
                   f"classified{' twice' if reseeded else ''}, {len(request.batches)} batches "
                   "in the classes")
        return CycleResult(request.classes_out, request.star_out, counts.tolist(),
                           len(used_now) * (2 if reseeded else 1), seconds, log,
                           tuple(b.start for b in todo), tuple(reseeded), waiting, rebuilt,
                           tuple(empty))

    def _classify_batches(self, search: Search, *, stack: np.ndarray, table: pd.DataFrame,
                          parts: list[tuple[np.ndarray, np.ndarray]], request: CycleRequest,
                          progress: ProgressCallback, cancel: threading.Event,
                          geometry: Geometry, k: int
                          ) -> tuple[list[dict[str, np.ndarray]], list[KeptSums]]:
        """Classify each batch's particles (``parts``: image indices and rows of ``table``)
        against ``search``'s classes: each batch's results, and its sums turned back to the
        classes' frames with its particles per best class."""
        # Every batch's chunks at once: on a cluster, new batches and re-visits are tasks side
        # by side, not one batch after another; each batch's partial sums are then added up
        # in chunk order, as one machine does, so the sums are the same wherever they ran.
        partials = self._classify_parts(search, stack, table, parts, request, progress, cancel)
        check_cancel(cancel)
        results_parts, fresh = [], []
        for (_, chosen), batch_partials in zip(parts, partials, strict=True):
            sums = search.empty_sums()
            results = (merge_partials(sums, batch_partials) if batch_partials else
                       {name: np.zeros(0) for name in RESULT_NAMES})
            reduced = reduce_sums(sums, geometry)
            fresh.append(KeptSums(reduced.numerators, reduced.denominators, reduced.mass,
                                  np.array(class_counts(results["cls"], k), dtype=np.int64),
                                  chosen))
            results_parts.append(results)
        return results_parts, fresh

    def _classify(self, search: Search, stack: np.ndarray, table: pd.DataFrame,
                  used: np.ndarray, request: CycleRequest, progress: ProgressCallback,
                  cancel: threading.Event) -> dict[str, np.ndarray]:
        """Classify the images ``used`` (their rows of ``table``: the same positions) into
        ``search.sums``, in chunks of whole batches (:meth:`_classify_parts`)."""
        [partials] = self._classify_parts(search, stack, table, [(used, used)], request,
                                          progress, cancel)
        return merge_partials(search.sums, partials)

    def _classify_parts(self, search: Search, stack: np.ndarray, table: pd.DataFrame,
                        parts: list[tuple[np.ndarray, np.ndarray]], request: CycleRequest,
                        progress: ProgressCallback, cancel: threading.Event
                        ) -> list[list[Partial]]:
        """Classify each part's images (``(used, rows)``: image indices into the stack and
        their rows of ``table``) in chunks of whole batches, each into partial sums of its own;
        returns each part's partials in chunk order, for the caller to add up in that order:
        the same chunks whether they run here or, all parts' at once, on a cluster's workers,
        so the averages come out the same."""
        size = self.batch_size * self.chunk_batches
        chunks = [(part, used[start:start + size], rows[start:start + size])
                  for part, (used, rows) in enumerate(parts)
                  for start in range(0, len(used), size)]
        total = max(1, sum(len(used) for used, _ in parts))
        started = time.monotonic()
        if self.executor is None or not self.executor.distributed:

            def on_batch(done: int) -> None:
                rate = done / max(time.monotonic() - started, 1e-9)
                progress(Progress("classifying", done / total, rate))

            partials = classify_chunks(search, stack, [(chunk, table.iloc[at])
                                                       for _, chunk, at in chunks],
                                       self.batch_size, self._threads_here(request), on_batch,
                                       cancel)
        else:
            # The request's threads are this machine's; the workers' share their own cores.
            threads = self.executor.task_threads() or max(1, request.threads)
            tasks = [ChunkTask(str(request.stack), chunk, table.iloc[at][CHUNK_COLUMNS],
                               self.batch_size, threads) for _, chunk, at in chunks]
            ends = np.cumsum([len(chunk) for _, chunk, _ in chunks])

            def on_done(n: int) -> None:
                done = int(ends[n - 1]) if n else 0  # chunks finish out of order: an estimate
                rate = done / max(time.monotonic() - started, 1e-9)
                progress(Progress("classifying", done / total, rate))

            on_done(0)
            partials = self.executor.map(run_chunk_task, search.without_sums(), tasks,
                                         cancel=cancel, on_done=on_done) if tasks else []
        by_part: list[list[Partial]] = [[] for _ in parts]
        for (part, _, _), partial in zip(chunks, partials, strict=True):
            by_part[part].append(partial)
        return by_part

    def _threads_here(self, request: CycleRequest) -> int:
        """Threads of this process's share of the work: the request's on the CPU; one feeds
        a GPU (PyTorch's own threads then serve its CPU side)."""
        return max(1, request.threads) if self.device.type == "cpu" else 1

    def _use_threads(self, request: CycleRequest) -> int:
        """Set PyTorch up for a cycle; how many of :mod:`workers`' threads share its work. On
        the CPU the calling thread's PyTorch is single-threaded too: its stages between the
        threads' (averages, writing) are small, and a busy workstation makes intra-op threads
        wait for each other."""
        self.threads = max(1, request.threads)
        workers = self._threads_here(request)
        torch.set_num_threads(1 if self.device.type == "cpu" else self.threads)
        return workers


# ---------------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class ChunkTask:
    """A chunk for a worker: what it needs to classify its particles, sent with the search."""

    stack: str  # path, opened by the worker (on the shared filesystem)
    chunk: np.ndarray  # particle indices into the stack
    rows: pd.DataFrame  # their CHUNK_COLUMNS, in chunk order
    batch_size: int
    threads: int


def classify_chunks(search: Search, stack: np.ndarray,
                    chunks: list[tuple[np.ndarray, pd.DataFrame]], batch_size: int,
                    threads: int = 1, on_batch: Callable[[int], None] | None = None,
                    cancel: threading.Event | None = None) -> list[Partial]:
    """Classify each chunk (particle indices into ``stack``, their rows) batch by batch into
    fresh partial sums of its own. The batches of all chunks are scored on ``threads``
    threads side by side and added to their chunk's sums in order, so each chunk's numbers are
    the same for any ``threads`` and wherever it runs (nothing random). ``on_batch(done)``:
    particles done so far, in the caller's thread; a set ``cancel`` stops between batches."""
    stack = SerialReads(stack)
    partials = [Partial(search.empty_sums(), {name: np.zeros(len(chunk)) for name in RESULT_NAMES})
                for chunk, _ in chunks]
    # Rows sliced here, not in the threads, as arrays of the columns scoring reads: slicing a
    # table per batch cost pandas a millisecond, 2-3% of a 40 Å cycle.
    units: list[tuple[int, int, np.ndarray, Rows]] = []
    for part, (chunk, rows) in enumerate(chunks):
        columns = {name: rows[name].to_numpy() for name in CHUNK_COLUMNS if name in rows}
        units += [(part, done - len(batch), batch,
                   {name: values[done - len(batch):done] for name, values in columns.items()})
                  for done, batch in batches(chunk, batch_size)]

    def score(unit: tuple[int, int, np.ndarray, Rows]
              ) -> tuple[dict[str, np.ndarray], Contribution]:
        _, _, batch, rows = unit
        return search.score(stack, batch, rows)

    def add(index: int, scored: tuple[dict[str, np.ndarray], Contribution]) -> None:
        part, start, batch, _ = units[index]
        results, contribution = scored
        for name, values in results.items():
            partials[part].results[name][start:start + len(batch)] = values
        search.add(partials[part].sums, contribution)

    done = 0

    def on_done(index: int) -> None:
        nonlocal done
        done += len(units[index][2])
        if on_batch is not None:
            on_batch(done)

    run_ordered(units, score, add, threads, on_done=on_done, cancel=cancel)
    return partials


def classify_chunk(search: Search, stack: np.ndarray, chunk: np.ndarray, rows: pd.DataFrame,
                   batch_size: int, threads: int = 1) -> Partial:
    """One chunk of :func:`classify_chunks`."""
    [partial] = classify_chunks(search, stack, [(chunk, rows)], batch_size, threads)
    return partial


def run_chunk_task(search: Search, task: ChunkTask) -> Partial:
    """A chunk on a Dask worker: the stack memory-mapped from the shared folder (or the source
    stacks, read in place)."""
    torch.set_num_threads(1)  # the task's threads each run single-threaded PyTorch
    keep_freed_memory()
    try:
        stack = open_images(task.stack)
    except (OSError, ValueError, StarFormatError) as exc:
        raise EngineError(f"built-in engine on a worker: cannot read {task.stack}: {exc}") \
            from None
    return classify_chunk(search, stack, task.chunk, task.rows, task.batch_size,
                          task.threads)


# ------------------------------------------------------------------------- kept batch sums
# The entries of sums_key by what the user changed to change them (a limit changes the band
# and often the working box), for the log's line on kept sums that no longer fit.
SUMS_KEY_PARTS = {"working box": ("box", "cropped", "working", "pixel"),
                  "class count": ("classes",), "mask": ("mask",),
                  "band": ("high_res", "low_res"), "contrast": ("invert", "normalize")}


def sums_key(geometry: Geometry, params: CycleParams, k: int) -> dict[str, float]:
    """What a batch's kept sums were made with and must match to be added to another's. The
    angle grid is not part of it: the sums are turned back to the classes' own frames."""
    return {"classes": k, "box": geometry.box, "cropped": geometry.cropped,
            "working": geometry.working, "pixel": round(geometry.binned_pixel, 5),
            "mask": round(params.mask_radius, 3), "high_res": round(params.high_res, 3),
            "low_res": round(params.low_res, 3), "invert": params.invert_contrast,
            "normalize": params.normalize}


def _sum_shapes(k: int, working: int) -> tuple[tuple[int, ...], ...]:
    return (k, working, working), (k, working, working // 2 + 1), (k,)


def _write_sums(path: Path, sums: ReducedSums, key: dict[str, float], particles: int,
                counts: list[int]) -> None:
    """A batch's sums and its particles per class (best class), written whole (a kill leaves
    the old file or the new one)."""
    save_kept(path, key, {"particles": particles, **sums.to_dict(),
                          "counts": torch.tensor(counts, dtype=torch.int64)})


def _read_sums(path: Path, key: dict[str, float]) -> ReducedSums | None:
    """A batch's kept sums, or None when missing, unreadable or made with another ``key``."""
    kept = load_kept(path, key)
    if kept is None or "counts" not in kept:
        return None
    return KeptSums(kept["numerators"], kept["denominators"], kept["mass"],
                    kept["counts"].numpy())


@dataclass
class KeptSums(ReducedSums):
    """A batch's kept sums, with its particles per best class (and, when just made, the rows
    of the particles classified)."""

    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    chosen: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def without(self, classes: list[int]) -> KeptSums:
        """These sums with nothing in ``classes``: what the batch adds to the classes once
        those were re-seeded after it was classified."""
        if not classes:
            return self
        gone = torch.as_tensor(classes)
        numerators, denominators, mass = (self.numerators.clone(), self.denominators.clone(),
                                          self.mass.clone())
        numerators[gone], denominators[gone], mass[gone] = 0, 0, 0
        counts = self.counts.copy()
        counts[classes] = 0
        return KeptSums(numerators, denominators, mass, counts)


def _add_up(batches: tuple[StreamBatch, ...], fresh: list[KeptSums],
            kept: dict[int, KeptSums | None], reseeded: set[int], k: int,
            working: int) -> tuple[ReducedSums, np.ndarray, int]:
    """Every batch's sums added in batch order (the same sums give the same classes): those
    classified now (``fresh``, in order) whole, the kept ones without the classes re-seeded
    since they were classified (theirs, and ``reseeded`` now). Also the particles per class,
    and those of the kept batches that are in no class for that."""
    total = ReducedSums(*(torch.zeros(shape) for shape in _sum_shapes(k, working)))
    counts = np.zeros(k, dtype=np.int64)
    waiting = 0
    made = iter(fresh)
    for batch in batches:
        sums = kept.get(batch.start)
        if sums is None:  # classified now (asked, or its kept sums did not fit)
            sums = next(made)
        else:
            gone = sorted({*batch.dropped, *reseeded})
            waiting += int(sums.counts[gone].sum()) if gone else 0
            sums = sums.without(gone)
        total.add(sums)
        counts += sums.counts
    return total, counts, waiting


def aligned_shifts(table: pd.DataFrame) -> np.ndarray:
    """``(n, 2)`` Å: the shifts (x, y) of the rows of ``table`` aligned before (in a class)."""
    aligned = table["2DCLS"].to_numpy(dtype=np.int64) > 0
    return table[["SHX", "SHY"]].to_numpy(dtype=np.float64)[aligned]


def update_shift_sigma(table: pd.DataFrame, batches: tuple[StreamBatch, ...]) -> float | None:
    """A streaming update's translation prior (:func:`learned_shift_sigma`): from the rows it
    re-visits; where they are too few (an update of new particles only), from the kept rows
    of the batches classified most recently before, a few at most, so that the cost does not
    grow with the session."""
    shifts = [aligned_shifts(table)]
    kept = [b for b in batches if not b.classify and b.rows is not None]
    for batch in reversed(kept[-KEPT_ROWS_FOR_PRIOR:]):
        if sum(len(part) for part in shifts) >= MIN_ALIGNED_FOR_PRIOR:
            break
        try:
            shifts.append(aligned_shifts(cistem_star.read_star(batch.rows)))
        except (OSError, StarFormatError):
            continue  # a prior from fewer rows, or the default: no reason to fail the update
    return learned_shift_sigma(np.concatenate(shifts))


def check_cancel(cancel: threading.Event) -> None:
    """Raise CycleCancelled once ``cancel`` is set."""
    if cancel.is_set():
        raise CycleCancelled("the cycle was stopped")

