"""Every cycle's record in an append-only file, so that a cycle costs the same on day three as
on day one.

``history.jsonl`` holds one JSON object per line: a finished cycle's record (a
:class:`CycleRecord` as a dict, with its ``number``), or a change to an earlier
record (``{"change": 12, "star_kept": false}``: cycle 12's star was pruned). Appending is one
fsynced write whatever the length of the history; ``session.json`` keeps only what is small
(settings, the job in progress).

A process killed mid-append leaves a torn last line: readers skip it, and the next writer cuts
it off (the cycle it described was never recorded, so it runs again).

Sessions written before this file existed kept the history inside ``session.json``;
:func:`read_history` reads either, and the session moves it here when it opens one.

Each cycle's class table (resolution, score and reason per class) is a file of its own, named in
the record; :func:`read_class_table` reads it for every reader.

What is kept of older cycles (:meth:`CycleHistory.prune_results` and
:meth:`CycleHistory.thin_averages`): every record and class table; beyond the latest ``keep``
cycles, the per-particle results only of each job's last cycle (a streaming update is a job of
its own, continued only by the next update), and the class averages of every cycle of the other
jobs but, of the streaming updates, only of the first to finish in each hour of the session
(:data:`AVERAGES_EVERY_SECONDS`) and of those a user acted on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from live2d import cistem_star
from live2d.atomic import atomic_write_text, cut_torn_line, fsync_dir
from live2d.output_folder import (
    HISTORY,
    SESSION_STATE,
    STREAM_SUMS,
    batch_rows_name,
    shares_name,
)

log = logging.getLogger("live2d")

# Beyond the kept window a streaming update keeps its class averages (cycle_NNN.mrc: K x box^2
# float32, 3.3 MB at K = 50 and 128 px) only if it is the first to finish in its hour of the
# session. Per hour rather than per N updates: what one looks back at is a time ("the classes
# two hours ago"), and the update rate varies tenfold (every 4 minutes at 150,000 picks an hour,
# back to back for spare-time re-visits), so per N would keep uneven stretches of time and let
# the disk grow with the rate; per hour it grows with the session's length only (79 MB a day at
# K = 50, 128 px, against 1.2 GB a day at an update every 4 minutes).
AVERAGES_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class CycleRecord:
    """What one finished classification cycle was and left behind: its place in its job, its
    settings, its classes' populations and quality, and the files it wrote. Written once when
    the cycle ends; only whether its star and thumbnails are still kept changes later
    (:meth:`CycleHistory.change`)."""

    number: int  # global cycle number: files cycle_NNN.*
    job: int
    job_type: str
    block: str
    block_cycle: int
    job_cycle: int  # 1-based position within the job
    job_cycles: int
    high_res: float
    fraction: float
    particles: int  # particles in the stack this cycle saw
    class_counts: list[int]
    started: float
    finished: float
    engine: str
    generation: int
    particles_per_second: float
    classes: str  # file names relative to the output folder
    star: str
    thumbnails: str
    # Per class (live2d.class_quality): half-set resolution estimate in Å (None: empty class)
    # and good/junk score; the whole table, with reasons, in ``class_table``. Empty for the
    # random start.
    class_resolution: list[float | None] = field(default_factory=list)
    class_score: list[float] = field(default_factory=list)
    class_table: str = ""
    star_kept: bool = True  # False once the star is pruned (Settings.keep_cycle_results)
    thumbnails_kept: bool = True  # False once pruned (made again from the averages if needed)
    # False once the class averages (``classes``) are thinned: an older streaming update's
    # (CycleHistory.thin_averages); then its thumbnails cannot be made again either.
    averages_kept: bool = True
    # Of ``particles``, those whose source stack changed or vanished since import (read in
    # place): not in this cycle's classes, whatever its fraction.
    left_out: int = 0
    # A streaming update's (live2d.streaming): the batches its classes are made of, as
    # [start, stop, cycle that classified it]; the particles it classified that were not in the
    # previous classes, and those it classified again; the re-visit budget it left.
    batches: list[list[int]] = field(default_factory=list)
    new_particles: int = 0
    revisited: int = 0
    revisit_credit: int = 0
    # Per class, the first cycle whose batches count for it: a class a streaming update
    # re-seeded because it duplicated another counts nothing of the batches classified before
    # (dropped_classes); their particles whose best class it was wait, in no class, until their
    # batch is re-visited (``waiting`` of them). Empty: every batch counts for every class.
    class_valid_from: list[int] = field(default_factory=list)
    waiting: int = 0
    # Classes (1-based) re-seeded: as duplicates (a streaming update), or split from a large
    # class because they held almost no particles (an ab initio job's startup cycle).
    reseeded: list[int] = field(default_factory=list)
    # Seconds from the stacks of the particles new to the classes being written to their being
    # published in them: p50, p99, longest (empty where the times are unknown).
    latency: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CycleRecord:
        """The record a dict describes; keys of no field (a later version's) are ignored, and
        fields added since it was written take their defaults. TypeError if one is missing that
        every version wrote."""
        return cls(**{k: v for k, v in values.items() if k in _FIELDS})

    def to_dict(self, with_batches: bool = True) -> dict[str, Any]:
        """The record as JSON-ready values: the history's lines, and (without a streaming
        update's list of batches, which grows with the session: only their number) the
        pages' cycles."""
        values = dataclasses.asdict(self)
        if not with_batches:
            values["batches"] = len(self.batches)
        return values

    @property
    def streamed(self) -> bool:
        """A streaming update's: its particles' parameters are kept per batch
        (:func:`particle_table`), not in a star of its own."""
        return bool(self.batches)

    @property
    def assessed(self) -> bool:
        """Whether the cycle's classes have a resolution estimate and a score (not so for the
        random start, nor in sessions from before class quality)."""
        return bool(self.class_score)


_FIELDS = frozenset(f.name for f in dataclasses.fields(CycleRecord))


class CycleHistory:
    """The records of ``folder``'s cycles, oldest first, kept in memory and on disk."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / HISTORY
        if cut_torn_line(self.path):
            log.warning("%s ended in a torn line (a kill mid-write): cut off; that cycle runs "
                        "again", self.path)
        self.records: list[CycleRecord] = _parse(self.path)
        self._pruned_to = 0  # records before this one were pruned as far as they will be
        self._thinned_to = 0  # and had their averages thinned as far as they will be

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: CycleRecord) -> None:
        """Record a finished cycle (durable when this returns)."""
        self._write(record.to_dict())
        self.records.append(record)

    def change(self, number: int, **values: Any) -> None:
        """Change fields of cycle ``number``'s record."""
        self._write({"change": number, **values})
        _apply_change(self.records, number, values)

    def prune_results(self, keep: int) -> list[int]:
        """Beyond the latest ``keep`` cycles, delete the per-particle stars, except each job's
        last cycle (the one a later job continues from; not so for streaming updates, one job
        each, which only the next update continues from), and the thumbnails (the page makes
        them again from the cycle's averages when someone looks: live2d.server). Returns the
        cycles whose stars were deleted. Only the cycles that left the kept window since the
        last call are looked at: its cost does not grow with the session."""
        folder = self.path.parent
        pruned = []
        end = max(0, len(self.records) - keep)
        for index in range(min(self._pruned_to, end), end):
            record = self.records[index]
            later = self.records[index + 1] if index + 1 < len(self.records) else None
            last_of_job = later is None or later.job != record.job
            changes = {}
            if record.thumbnails_kept:
                changes["thumbnails_kept"] = False
            if record.star_kept and not (last_of_job and not record.streamed):
                changes["star_kept"] = False
            if not changes:
                continue
            # Recorded first: a kill between the two leaves files no record points at.
            self.change(record.number, **changes)
            if "star_kept" in changes:  # the shares are of the rows pruned with it
                (folder / shares_name(record.number)).unlink(missing_ok=True)
            if "star_kept" in changes and record.star:
                (folder / record.star).unlink(missing_ok=True)
                pruned.append(record.number)
            shutil.rmtree(folder / record.thumbnails, ignore_errors=True)
        self._pruned_to = max(self._pruned_to, end)
        if pruned:
            log.debug("per-particle results of cycle(s) %s pruned (keeping the latest %d)",
                      ", ".join(map(str, pruned)), keep)
        return pruned

    def thin_averages(self, keep: int, acted_on: Collection[int] = ()) -> list[int]:
        """Beyond the latest ``keep`` cycles (and never the latest), delete the class averages
        of the streaming updates but the first to finish in each hour of the session
        (:data:`AVERAGES_EVERY_SECONDS`) and those in ``acted_on`` (cycles a user acted on:
        :func:`live2d.selection.acted_on_cycles`, as they are when the update leaves the
        window, and again when the history is next opened: this walks it once then).
        Every other job's cycles keep theirs, and so does every cycle its record and class
        table. Returns the cycles thinned. Only the cycles that left the window since the last
        call are looked at, each against the one before it: the cost does not grow with the
        session."""
        folder = self.path.parent
        thinned = []
        end = max(0, min(len(self.records) - keep, len(self.records) - 1))
        for index in range(min(self._thinned_to, end), end):
            record = self.records[index]
            if (not record.averages_kept or not record.streamed or record.number in acted_on
                    or index == 0 or self._hour(record) != self._hour(self.records[index - 1])):
                continue
            # Recorded first: a kill between the two leaves a file no record points at, never
            # a record pointing at a missing file.
            self.change(record.number, averages_kept=False)
            averages = folder / record.classes
            averages.unlink(missing_ok=True)
            link = averages.with_suffix(".mrcs")  # the Scipion plugin's name for them
            if link.is_symlink():
                link.unlink(missing_ok=True)
            thinned.append(record.number)
        self._thinned_to = max(self._thinned_to, end)
        if thinned:
            log.debug("class averages of streaming update(s) %s thinned (keeping the latest %d "
                      "and one an hour)", ", ".join(map(str, thinned)), keep)
        return thinned

    def _hour(self, record: CycleRecord) -> int:
        """The hour of the session ``record`` finished in, counted from the first cycle's
        start."""
        return int((record.finished - self.records[0].started) // AVERAGES_EVERY_SECONDS)

    @classmethod
    def replace(cls, folder: str | os.PathLike, records: list[CycleRecord]) -> CycleHistory:
        """Write ``records`` as the whole history (moving an old session's history here)."""
        text = "".join(_line(r.to_dict()) for r in records)
        atomic_write_text(Path(folder) / HISTORY, text)
        return cls(folder)

    def _write(self, value: dict[str, Any]) -> None:
        created = not self.path.exists()
        with open(self.path, "ab") as handle:
            start = handle.tell()
            try:
                handle.write(_line(value).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:  # a full disk: leave no fragment for the next line to follow
                handle.truncate(start)
                raise
        if created:
            fsync_dir(self.path.parent)


def read_history(folder: str | os.PathLike) -> list[CycleRecord]:
    """The records of ``folder``'s cycles for readers (the status command, an export, the Scipion
    viewer), whether the session keeps them here or, from an older version, in session.json."""
    folder = Path(folder)
    path = folder / HISTORY
    if path.exists():
        return _parse(path)
    try:
        state = json.loads((folder / SESSION_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = state.get("history", []) if isinstance(state, dict) else []
    return records_of(history, folder / SESSION_STATE) if isinstance(history, list) else []


def records_of(values: list[Any], source: str | os.PathLike) -> list[CycleRecord]:
    """The records of an earlier version's history (the list in its ``session.json``), leaving
    out, with a warning, what is not one."""
    records = []
    for value in values:
        record = _record(value, source)
        if record is not None:
            records.append(record)
    return records


def read_class_table(folder: str | os.PathLike, record: CycleRecord) -> list[dict] | None:
    """Cycle ``record``'s class table (``live2d.class_quality``: one dict per class, with its
    resolution, score and reason), None if it has none (the random start, a session from before
    class tables, a file gone). Raises OSError for a file that cannot be read and ValueError for
    one that is not a table."""
    if not record.class_table:
        return None
    try:
        text = (Path(folder) / record.class_table).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    table = json.loads(text)
    if not isinstance(table, list):
        raise ValueError(f"{record.class_table} is not a list of classes")
    return table


def nearest_averages(records: list[CycleRecord], number: int) -> CycleRecord | None:
    """Of ``records``, the one nearest to cycle ``number`` whose class averages are kept (the
    later of two as near); None if none is."""
    kept = [r for r in records if r.averages_kept and r.number != number]
    return min(kept, key=lambda r: (abs(r.number - number), -r.number), default=None)


def thinned_words(records: list[CycleRecord], record: CycleRecord) -> str:
    """What every reader says of a cycle whose averages were thinned
    (:meth:`CycleHistory.thin_averages`), naming the nearest cycle that has them."""
    nearest = nearest_averages(records, record.number)
    return (f"The class averages of cycle {record.number} (a streaming update) were thinned to "
            "save disk: beyond the latest cycles, one streaming update an hour keeps them"
            + (f"; nearest kept: cycle {nearest.number}" if nearest is not None else ""))


def _record(value: Any, source: str | os.PathLike) -> CycleRecord | None:
    if isinstance(value, dict):
        try:
            return CycleRecord.from_dict(value)
        except TypeError:
            pass
    log.warning("a value in %s is not a cycle's record (something else wrote it): skipped",
                source)
    return None


def _parse(path: Path) -> list[CycleRecord]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records: list[CycleRecord] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # torn: being written now, or cut off when the writer next opens it
    for number, line in enumerate(lines, start=1):
        try:
            value = json.loads(line)
        except ValueError:
            log.warning("line %d of %s is not JSON (something else wrote it): skipped",
                        number, path)
            continue
        if isinstance(value, dict) and "change" in value:
            _apply_change(records, value.pop("change"), value)
        elif isinstance(value, dict):
            record = _record(value, f"line {number} of {path}")
            if record is not None:
                records.append(record)
    return records


def _apply_change(records: list[CycleRecord], number: Any, values: dict[str, Any]) -> None:
    known = {k: v for k, v in values.items() if k in _FIELDS}  # a later version's: ignored
    for index in range(len(records) - 1, -1, -1):
        if records[index].number == number:
            records[index] = dataclasses.replace(records[index], **known)
            return


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) + "\n"



def particle_results_kept(folder: str | os.PathLike, record: CycleRecord) -> bool:
    """Whether ``record``'s per-particle parameters can still be read: its star, unless pruned;
    a streaming update's batches' rows, which the next update that re-visits a batch
    replaces (so only the latest update's are sure to be kept)."""
    folder = Path(folder)
    if not record.streamed:
        return record.star_kept and (folder / record.star).is_file()
    return all((folder / STREAM_SUMS / batch_rows_name(start, cycle)).is_file()
               for start, _, cycle in record.batches)


def particle_table(folder: str | os.PathLike, record: CycleRecord) -> pd.DataFrame:
    """``record``'s per-particle parameters, one row per particle of the cycle (cisTEM's short
    column names): its star, or a streaming update's batches' rows put together (O(particles):
    made when asked, never by the update). Raises StarFormatError when they are not kept
    (:func:`particle_results_kept`) or not readable."""
    folder = Path(folder)
    if not record.streamed:
        return cistem_star.read_star(folder / record.star)
    # A batch's rows file is not changed once published (a re-visit writes a new one): parsed
    # once and kept for the next call, so reading an update's table parses only what the
    # update wrote. Keyed by size and time too: a cycle run again after a kill rewrites its own.
    global _BATCH_ROWS
    keys = []
    for start, _, cycle in record.batches:
        path = folder / STREAM_SUMS / batch_rows_name(start, cycle)
        try:
            stat = path.stat()
        except OSError as exc:
            raise cistem_star.StarFormatError(f"cannot read {path}: {exc}") from None
        keys.append((path, stat.st_size, stat.st_mtime_ns))
    known = _BATCH_ROWS  # one dict throughout: another thread may replace it meanwhile
    tables = {key: known[key] if key in known else cistem_star.read_star(key[0])
              for key in keys}
    _BATCH_ROWS = tables
    parts = []
    for key, (_, _, cycle) in zip(keys, record.batches, strict=True):
        rows = tables[key]
        dropped = [c + 1 for c in dropped_classes(record.class_valid_from, cycle)]
        if dropped:  # waiting: unused, as cisTEM marks them, their old class kept negative
            rows = rows.copy()
            waiting = rows["2DCLS"].isin(dropped)
            rows.loc[waiting, "2DCLS"] = -rows.loc[waiting, "2DCLS"]
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def dropped_classes(valid_from: list[int], aligned: int) -> list[int]:
    """The classes (0-based) a streaming batch classified in cycle ``aligned`` counts nothing
    for, by a record's ``class_valid_from``: those re-seeded after it was classified."""
    return [c for c, since in enumerate(valid_from) if aligned < since]


# The batches' rows last read by particle_table, by (path, size, modification time).
_BATCH_ROWS: dict[tuple[Path, int, int], pd.DataFrame] = {}


def write_particle_star(folder: str | os.PathLike, record: CycleRecord, path: Path) -> Path:
    """``record``'s per-particle parameters as one cisTEM star at ``path`` (written whole)."""
    cistem_star.write_star(path, particle_table(folder, record),
                           [f"cycle {record.number}: every particle's class and alignment"])
    return path
