"""Streaming updates: which particles an update classifies, and the batches its classes are
made of.

The particles in the classes are cut into batches in stack order, each the particles of one
update (or a slice of at most ``stream_every`` of a backlog). Each batch's contribution to the
class sums is kept in a file of its own (``stream/``,
:func:`live2d.output_folder.batch_sums_name`) and the classes are made from all of them, added
in batch order; so are its half-set sums, from which the class quality is judged
(:func:`live2d.class_quality.assess_classes`). An update classifies the particles that arrived
since the last one as new batches, plus a budget of older batches re-visited against the
improved classes (``stream_revisit`` re-visited particles per new one, least recently aligned
first, whole batches; what a batch too large for this update's budget leaves is carried to the
next as credit). A re-visited batch's new file replaces its old one, so
nothing is counted twice. Between updates an idle engine re-visits more in spare-time updates
(:func:`plan_revisit`, while :func:`spare_revisit_due`): no new particles, one sweep over
every batch after each update that took new ones in.

A class re-seeded because it duplicated another (the built-in engine's
:func:`~live2d.engines.builtin.averages.reseed_duplicates`) counts nothing of the batches
classified before its re-seeding (the record's ``class_valid_from``,
:func:`live2d.history.dropped_classes`): their particles whose best class it was wait, in no
class (class counts, exports, Scipion), until their batch is classified again. Those batches are
the least recently aligned, so the re-visit order takes them first; once none is left, the
record drops the marker.

The cycle record is the commit point: a streaming record lists its batches (start, stop and the
cycle that classified each), so the files in ``stream/`` that the latest record does not name
are left over from a killed update or an older job and are deleted (:func:`drop_unreferenced`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from live2d.errors import SessionError
from live2d.history import CycleRecord
from live2d.output_folder import (
    OutputFolder,
    batch_dump_name,
    batch_halves_name,
    batch_rows_name,
    batch_sums_name,
)
from live2d.schedule import REVISIT_BLOCK, Settings

log = logging.getLogger("live2d")

# A last batch smaller than this share of ``stream_every`` is classified again with the next
# update's new particles, as one batch: updates triggered by time with a few particles each
# would otherwise leave thousands of tiny batches.
SMALL_BATCH_SHARE = 0.25


@dataclass(frozen=True)
class Batch:
    """Particles ``start`` to ``stop`` (stack order), classified in cycle ``aligned``."""

    start: int
    stop: int
    aligned: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def sums_path(self, output: OutputFolder) -> Path:
        return output.stream_sums / batch_sums_name(self.start, self.aligned)

    def halves_path(self, output: OutputFolder) -> Path:
        return output.stream_sums / batch_halves_name(self.start, self.aligned)

    def rows_path(self, output: OutputFolder) -> Path:
        return output.stream_sums / batch_rows_name(self.start, self.aligned)

    def dump_path(self, output: OutputFolder) -> Path:
        return output.stream_sums / batch_dump_name(self.start, self.aligned)

    def paths(self, output: OutputFolder) -> tuple[Path, Path, Path, Path]:
        """Every file kept for the batch: class sums, half-set sums, rows, and the engine's
        own dump of its sums where it keeps one (cisTEM's refine2d)."""
        return (self.sums_path(output), self.halves_path(output), self.rows_path(output),
                self.dump_path(output))


@dataclass(frozen=True)
class UpdatePlan:
    """What one update classifies: every batch of the classes in order, those of
    ``classify`` (new and re-visited, their ``aligned`` already this update's cycle) among
    them; counts for the log and the record; the re-visit credit carried on."""

    batches: tuple[Batch, ...]
    classify: frozenset[int]  # starts of the batches classified now
    new_particles: int  # particles not in the previous classes
    revisited: int  # particles classified again
    credit: int  # re-visit budget left for the next update
    first: bool  # the previous cycle kept no batches: every particle is classified

    @property
    def classified(self) -> int:
        return sum(b.size for b in self.batches if b.start in self.classify)


def with_classified(plan: UpdatePlan, classified: tuple[int, ...], cycle: int) -> list[Batch]:
    """The plan's batches once the engine has classified those starting at ``classified``
    (the plan's, and any whose kept sums no longer fit)."""
    done = set(classified)
    return [Batch(b.start, b.stop, cycle) if b.start in done else b for b in plan.batches]


def kept_batches(record: CycleRecord | None) -> list[Batch]:
    """The batches a cycle's classes are made of (none unless it was a streaming update)."""
    if record is None:
        return []
    return [Batch(*map(int, row)) for row in record.batches]


def plan_update(previous: CycleRecord, n_particles: int, settings: Settings,
                cycle: int) -> UpdatePlan:
    """The update of ``cycle`` over the first ``n_particles`` particles, continuing from
    ``previous`` (the latest cycle)."""
    kept = kept_batches(previous)
    first = not kept
    covered = kept[-1].stop if kept else 0
    if covered > n_particles:  # the store never shrinks within a generation
        raise SessionError(f"cycle {previous.number}'s classes hold {covered} particles, the "
                           f"store only {n_particles}: start ab initio")
    new_start = covered
    if kept and covered < n_particles and kept[-1].size < SMALL_BATCH_SHARE * \
            settings.stream_every:
        new_start = kept.pop().start  # joins the new particles
    new = _split(new_start, n_particles, settings.stream_every, cycle)
    budget = 0 if first else previous.revisit_credit + round(settings.stream_revisit *
                                                             (n_particles - covered))
    revisit: set[int] = set()
    for batch in sorted(kept, key=lambda b: (b.aligned, b.start)):  # least recently first
        if batch.size > budget:
            break  # kept for the next update, with the credit this one leaves
        revisit.add(batch.start)
        budget -= batch.size
    if not new and not revisit and kept:  # an update asked for with nothing new: re-visit one
        oldest = min(kept, key=lambda b: (b.aligned, b.start))
        revisit.add(oldest.start)
        budget = 0
    largest = max((b.size for b in kept), default=settings.stream_every)
    batches = tuple([Batch(b.start, b.stop, cycle) if b.start in revisit else b for b in kept]
                    + new)
    return UpdatePlan(
        batches=batches,
        classify=frozenset(revisit | {b.start for b in new}),
        new_particles=n_particles - previous.particles if first else n_particles - covered,
        revisited=sum(b.size for b in kept if b.start in revisit),
        credit=min(max(budget, 0), largest),
        first=first,
    )


def plan_revisit(previous: CycleRecord, settings: Settings, cycle: int) -> UpdatePlan:
    """A spare-time update of ``cycle``: no new particles (those waiting have updates of their
    own), the least recently aligned batches of ``previous``'s classes re-visited, as many as a
    regular update classifies (``(1 + stream_revisit) × stream_every`` particles, at least
    one batch): sized so that an update due meanwhile waits no longer than behind a regular
    one. The re-visit credit is carried on untouched."""
    kept = kept_batches(previous)
    if not kept:
        raise SessionError(f"cycle {previous.number} is no streaming update: nothing to "
                           "re-visit")
    budget = round((1 + settings.stream_revisit) * settings.stream_every)
    revisit: set[int] = set()
    for batch in sorted(kept, key=lambda b: (b.aligned, b.start)):  # least recently first
        if revisit and batch.size > budget:
            break
        revisit.add(batch.start)
        budget -= batch.size
    return UpdatePlan(
        batches=tuple(Batch(b.start, b.stop, cycle) if b.start in revisit else b for b in kept),
        classify=frozenset(revisit), new_particles=0,
        revisited=sum(b.size for b in kept if b.start in revisit),
        credit=previous.revisit_credit, first=False)


def spare_revisit_due(records: list[CycleRecord], settings: Settings) -> bool:
    """Whether an idle engine should re-visit older batches now (:func:`plan_revisit`) rather
    than wait for new particles: ``records`` (the current particles', oldest first) end with a
    streaming update, and some batch of its classes was last aligned no later than the latest
    update that took in new particles, i.e. against classes that lacked some particle they
    now hold. One sweep over every batch after each regular update, then the engine rests:
    spare re-visits never run forever once collection ends. ``stream_revisit`` 0 turns them
    off with the rest of the re-visits."""
    if not records or settings.stream_revisit <= 0:
        return False
    kept = kept_batches(records[-1])
    if not kept:
        return False
    grown = max((r.number for r in records if r.block != REVISIT_BLOCK), default=0)
    return min(b.aligned for b in kept) <= grown


def _split(start: int, stop: int, size: int, cycle: int) -> list[Batch]:
    """``start`` to ``stop`` in batches of at most ``size``, as even as they come."""
    count = -(-(stop - start) // size) if stop > start else 0
    edges = [start + round(i * (stop - start) / count) for i in range(count + 1)] if count else []
    return [Batch(a, b, cycle) for a, b in itertools.pairwise(edges)]


def drop_unreferenced(output: OutputFolder, latest: CycleRecord | None) -> int:
    """Delete the kept sums ``latest`` does not name (re-visited batches' old files, a killed
    update's, an older job's). Returns how many went."""
    if not output.stream_sums.is_dir():
        return 0
    keep = {path.name for b in kept_batches(latest) for path in b.paths(output)}
    dropped = 0
    for path in output.stream_sums.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
            dropped += 1
    return dropped


@dataclass(frozen=True)
class KeepingUp:
    """Whether the classes keep up with the microscope: the particles in the latest classes of
    those imported, the rest waiting (backlog), how long particles took from their stack
    being written to being in published classes (seconds; None where times are unknown), and
    how long ago the least recently aligned batch was classified."""

    in_classes: int
    imported: int
    latest_latency: float | None  # the longest wait among the latest cycle's new particles
    p50: float | None  # over the particles published in the hour before the latest cycle
    p99: float | None
    oldest_alignment: float | None  # seconds before the latest cycle ended

    @property
    def backlog(self) -> int:
        return self.imported - self.in_classes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the backlog with the rest (the page's Keeping up panel)."""
        return {**asdict(self), "backlog": self.backlog}

    def lines(self) -> list[str]:
        out = [f"streaming: {self.in_classes:,} of {self.imported:,} particles in the classes, "
               f"{self.backlog:,} waiting"]
        if self.latest_latency is not None:
            hour = (f"; over the last hour p50 {_minutes(self.p50)}, p99 {_minutes(self.p99)}"
                    if self.p50 is not None else "")
            out.append(f"latency (stack written to particles in the classes): latest cycle up "
                       f"to {_minutes(self.latest_latency)}{hour}")
        if self.oldest_alignment is not None:
            out.append(f"the least recently aligned particles were classified "
                       f"{_minutes(self.oldest_alignment)} before the latest update")
        return out


def keeping_up(records: list[CycleRecord], written: np.ndarray) -> KeepingUp | None:
    """:class:`KeepingUp` from the cycle records of the current particles (oldest first) and
    each particle's time of writing (``written``, seconds since the epoch, NaN where unknown;
    :func:`live2d.forecast.particle_times`). A particle's latency ends with the first cycle
    whose particles include it. None without records."""
    if not records:
        return None
    latest = records[-1]
    reach = np.maximum.accumulate(np.array([r.particles for r in records]))
    finished = np.array([r.finished for r in records])
    published = len(written) if len(written) < reach[-1] else int(reach[-1])
    first = np.searchsorted(reach, np.arange(published), side="right")
    latency = finished[first] - written[:published]
    known = np.isfinite(latency)
    before = int(reach[-2]) if len(reach) > 1 else 0
    newest = latency[before:published][known[before:published]]
    recent = known & (finished[first] >= latest.finished - 3600.0)
    batches = kept_batches(latest)
    by_number = {r.number: r.finished for r in records}
    aligned = [by_number[b.aligned] for b in batches if b.aligned in by_number]
    return KeepingUp(
        in_classes=sum(latest.class_counts),
        imported=len(written),
        latest_latency=float(newest.max()) if len(newest) else None,
        p50=float(np.percentile(latency[recent], 50)) if recent.any() else None,
        p99=float(np.percentile(latency[recent], 99)) if recent.any() else None,
        oldest_alignment=latest.finished - min(aligned) if aligned else None,
    )


def session_keeping_up(folder: str | Path, history: list[CycleRecord]) -> KeepingUp | None:
    """:func:`keeping_up` of the session in ``folder`` whose cycle records are ``history``
    (every generation's, oldest first), as ``live2d status`` and the page say it: None unless
    its latest cycle is a streaming update. Reads the store's table (O(particles)), changing
    nothing; raises OSError or ValueError while the store is being replaced."""
    # Imported here: the times come with the yield tables' imports, which need not load
    # wherever a batch is planned.
    from live2d.forecast import particle_times
    from live2d.store import read_committed_table

    if not history or history[-1].job_type != "stream":
        return None
    table = read_committed_table(folder)
    current = [r for r in history if r.generation == history[-1].generation]
    return keeping_up(current, particle_times(table)[0])


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
