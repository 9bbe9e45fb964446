"""One classification cycle: from the particle store and the previous cycle to published results.

:func:`run_cycle` writes the cycle's input star (the previous cycle's parameters, then the
particles imported since, unassigned), asks the engine for one cycle, refuses results that are not
all finite, scores the classes and publishes the class averages, the particles' star, the class
table and the thumbnails under the cycle's names (:mod:`live2d.output_folder`). It returns the
cycle's record; recording it (:mod:`live2d.history`) and moving the job on is the caller's, so a
kill before that runs the cycle again and leaves nothing half-recorded.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from live2d import cistem_star
from live2d.atomic import atomic_write_json
from live2d.class_quality import ClassQuality, assess_classes, half_set_sums, half_sums_key
from live2d.engines import CycleParams, CycleRequest, CycleResult, Engine, Progress, StreamBatch
from live2d.engines.base import emptied_sentence, split_sentence
from live2d.errors import EngineError, SessionError
from live2d.forecast import particle_times
from live2d.history import CycleRecord, dropped_classes, particle_table
from live2d.kept_tensors import load_kept, save_kept
from live2d.mrc import mark_image_stack, read_images
from live2d.output_folder import OutputFolder, batch_dump_name, batch_sums_name
from live2d.schedule import REVISIT_BLOCK, CycleSpec, Settings
from live2d.source_images import open_images
from live2d.streaming import (
    Batch,
    UpdatePlan,
    kept_batches,
    plan_revisit,
    plan_update,
    with_classified,
)
from live2d.thumbnails import write_thumbnails
from live2d.warp import WarpSettings, implausible_rows

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from live2d.session_state import JobState
    from live2d.store import ParticleStore

# The store's CTF columns as a particle star names them (for check_particle_values).
_CISTEM_TO_STAR = {"DF1": "rlnDefocusU", "DF2": "rlnDefocusV", "ANGAST": "rlnDefocusAngle",
                   "PSHIFT": "rlnPhaseShift", "VOLT": "rlnVoltage",
                   "Cs": "rlnSphericalAberration", "AmpC": "rlnAmplitudeContrast",
                   "PSIZE": "rlnImagePixelSize"}
# A particle's diameter as a share of its box, where no picker says (boxes are usually about
# 1.5-2 diameters wide).
DIAMETER_OF_BOX = 0.6
log = logging.getLogger("live2d")

ProgressReport = Callable[[dict[str, Any]], None]


@dataclass
class CycleInputs:
    """What one cycle is run with, besides its place in the job: where, on which particles,
    with which settings and engine. ``said`` holds the warnings said already this session
    (each is said once, not every cycle)."""

    output: OutputFolder
    store: ParticleStore
    settings: Settings
    source: WarpSettings  # the particles' pixel size, box, contrast and diameter
    engine: Engine
    cancel: threading.Event
    said: set[str]


class FinishedCycle(NamedTuple):
    """A published cycle: its record (not recorded yet) and the parameters it ran with."""

    record: CycleRecord
    params: CycleParams


def run_cycle(number: int, job: JobState, previous: CycleRecord | None, inputs: CycleInputs,
              on_progress: ProgressReport) -> FinishedCycle:
    """Run and publish cycle ``number``: the job's next cycle, continuing from ``previous``
    (a refinement cycle needs it). ``on_progress`` gets the cycle's progress as the page shows
    it. Raises EngineError (results refused: nothing published), CycleCancelled (a hard stop),
    SessionError (the previous cycle does not fit the store); the work folder is emptied
    whenever it raises."""
    spec = job.spec(job.next_index)
    settings, store, output = inputs.settings, inputs.store, inputs.output
    files = output.cycle(number)
    output.work.mkdir(exist_ok=True)
    if spec.kind == "stream":
        if spec.block == REVISIT_BLOCK:  # spare time: particles waiting stay for their update
            update = plan_revisit(previous, settings, number)
            n = update.batches[-1].stop
        else:
            n = store.count
            update = plan_update(previous, n, settings, number)
        written = _write_update_input(files.input_star, update, previous, inputs)
    else:
        n, update = _write_input(files.input_star, previous, inputs, job.particles), None
    left_out = _left_out(store, n)
    request = CycleRequest(
        stack=store.images_path,
        star_in=files.input_star,
        star_out=output.work / files.star.name,
        classes_out=output.work / files.classes.name,
        params=cycle_params(spec, inputs, job.job_type),
        n_classes=settings.classes if spec.kind == "start" else len(previous.class_counts),
        classes_in=output / previous.classes if spec.kind != "start" else None,
        workdir=output.work,
        threads=settings.threads,
        seed=settings.seed + number,
        batches=_stream_batches(update, output, number, previous),
    )
    if update is None:
        log.info(f"cycle {number} (job {job.number} {job.job_type}, {spec.block} "
                 f"{spec.block_cycle}): {n} particles, {request.params.high_res:.1f} Å, "
                 f"{spec.fraction:.0%} used")
    else:
        _log_update(number, job, update, request.params.high_res)
    started = time.time()

    def report(p: Progress) -> None:
        on_progress({"cycle": number, "stage": p.stage, "fraction": p.fraction,
                     "particles_per_second": p.particles_per_second,
                     "eta_seconds": _eta(p, started)})

    engine = inputs.engine
    try:
        if spec.kind == "start":
            result = engine.start_classes(request, report, inputs.cancel)
            shutil.copyfile(files.input_star, request.star_out)  # unassigned: the next input
        elif spec.kind == "stream":
            result = engine.run_update(request, report, inputs.cancel)
        else:
            result = engine.run_cycle(request, report, inputs.cancel)
        for line in result.log:
            log.debug(line)
        if result.emptied:
            log.info(f"cycle {number}: {emptied_sentence(result.emptied)}")
        if result.split:
            log.info(f"cycle {number}: {split_sentence(result.split)}")
        for reseeded in result.reseeded:
            log.info(f"cycle {number}: {reseeded.sentence()}")
        table = _check_outputs(request, number, spec.kind != "start")
    except BaseException:
        clean_work_folder(output)
        raise
    mark_image_stack(request.classes_out)
    write_thumbnails(request.classes_out, files.thumbnails)
    batches = with_classified(update, result.batches_classified, number) if update else []
    fields = _update_fields(update, batches, number) if update is not None else {}
    if update is not None and result.rebuilt is not None:
        # The update's line said what was planned; the engine classified these besides.
        log.info(f"cycle {number}: {result.rebuilt.sentence()}, {fields['revisited']:,} "
                 "re-visited in all")
    valid_from = (_valid_from(previous, update, batches, result, number) if update is not None
                  else [])
    try:
        if update is not None:
            _write_batch_rows(table, batches, number, output)
        quality = (_assess_classes(request, table, store, batches, number, output,
                                   result.class_counts, valid_from)
                   if table is not None else [])
    except BaseException:
        clean_work_folder(output)
        raise
    if quality:
        atomic_write_json(files.class_table, [q.to_dict() for q in quality])
    request.classes_out.replace(files.classes)
    if update is None:
        request.star_out.replace(files.star)
    else:  # named by no record until this cycle's is appended
        output.stream_sums.mkdir(exist_ok=True)
        for batch in batches:
            if batch.aligned == number:
                for kept in batch.paths(output):
                    made = output.work / kept.name
                    # Only an engine that keeps its program's own dumps (cisTEM) makes one.
                    if made.exists() or kept != batch.dump_path(output):
                        made.replace(kept)
    record = CycleRecord(
        number=number, job=job.number, job_type=job.job_type, block=spec.block,
        block_cycle=spec.block_cycle, job_cycle=spec.index + 1, job_cycles=len(job.plan),
        high_res=request.params.high_res, fraction=spec.fraction, particles=n,
        class_counts=result.class_counts, started=started, finished=time.time(),
        engine=engine.describe(), generation=store.generation,
        particles_per_second=round(result.particles_per_second, 1),
        classes=files.relative(files.classes),
        star=files.relative(files.star) if update is None else "",
        thumbnails=files.relative(files.thumbnails),
        class_resolution=[q.resolution for q in quality],
        class_score=[q.score for q in quality],
        class_table=files.relative(files.class_table) if quality else "",
        left_out=left_out,
        **fields,
        reseeded=[r.cls + 1 for r in (*result.reseeded, *result.split)],
        **({"class_valid_from": valid_from, "waiting": result.waiting}
           if update is not None else {}),
    )
    if update is not None:
        record = dataclasses.replace(record, latency=_latency(record.finished - written))
    return FinishedCycle(record, request.params)


def _stream_batches(update: UpdatePlan | None, output: OutputFolder, number: int,
                    previous: CycleRecord | None) -> tuple[StreamBatch, ...]:
    """The engine's view of an update's batches: the kept sums it reads (without the classes
    re-seeded since), and where in the work folder it writes the sums of those it classifies
    (moved to stream/ when the cycle is published, under the name of the cycle that made
    them)."""
    if update is None:
        return ()
    valid_from = previous.class_valid_from if previous is not None and not update.first else []
    return tuple(StreamBatch(b.start, b.stop, b.sums_path(output),
                             output.work / batch_sums_name(b.start, number),
                             b.start in update.classify, b.rows_path(output),
                             b.dump_path(output), output.work / batch_dump_name(b.start, number),
                             () if b.start in update.classify else
                             tuple(dropped_classes(valid_from, b.aligned)))
                 for b in update.batches)


def _valid_from(previous: CycleRecord, update: UpdatePlan, batches: list[Batch],
                result: CycleResult, number: int) -> list[int]:
    """The update's ``class_valid_from``: the previous update's, with the classes re-seeded
    now valid from this cycle on; a class no kept batch is older than any more counts every
    batch again (empty when all do)."""
    valid_from = ([0] * len(result.class_counts) if update.first or not
                  previous.class_valid_from else list(previous.class_valid_from))
    for reseeded in result.reseeded:
        valid_from[reseeded.cls] = number
    oldest = min(b.aligned for b in batches)
    valid_from = [since if since > oldest else 0 for since in valid_from]
    return valid_from if any(valid_from) else []


def _write_update_input(star_path: Path, update: UpdatePlan, previous: CycleRecord,
                        inputs: CycleInputs) -> np.ndarray:
    """Write a streaming update's input star: the rows of the batches it classifies, from
    the batches' kept rows and, for particles not in the classes yet, the store (unassigned).
    The first update after another job takes every particle, that job's results first.
    Returns when the stacks of the particles new to the classes were written
    (:func:`live2d.forecast.particle_times`; NaN where unknown)."""
    output, store = inputs.output, inputs.store
    kept = kept_batches(previous)
    covered = kept[-1].stop if kept else previous.particles
    # The store's rows beyond the classes that this update takes in.
    new_rows = store.read_table().iloc[covered:update.batches[-1].stop]
    written = particle_times(new_rows)[0]
    new_rows = new_rows.drop(columns=list(cistem_star.PROVENANCE_COLUMNS), errors="ignore")
    if not kept:
        _write_input(star_path, previous, inputs)
        return written
    parts = []
    for batch in update.batches:
        if batch.start not in update.classify:
            continue
        parts += [_read_kept_rows(old, output) for old in kept
                  if batch.start <= old.start and old.stop <= min(batch.stop, covered)]
        if batch.stop > covered:
            parts.append(new_rows.iloc[max(batch.start, covered) - covered:
                                       batch.stop - covered].assign(**{"2DCLS": 0}))
    table = _finite_input(_concat_frames(parts), inputs.said)
    cistem_star.write_star(star_path, table, [f"input of {star_path.stem}: the particles "
                                              "this streaming update classifies"])
    return written


def _read_kept_rows(batch: Batch, output: OutputFolder) -> pd.DataFrame:
    try:
        return cistem_star.read_star(batch.rows_path(output))
    except cistem_star.StarFormatError as exc:
        raise SessionError(f"the kept parameters of particles {batch.start + 1}-{batch.stop} "
                           f"cannot be read ({exc}): run a seeded startup job to classify "
                           "every particle again") from None


def _concat_frames(parts: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    columns = [c for c in parts[0].columns if all(c in part for part in parts)]
    return pd.concat([part[columns] for part in parts], ignore_index=True)


def _write_batch_rows(table: pd.DataFrame, batches: list[Batch], number: int,
                      output: OutputFolder) -> None:
    """Each batch classified in update ``number``: its rows of the engine's star ``table``,
    into the work folder (published with its sums)."""
    index = table["POS"].to_numpy(dtype=np.int64) - 1
    for batch in batches:
        if batch.aligned != number:
            continue
        rows = table[(index >= batch.start) & (index < batch.stop)]
        if len(rows) != batch.size:
            raise EngineError(f"cycle {number}: the engine's star holds {len(rows)} of the "
                              f"{batch.size} particles {batch.start + 1}-{batch.stop}")
        cistem_star.write_star(output.work / batch.rows_path(output).name, rows,
                               [f"particles {batch.start + 1}-{batch.stop}, classified in "
                                f"cycle {number}"])


def _update_fields(update: UpdatePlan, batches: list[Batch], number: int) -> dict[str, Any]:
    """The record's streaming fields; ``batches`` as the engine left them (it classifies
    batches whose kept sums do not fit, besides the plan's: those count as re-visited)."""
    classified = sum(b.size for b in batches if b.aligned == number)
    new = update.classified - update.revisited
    return {"batches": [[b.start, b.stop, b.aligned] for b in batches],
            "new_particles": update.new_particles, "revisited": classified - new,
            "revisit_credit": update.credit}


def _latency(seconds: np.ndarray) -> list[float]:
    """p50, p99 and the longest of the seconds the particles new to an update waited from
    their stack being written to being in published classes; empty where no time is known."""
    known = seconds[np.isfinite(seconds)]
    if not len(known):
        return []
    return [round(float(v), 1) for v in (*np.percentile(known, [50, 99]), known.max())]


def _log_update(number: int, job: JobState, update: UpdatePlan, high_res: float) -> None:
    if update.first:
        what = (f"first update: all {update.classified:,} particles, "
                f"{update.new_particles:,} of them new, go into {len(update.batches)} batches "
                "and are classified against the classes")
    elif not update.new_particles:
        what = (f"no new particles, {update.revisited:,} re-visited, {len(update.batches)} "
                "batches in the classes")
    else:
        what = (f"{update.new_particles:,} new particles, {update.revisited:,} re-visited, "
                f"{len(update.batches)} batches in the classes")
    log.info(f"cycle {number} (job {job.number}, streaming update) at {high_res:.1f} Å: {what}")


def cycle_params(spec: CycleSpec, inputs: CycleInputs, job_type: str) -> CycleParams:
    """The engine's parameters for the cycle ``spec`` of a job of ``job_type`` plans: the mask
    and search range follow the particle diameter (Warp's, else guessed from the box) unless
    the settings give them; only an ab initio job's startup cycles re-balance its classes (a
    seeded job's small classes are views it keeps)."""
    settings, source, pixel_size = inputs.settings, inputs.source, inputs.store.pixel_size
    diameter = source.diameter
    if not diameter:  # a star without Warp's settings: guessed from the box
        diameter = DIAMETER_OF_BOX * source.box * source.pixel_size
        if "no diameter" not in inputs.said and (settings.mask_radius is None or
                                                 settings.search_range is None):
            inputs.said.add("no diameter")
            log.info(f"no particle diameter is known for this particle star: mask radius "
                     f"and search range default to {0.6 * diameter:.0f} and "
                     f"{0.33 * diameter:.0f} Å, from the {source.box}-px box; set them to "
                     "change that")
    mask = settings.mask_radius or 0.6 * diameter
    search = settings.search_range
    if search is None:
        search = 0.33 * diameter
    return CycleParams(
        pixel_size=pixel_size,
        mask_radius=mask,
        high_res=max(spec.high_res, 2.0 * pixel_size),
        low_res=settings.low_res,
        angular_step=settings.angular_step,
        search_range=search,
        smoothing=settings.smoothing,
        fraction=spec.fraction,
        invert_contrast=source.invert,
        exclude_blank_edges=settings.exclude_blank_edges,
        auto_mask=settings.auto_mask and spec.kind == "refine",
        auto_center=settings.auto_center and spec.kind == "refine",
        rebalance=job_type == "abinit" and spec.block == "startup",
    )


def clean_work_folder(output: OutputFolder) -> None:
    """Empty the cycles' scratch folder (a cycle that failed or was killed leaves files)."""
    shutil.rmtree(output.work, ignore_errors=True)


def _write_input(star_path: Path, previous: CycleRecord | None, inputs: CycleInputs,
                 job_particles: int | None = None) -> int:
    """Write the cycle's input star: the previous cycle's results, then the particles imported
    since then, unassigned, up to the job's ``job_particles`` (None: all). Returns the particle
    count."""
    table = inputs.store.read_table().drop(columns=list(cistem_star.PROVENANCE_COLUMNS),
                                           errors="ignore")
    if job_particles is not None:
        known = previous.particles if previous is not None else 0
        table = table.iloc[:max(job_particles, known)]
    if previous is not None:
        try:
            earlier = particle_table(inputs.output.root, previous)
        except cistem_star.StarFormatError as exc:
            # Published by a version that let non-finite parameters through: unusable, but
            # the classes are not, so the particles start this cycle unassigned.
            log.warning(f"the previous cycle's particle parameters cannot be used ({exc}): "
                        "every particle starts this cycle unassigned")
            earlier = table.iloc[:0]
        if len(earlier) > len(table):
            raise SessionError(f"cycle {previous.number}'s results have more rows than the "
                               "particle stack")
        table = _concat_rows(earlier, table.iloc[len(earlier):])
    table = _finite_input(table, inputs.said)
    cistem_star.write_star(star_path, table, [f"input of {star_path.stem}"])
    return len(table)


def _finite_input(table: pd.DataFrame, said: set[str]) -> pd.DataFrame:
    """``table`` with every value finite and every CTF plausible, so that no particle can
    turn the classes into NaN: a store filled before Live2D refused such rows at import
    (live2d.warp.check_particle_values) would otherwise fail every cycle, restart or not.
    Such particles get the median CTF and start unassigned; said once per session."""
    ctf = [c for c in _CISTEM_TO_STAR if c in table]
    bad, _, _ = implausible_rows(table[ctf].rename(columns=_CISTEM_TO_STAR))
    numeric = table.select_dtypes("number").columns
    for column in numeric:  # column by column: no copy of a million-row table
        bad |= ~np.isfinite(table[column].to_numpy(dtype=float))
    if not bad.any():
        return table
    table = table.copy()
    for short in _CISTEM_TO_STAR:
        if short in table:
            values = table[short].to_numpy(dtype=float)
            table.loc[bad, short] = float(np.median(values[~bad])) if (~bad).any() else \
                cistem_star.BY_SHORT[short].default
    for short in numeric:
        if short not in _CISTEM_TO_STAR and short != "POS" and short in cistem_star.BY_SHORT:
            table.loc[bad, short] = cistem_star.BY_SHORT[short].default
    if "bad input" not in said:
        said.add("bad input")
        log.warning(f"{int(bad.sum())} particles have non-finite or implausible parameters "
                    "(imported before Live2D refused such rows): they are classified with the "
                    "median CTF, starting unassigned")
    return table


def _left_out(store: ParticleStore, n: int) -> int:
    """How many of the first ``n`` particles cannot be read as imported (their source stack,
    read in place, changed or vanished): said in the log, counted in the record."""
    if store.copies_images:
        return 0
    images = open_images(store.images_path)
    left_out = int((~images.usable(n)).sum())
    if left_out:
        changed = images.changed_stacks(n)
        log.warning(f"{left_out} particles are left out of this cycle: their source "
                    f"stack(s) changed, vanished or were replaced since import "
                    f"({', '.join(changed[:3])}{'...' if len(changed) > 3 else ''}); "
                    "they stay in the store: put the stacks back as imported, or "
                    "import into a new output folder to classify them")
    return left_out


def _check_outputs(request: CycleRequest, number: int, refine: bool) -> pd.DataFrame | None:
    """Refuse a cycle whose class averages or particle parameters are not all finite,
    before it is published: the previous classes stay, and the next cycle does not read
    them. Returns the output star's table (refinement cycles; None otherwise)."""
    classes = read_images(request.classes_out)
    if not np.isfinite(classes).all():
        raise EngineError(f"cycle {number}: the engine wrote class averages with NaN or "
                          f"infinite pixels ({request.classes_out}); not published, the "
                          "previous classes stay")
    if not refine:
        return None
    try:
        table = cistem_star.read_star(request.star_out)
    except cistem_star.StarFormatError as exc:
        raise EngineError(f"cycle {number}: unusable particle parameters ({exc}); not "
                          "published, the previous classes stay") from None
    for column in table.select_dtypes("number").columns:
        if np.isfinite(table[column].to_numpy(dtype=float)).all():
            continue
        raise EngineError(f"cycle {number}: the engine wrote non-finite {column} values "
                          f"({request.star_out}); not published, the previous classes stay")
    return table


def _assess_classes(request: CycleRequest, table: pd.DataFrame, store: ParticleStore,
                    batches: list[Batch], number: int, output: OutputFolder,
                    counts: list[int], valid_from: list[int]) -> list[ClassQuality]:
    """Resolution estimate and good/junk score of every class of a finished cycle, whose
    particle parameters are ``table``. A streaming update's (``batches``; ``table`` holds the
    rows of those it classified, ``counts`` every batch's particles per class) adds up its
    batches' kept half-set sums, made only for those it classified: not O(particles); a
    batch's count nothing for the classes re-seeded after it (by ``valid_from``)."""
    stack, averages = open_images(request.stack), read_images(request.classes_out)
    params = request.params
    half_sums = _update_half_sums(stack, table, averages, store.pixel_size, params, batches,
                                  number, output, valid_from) if batches else None
    return assess_classes(stack, table, averages, store.pixel_size, params.mask_radius,
                          params.high_res, params.invert_contrast, half_sums,
                          counts if batches else None)


def _update_half_sums(stack: np.ndarray, table: pd.DataFrame, averages: np.ndarray,
                      pixel_size: float, params: CycleParams, batches: list[Batch],
                      number: int, output: OutputFolder, valid_from: list[int]) -> torch.Tensor:
    """The half-set sums of every batch, added in batch order: made (into the work folder)
    for the batches this update (cycle ``number``) classified, from their rows of ``table``;
    read for the others, or made again in place where theirs do not fit (another box or
    limit; from the batch's kept rows, so the same sums)."""
    import torch  # here: the Scipion plugin imports this module, and needs no torch itself

    k, box = len(averages), averages.shape[-1]
    key = half_sums_key(k, box, pixel_size, params.high_res, params.invert_contrast)
    size = int(key["size"])
    index = table["POS"].to_numpy(dtype=np.int64) - 1
    total = torch.zeros((k, 2, size, size))
    for batch in batches:
        kept = batch.halves_path(output)
        now = batch.aligned == number
        stored = None if now else load_kept(kept, key)
        halves = stored["sums"] if stored is not None else None
        if halves is None:
            rows = (table[(index >= batch.start) & (index < batch.stop)] if now
                    else _read_kept_rows(batch, output))
            halves = half_set_sums(stack, rows, k, pixel_size, size, params.invert_contrast)
            save_kept(output.work / kept.name if now else kept, key, {"sums": halves})
        dropped = dropped_classes(valid_from, batch.aligned)
        if dropped:
            halves = halves.clone()
            halves[dropped] = 0
        total += halves
    return total


def _concat_rows(earlier: pd.DataFrame, new_rows: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    new_rows = new_rows.copy()
    new_rows["2DCLS"] = 0
    columns = [c for c in earlier.columns if c in new_rows.columns]
    return pd.concat([earlier, new_rows[columns]], ignore_index=True)


def _eta(p: Progress, started: float) -> float | None:
    if p.fraction <= 0:
        return None
    elapsed = time.time() - started
    return float(np.round(elapsed * (1 - p.fraction) / p.fraction, 1))
