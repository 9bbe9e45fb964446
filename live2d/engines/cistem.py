"""The cisTEM engine: cisTEM 2's own refine2d and merge2d, driven the way cisTEM's GUI drives them.

A random start is one refine2d in init mode. A cycle is P refine2d slices over consecutive
particle ranges (cisTEM's FirstLastParticleForJob), each dumping its class sums, then one merge2d
that turns the P dumps into class averages; the slices' star files are joined in order. With a
Dask executor the slices run on the cluster's workers (cistem_cluster) and the rest stays here. All
answers go in scripted mode (see cistem_prompts); finding the programs and their build is in
cistem_programs.

A streaming update runs one refine2d per batch it classifies, on exactly that batch's particles,
against the current classes, dumping the batch's sums; each batch's dump is kept (``stream/``),
and merge2d over every kept dump, in batch order, makes the classes.

Random streams: cisTEM seeds from time(NULL), so slices start one wall-clock second apart (see
cistem_jobs.StartClock). A cycle of P slices therefore takes up to about P seconds longer than
its slowest slice; CPU time is unchanged.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mrcfile
import numpy as np
import pandas as pd
import torch

from live2d import cistem_star
from live2d.atomic import atomic_write_bytes, fsync_dir
from live2d.engines.base import (
    CycleParams,
    CycleRequest,
    CycleResult,
    Engine,
    Progress,
    ProgressCallback,
    Rebuilt,
    StreamBatch,
    class_counts,
    unfit_reasons,
)
from live2d.engines.cistem_cluster import read_progress, run_slice
from live2d.engines.cistem_jobs import Job, JobRunner
from live2d.engines.cistem_programs import CistemPrograms, describe_programs, find_programs
from live2d.engines.cistem_prompts import Refine2DRun, merge2d_answers, refine2d_answers
from live2d.errors import CycleCancelled, EngineError
from live2d.kept_tensors import kept_key, load_kept, save_kept

if TYPE_CHECKING:
    from live2d.executors import Executor

__all__ = ["CistemEngine", "CistemPrograms", "find_programs", "first_last_particle_for_job"]

REFINE_SHARE = 0.95  # of a cycle's progress; merge2d takes the rest
CLUSTER_PROGRESS_EVERY_S = 1.0  # between reads of the slices' progress files
# The start of a refine2d dump (cisTEM-interface (c)): box, classes, nonzero classes, images,
# total logP, SNR sum, pixel size, mask radius, mask falloff, log range; native byte order.
_DUMP_HEADER = struct.Struct("=4i6f")


class CistemEngine(Engine):
    """cisTEM's refine2d and merge2d run as programs: refine2d on slices of the stack (threads
    here, or a cluster's workers), merge2d joining their sums into the class averages."""
    name = "cistem"
    streams = True

    def __init__(self, programs: CistemPrograms, executor: Executor | None = None) -> None:
        """``executor``: a distributed one (Dask) runs the refine2d slices on its workers, one
        per worker thread, and checks now that every worker can run the programs."""
        self.programs = programs
        self.executor = executor if executor is not None and executor.distributed else None
        if self.executor is not None:
            self.executor.check_programs([programs.refine2d])

    def describe(self) -> str:
        where = f", slices on {self.executor.describe()}" if self.executor is not None else ""
        return f"cistem ({describe_programs(self.programs)}{where})"

    def start_classes(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """One refine2d in init mode over all particles. refine2d reports no class membership
        in init mode, so class_counts are zeros and particles_processed is the expected number
        of particles drawn (N × fraction)."""
        began = time.monotonic()
        n = _check_request(request, refine=False)
        with _Scratch(request) as scratch:
            runner = JobRunner(scratch.folder, cancel, progress)
            run = Refine2DRun(
                stack=request.stack,
                star_in=request.star_in,
                classes_out=scratch.classes,
                dump_file=scratch.folder / "dump_unused.dat",
                first=1,
                last=n,
                n_classes_init=request.n_classes,
            )
            title = f"refine2d random start ({request.n_classes} classes, particles 1-{n})"
            job = self._refine2d_job(run, request.params, title, "refine2d")
            runner.run([job])
            _require_output(job, scratch.classes, "class averages")
            _finish_classes(scratch.classes, request, job)
            _stop_if_cancelled(cancel)
            scratch.commit(star=False)
        return CycleResult(
            classes=request.classes_out,
            star=None,
            class_counts=[0] * request.n_classes,
            particles_processed=round(n * request.params.fraction),
            seconds=time.monotonic() - began,
            log=runner.log,
        )

    def run_cycle(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """P = min(threads, N) refine2d slices (on a cluster: P = its worker threads), then
        merge2d here. particles_processed counts the particles this cycle used (best class > 0)."""
        began = time.monotonic()
        n = _check_request(request, refine=True)
        workers = self.executor.slots() if self.executor is not None else None
        slices = max(1, min(workers or request.threads, n))
        with _Scratch(request) as scratch:
            runner = JobRunner(scratch.folder, cancel, progress)
            ranges = [first_last_particle_for_job(n, job, slices) for job in range(1, slices + 1)]
            jobs, stars, dumps = [], [], []
            for number, (first, last) in enumerate(ranges, start=1):
                stars.append(scratch.folder / f"slice_{number}.star")
                dumps.append(scratch.folder / f"dump_{number}.dat")
                run = Refine2DRun(
                    stack=request.stack,
                    star_in=request.star_in,
                    classes_in=request.classes_in,
                    star_out=stars[-1],
                    classes_out=scratch.folder / f"slice_{number}.mrc",  # dump mode: not written
                    dump_file=dumps[-1],
                    dump=True,
                    first=first,
                    last=last,
                )
                title = f"refine2d slice {number}/{slices} (particles {first}-{last})"
                jobs.append(
                    self._refine2d_job(run, request.params, title, f"refine2d {number}/{slices}")
                )
            if self.executor is None:
                runner.run(jobs, span=(0.0, REFINE_SHARE))
            else:
                self._run_on_cluster(jobs, scratch.folder, runner, progress, cancel)
            for job, star, dump in zip(jobs, stars, dumps, strict=True):
                _require_output(job, star, "star file")
                _require_output(job, dump, "dump file")
            merge = Job(
                program=self.programs.merge2d,
                title=f"merge2d ({slices} dump files)",
                tag="merge2d",
                answers=merge2d_answers(scratch.classes, scratch.folder / "dump_.dat", slices),
                weight=0,
                staggered=False,
            )
            runner.run([merge], span=(REFINE_SHARE, 1.0))
            _require_output(merge, scratch.classes, "class averages")
            _finish_classes(scratch.classes, request, merge)
            table = _join_slices(jobs, stars, ranges)
            comments = [
                f"Live2D cisTEM engine: {describe_programs(self.programs)}",
                f"refine2d in {slices} slices against {request.classes_in}, merged by merge2d "
                f"{self.programs.merge2d_version}",
            ]
            cistem_star.write_star(scratch.star, table, comments)
            _stop_if_cancelled(cancel)
            scratch.commit(star=True)
        counts = class_counts(table["2DCLS"], request.n_classes)
        return CycleResult(
            classes=request.classes_out,
            star=request.star_out,
            class_counts=counts,
            particles_processed=sum(counts),
            seconds=time.monotonic() - began,
            log=runner.log,
        )

    def run_update(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """One refine2d per batch marked ``classify``, on that batch's particles only (its rows
        of ``request.star_in``), against the current classes, dumping the batch's sums to its
        ``dump_out`` and its particles per class to ``sums_out``; then merge2d over every
        batch's dump, in batch order. A kept dump merge2d would refuse beside this update's
        (another working box, class count, pixel size or mask: a changed limit or mask) has its
        batch classified again from its kept ``rows``, and the log says so. particles_processed
        counts the particles this update used (best class > 0)."""
        began = time.monotonic()
        n = _check_request(request, refine=True, rows=False)
        if not request.batches or request.batches[-1].stop > n:
            raise EngineError(f"the update's batches must lie within the {n} particles of "
                              f"{request.stack}")
        if any(b.dump is None or b.dump_out is None for b in request.batches):
            raise EngineError("the cisTEM engine keeps each batch's refine2d dump: the "
                              "update's batches must say where")
        try:
            table = cistem_star.read_star(request.star_in)
        except cistem_star.StarFormatError as exc:
            raise EngineError(f"input star {request.star_in} cannot be used: {exc}") from None
        todo = [b for b in request.batches if b.classify]
        with _Scratch(request) as scratch:
            runner = JobRunner(scratch.folder, cancel, progress)
            tables = self._refine_batches(todo, table, request, scratch.folder, runner,
                                          progress, cancel, (0.0, REFINE_SHARE))
            header = _dump_key(todo[0].dump_out) if todo else None
            # merge2d cannot leave a class out of a dump: one whose classes were re-seeded
            # since (by the built-in engine, before a switch) is classified again.
            kept = {b.start: load_kept(b.sums, header) if header and not b.dropped and
                    _dump_key(b.dump) == header else None
                    for b in request.batches if not b.classify}
            stale = [b for b in request.batches if not b.classify and kept[b.start] is None]
            rebuilt = None
            if stale:
                reasons = (_why_unfit(b, header) for b in stale)
                rebuilt = Rebuilt(tuple(b.start for b in stale), sum(b.size for b in stale),
                                  tuple(dict.fromkeys(r for why in reasons for r in why)),
                                  "refine2d dumps")
                runner.log.append(f"{rebuilt.sentence()} (this update's: {header})")
                rows = pd.concat([b.kept_rows("dump") for b in stale], ignore_index=True)
                tables.update(self._refine_batches(stale, rows, request, scratch.folder,
                                                   runner, progress, cancel,
                                                   (REFINE_SHARE, REFINE_SHARE)))
            counts = np.zeros(request.n_classes, dtype=np.int64)
            dumps: list[Path] = []
            for batch in request.batches:  # merge2d adds its files in this order
                if batch.start in tables:
                    counts += class_counts(tables[batch.start]["2DCLS"], request.n_classes)
                    assert batch.dump_out is not None
                    dumps.append(batch.dump_out)
                else:
                    counts += kept[batch.start]["counts"].numpy()
                    assert batch.dump is not None
                    dumps.append(batch.dump)
            fresh = {b.dump_out for b in request.batches if b.start in tables}
            dumps = _on_common_classes(dumps, fresh, scratch.folder / "padded", runner.log)
            merge = self._merge(dumps, scratch, runner)
            _finish_classes(scratch.classes, request, merge)
            ordered = [tables[b.start] for b in request.batches if b.start in tables]
            table = pd.concat(ordered, ignore_index=True)
            cistem_star.write_star(scratch.star, table, [
                f"Live2D cisTEM engine, streaming update: {describe_programs(self.programs)}",
                f"refine2d on {len(ordered)} batch(es) against {request.classes_in}, merged "
                f"with {len(dumps) - len(ordered)} kept dump(s)"])
            _stop_if_cancelled(cancel)
            scratch.commit(star=True)
        runner.log.append(f"streaming update: {len(table)} particles in {len(ordered)} "
                          f"batch(es) classified, {len(request.batches)} batches in the classes")
        return CycleResult(
            classes=request.classes_out,
            star=request.star_out,
            class_counts=counts.tolist(),
            particles_processed=int((table["2DCLS"] > 0).sum()),
            seconds=time.monotonic() - began,
            log=runner.log,
            batches_classified=tuple(b.start for b in request.batches if b.start in tables),
            rebuilt=rebuilt,
        )

    def _refine_batches(self, batches: list[StreamBatch], table: pd.DataFrame,
                        request: CycleRequest, folder: Path, runner: JobRunner,
                        progress: ProgressCallback, cancel: threading.Event,
                        span: tuple[float, float]) -> dict[int, pd.DataFrame]:
        """refine2d on each batch's particles (its rows of ``table``, written to a star of its
        own so that nothing outside the batch is read), dumping to its ``dump_out``; the
        batch's particles per class go to its ``sums_out``, keyed by its dump's header.
        Returns each batch's output rows by its start."""
        if not batches:
            return {}
        positions = table["POS"].to_numpy(dtype=np.int64)
        jobs, stars, ranges = [], [], []
        for batch in batches:
            first, last = batch.start + 1, batch.stop
            mine = table[(positions >= first) & (positions <= last)].sort_values("POS")
            if not np.array_equal(mine["POS"].to_numpy(), np.arange(first, last + 1)):
                raise EngineError(f"{request.star_in} holds {len(mine)} of the {batch.size} "
                                  f"particles {first}-{last} to classify")
            star_in = folder / f"batch_{batch.start}_in.star"
            cistem_star.write_star(star_in, mine, [f"particles {first}-{last}"])
            stars.append(folder / f"batch_{batch.start}.star")
            ranges.append((first, last))
            assert batch.dump_out is not None
            run = Refine2DRun(
                stack=request.stack,
                star_in=star_in,
                classes_in=request.classes_in,
                star_out=stars[-1],
                classes_out=folder / f"batch_{batch.start}.mrc",  # dump mode: not written
                dump_file=batch.dump_out,
                dump=True,
                first=first,
                last=last,
            )
            jobs.append(self._refine2d_job(run, request.params,
                                           f"refine2d batch (particles {first}-{last})",
                                           f"refine2d batch {first}-{last}"))
        if self.executor is not None:
            self._run_on_cluster(jobs, folder, runner, progress, cancel)
        else:
            # One process per thread at a time: a first update cuts every particle into
            # batches, far more of them than there are cores.
            width = max(1, request.threads)
            waves = range(0, len(jobs), width)
            total = len(jobs)
            for at in waves:
                wave = jobs[at:at + width]
                runner.run(wave, span=(span[0] + (span[1] - span[0]) * at / total,
                                       span[0] + (span[1] - span[0]) * (at + len(wave)) /
                                       total))
        for job, batch in zip(jobs, batches, strict=True):
            assert batch.dump_out is not None
            _require_output(job, batch.dump_out, "dump file")
        out = _join_slices(jobs, stars, ranges)
        tables, at = {}, 0
        for batch in batches:
            rows = out.iloc[at:at + batch.size].reset_index(drop=True)
            at += batch.size
            assert batch.dump_out is not None
            key = _dump_key(batch.dump_out)
            if key is None:
                raise EngineError(f"refine2d wrote an unreadable dump {batch.dump_out}")
            counts = class_counts(rows["2DCLS"], request.n_classes)
            save_kept(batch.sums_out, key, {"counts": torch.tensor(counts, dtype=torch.int64),
                                            "particles": int((rows["2DCLS"] > 0).sum())})
            tables[batch.start] = rows
        return tables

    def _merge(self, dumps: list[Path], scratch: _Scratch, runner: JobRunner) -> Job:
        """merge2d over ``dumps`` in order, presented as it reads them: files numbered 1..n
        after one seed (links to the kept dumps, none copied)."""
        seed = scratch.folder / "merge" / "batch_dump_.dat"
        seed.parent.mkdir()
        for number, dump in enumerate(dumps, start=1):
            (seed.parent / f"batch_dump_{number}.dat").symlink_to(dump.absolute())
        merge = Job(
            program=self.programs.merge2d,
            title=f"merge2d ({len(dumps)} batch dump files)",
            tag="merge2d",
            answers=merge2d_answers(scratch.classes, seed, len(dumps)),
            weight=0,
            staggered=False,
        )
        runner.run([merge], span=(REFINE_SHARE, 1.0))
        _require_output(merge, scratch.classes, "class averages")
        return merge

    def _run_on_cluster(self, jobs: list[Job], folder: Path, runner: JobRunner,
                        progress: ProgressCallback, cancel: threading.Event) -> None:
        """The slices as tasks on the executor's workers; their logs join this cycle's log."""
        assert self.executor is not None
        began = time.monotonic()
        weights = np.array([job.weight for job in jobs], dtype=float)
        reported = [0.0, 0.0]  # fraction, when

        def relay(finished: int = 0) -> None:
            """The slices' own progress, as their workers write it, weighted by their sizes;
            slices known to be finished count whole."""
            now = time.monotonic()
            if not finished and now - reported[1] < CLUSTER_PROGRESS_EVERY_S:
                return
            done = np.array(read_progress(folder, len(jobs)))
            fraction = max(float((weights * done).sum() / weights.sum()),
                           finished / len(jobs), reported[0])
            elapsed = now - began
            reported[:] = fraction, now
            progress(Progress(stage="classifying", fraction=REFINE_SHARE * fraction,
                              particles_per_second=fraction * weights.sum() / elapsed
                              if elapsed else 0.0))

        progress(Progress(stage="classifying", fraction=0.0))
        # One retry: a node with trouble of its own; a slice that fails twice will fail again.
        results = self.executor.map(run_slice, folder, list(enumerate(jobs, start=1)),
                                    cancel=cancel, on_done=relay, on_wait=relay, retries=1)
        for job, (worker, lines, last_lines) in zip(jobs, results, strict=True):
            runner.log.append(f"{job.tag}: ran on {worker}")
            runner.log.extend(lines)
            job.last_lines.extend(last_lines)

    def _refine2d_job(self, run: Refine2DRun, params: CycleParams, title: str, tag: str) -> Job:
        return Job(
            program=self.programs.refine2d,
            title=title,
            tag=tag,
            answers=refine2d_answers(run, params, self.programs.openmp),
            weight=run.last - run.first + 1,
            staggered=True,
        )


def first_last_particle_for_job(n: int, job: int, jobs: int) -> tuple[int, int]:
    """cisTEM's FirstLastParticleForJob: ⌊n/jobs⌋ particles each, the first n mod jobs get one
    more; ``job`` counts from 1; returns 1-based inclusive (first, last)."""
    size, extra = divmod(n, jobs)
    first = (job - 1) * size + min(job - 1, extra) + 1
    return first, first + size - 1 + (1 if job <= extra else 0)


class _Scratch:
    """A temporary folder for one cycle, and temporary names beside the outputs.

    The outputs are renamed into place only at the end, so a failed or stopped cycle leaves the
    previous cycle's files untouched; everything temporary is removed on leaving."""

    def __init__(self, request: CycleRequest) -> None:
        self.request = request
        base = request.workdir or request.classes_out.parent
        base.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="cistem-", dir=base)).absolute()
        token = self.folder.name
        # cisTEM writes the classes straight to this name; keep the .mrc extension it expects.
        self.classes = _beside(request.classes_out, f".{request.classes_out.name}.{token}.mrc")
        self.star = _beside(request.star_out, f".{request.star_out.name}.{token}")

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *_: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.classes.unlink(missing_ok=True)
        self.star.unlink(missing_ok=True)

    def commit(self, star: bool) -> None:
        if star:
            os.replace(self.star, self.request.star_out)
            fsync_dir(self.request.star_out.parent)
        os.replace(self.classes, self.request.classes_out)
        fsync_dir(self.request.classes_out.parent)


def _beside(path: Path, name: str) -> Path:
    return path.absolute().with_name(name)


def _check_request(request: CycleRequest, refine: bool, rows: bool = True) -> int:
    """The number of particles classified; raises EngineError for a request cisTEM would trip
    over. ``rows``: the input star must list the stack's first particles in order (a job
    classifies those imported when it started, so later ones may follow in the stack; a
    streaming update's star lists some)."""
    if request.n_classes < 1:
        raise EngineError(f"cisTEM needs at least one class, not {request.n_classes}")
    if request.threads < 1:
        raise EngineError(f"cisTEM needs at least one thread, not {request.threads}")
    stack_x, stack_y, n = _mrc_shape(request.stack, "particle stack")
    if n < 1:
        raise EngineError(f"particle stack {request.stack} holds no particles")
    if not rows:
        return _check_classes(request, refine, stack_x, stack_y, n)
    try:
        positions = cistem_star.read_star(request.star_in)["POS"].to_numpy()
    except (cistem_star.StarFormatError, KeyError) as exc:
        raise EngineError(f"input star {request.star_in} cannot be used: {exc}") from None
    listed = len(positions)
    if not 1 <= listed <= n or not np.array_equal(positions, np.arange(1, listed + 1)):
        raise EngineError(
            f"input star {request.star_in} must list particles 1..m of {request.stack} in "
            f"order, m at most its {n} ({listed} rows)"
        )
    return _check_classes(request, refine, stack_x, stack_y, listed)


def _check_classes(request: CycleRequest, refine: bool, stack_x: int, stack_y: int,
                   n: int) -> int:
    if refine:
        if request.classes_in is None:
            raise EngineError("a cisTEM cycle needs input class averages")
        class_x, class_y, k = _mrc_shape(request.classes_in, "input class averages")
        if (class_x, class_y) != (stack_x, stack_y) or k != request.n_classes:
            raise EngineError(
                f"input class averages {request.classes_in} are {k} × {class_x}×{class_y}; "
                f"expected {request.n_classes} × {stack_x}×{stack_y}"
            )
    return n


def _mrc_shape(path: Path, what: str) -> tuple[int, int, int]:
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            header = mrc.header
            return int(header.nx), int(header.ny), int(header.nz)
    except (OSError, ValueError) as exc:
        raise EngineError(f"{what} {path} cannot be read: {exc}") from None


def _require_output(job: Job, path: Path, what: str) -> None:
    if not path.is_file():
        raise job.failure(f"ended without writing its {what} {path}")


def _finish_classes(path: Path, request: CycleRequest, job: Job) -> None:
    """Set the pixel size cisTEM leaves unset in the header, after checking the stack's shape."""
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        shape = (int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx))
        if shape[0] != request.n_classes or shape[1] != shape[2]:
            raise job.failure(
                f"wrote class averages of shape {shape}, not {request.n_classes} square images"
            )
        mrc.voxel_size = request.params.pixel_size
        mrc.flush()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _join_slices(jobs: list[Job], stars: list[Path], ranges: list[tuple[int, int]]) -> pd.DataFrame:
    """The slices' star rows in order; each slice must hold exactly its own particle range."""
    tables = []
    for job, star, (first, last) in zip(jobs, stars, ranges, strict=True):
        try:
            table = cistem_star.read_star(star)
        except cistem_star.StarFormatError as exc:
            raise job.failure(f"wrote an unreadable star file ({exc})") from None
        if not np.array_equal(table["POS"].to_numpy(), np.arange(first, last + 1)):
            raise job.failure(f"wrote star rows other than particles {first}-{last} in order")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# The entries of _dump_key by what the user changed to change them, for the log's line on kept
# dumps that no longer fit.
DUMP_KEY_PARTS = {"working box": ("box",), "class count": ("classes",),
                  "pixel size": ("pixel_size",), "mask": ("mask_radius",)}


def _why_unfit(batch: StreamBatch, header: dict[str, float] | None) -> tuple[str, ...]:
    """Why ``batch``'s kept dump cannot be merged with this update's (``header``: their key;
    None where this update made none to compare with)."""
    if batch.dropped:
        return ("classes re-seeded since it was classified",)
    if header is None:
        return ()
    made = _dump_key(batch.dump)
    if made == header:  # the dump fits; its particles per class were not kept with it
        made = kept_key(batch.sums)
    return unfit_reasons(made, header, DUMP_KEY_PARTS)


def _dump_key(path: Path | None) -> dict[str, float] | None:
    """What merge2d requires alike of all its dump files (box, class count, pixel size), and
    the mask the sums were made under, from a refine2d dump's header; None where missing."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(_DUMP_HEADER.size)
    except OSError:
        return None
    if len(head) < _DUMP_HEADER.size:
        return None
    box, classes, _, _, _, _, pixel, mask, _, _ = _DUMP_HEADER.unpack(head)
    return {"format": "refine2d dump", "box": box, "classes": classes, "pixel_size": pixel,
            "mask_radius": mask}


def _nonzero_classes(path: Path) -> tuple[int, ...]:
    """The classes (0-based) a refine2d dump holds sums for, in the order it holds them."""
    with open(path, "rb") as handle:
        head = handle.read(_DUMP_HEADER.size)
        _, classes, nonzero, *_ = _DUMP_HEADER.unpack(head)
        listed = np.fromfile(handle, dtype=np.int32, count=classes)
    return tuple(int(c) for c in listed[:nonzero])


def _on_common_classes(dumps: list[Path], fresh: set[Path | None], folder: Path,
                       log: list[str]) -> list[Path]:
    """``dumps`` made to hold sums for the same classes, as merge2d requires of its files.

    refine2d skips a class whose input average is all zero, which merge2d writes for a class no
    particle chose; so an update's dumps can lack a class that earlier updates' kept dumps hold.
    A dump lacking classes gets zero sums for them, with a class log-probability no particle
    could give, which merge2d's log-sum ignores: the merged classes are what the particles made.
    This update's own dumps (``fresh``) are padded in place, so that later updates need not pad
    them again; kept ones, records of earlier cycles, are padded as copies in ``folder``."""
    listed = [_nonzero_classes(d) for d in dumps]
    union = tuple(sorted(set().union(*listed)))
    padded = []
    for number, (dump, classes) in enumerate(zip(dumps, listed, strict=True)):
        if classes == union:
            padded.append(dump)
            continue
        target = dump if dump in fresh else folder / f"dump_{number}.dat"
        target.parent.mkdir(exist_ok=True)
        _pad_dump(dump, target, classes, union)
        padded.append(target)
    lacking = sum(classes != union for classes in listed)
    if lacking:
        log.append(f"{lacking} of {len(dumps)} dumps lacked classes others hold (refine2d "
                   "skips a class left empty): given zero sums for them before merge2d")
    return padded


def _pad_dump(source: Path, target: Path, classes: tuple[int, ...],
              union: tuple[int, ...]) -> None:
    """Write ``source``'s dump to ``target`` holding sums for the classes of ``union``: zero
    sums and the lowest log-probability for those ``source`` lacks."""
    data = source.read_bytes()
    box, n_classes, nonzero, *rest = _DUMP_HEADER.unpack_from(data)
    logp_at = _DUMP_HEADER.size + 4 * n_classes
    logp = np.frombuffer(data, dtype=np.float32, count=nonzero, offset=logp_at)
    per_class = 2 * (box // 2 + 1) * box * 2  # float32s: the class sum, then the CTF² sum
    sums = np.frombuffer(data, dtype=np.float32, count=nonzero * per_class,
                         offset=logp_at + 4 * nonzero).reshape(nonzero, per_class)
    where = {c: i for i, c in enumerate(classes)}
    new_list = np.zeros(n_classes, dtype=np.int32)
    new_list[:len(union)] = union
    new_logp = np.full(len(union), np.finfo(np.float32).min, dtype=np.float32)
    new_sums = np.zeros((len(union), per_class), dtype=np.float32)
    for i, c in enumerate(union):
        if c in where:
            new_logp[i] = logp[where[c]]
            new_sums[i] = sums[where[c]]
    header = _DUMP_HEADER.pack(box, n_classes, len(union), *rest)
    atomic_write_bytes(target, header + new_list.tobytes() + new_logp.tobytes()
                       + new_sums.tobytes())


def _stop_if_cancelled(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise CycleCancelled("cisTEM cycle stopped on request")
