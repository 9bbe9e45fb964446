"""Which classes are the good particles: the proposal of every cycle with the user's marks over it.

The proposal is every class scored :data:`live2d.class_quality.GOOD_SCORE` or more until the
user marks classes; from then on it is the rule learned from the marks
(:mod:`live2d.learned_proposal`), for the cycle marked and later ones. A mark (good or junk,
from the page, the CLI or Scipion) overrides the proposal for its class and is kept in
``selection.json`` (replaced atomically) for the session, with what it teaches. Class numbers
carry over through seeded and refinement cycles, so marks do too, except on a class that was
re-seeded (emptied, or duplicating another in a streaming update). An ab initio job makes new
classes: each mark moves to the most similar new class (rotation-invariant correlation of the
averages) where one is similar enough, and what was carried and what was dropped is recorded
for the page to say.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from live2d.atomic import atomic_write_json
from live2d.class_quality import GOOD_SCORE
from live2d.errors import SelectionError
from live2d.history import CycleHistory, CycleRecord
from live2d.learned_proposal import Example, cycle_table, features_of, learned
from live2d.mrc import read_images
from live2d.output_folder import SELECTION, SELECTION_LOCK

if TYPE_CHECKING:
    from live2d.export import Exported

SIMILAR_ENOUGH = 0.7  # rotation-invariant correlation for a mark to move to a new class
MARKS = ("good", "junk")
log = logging.getLogger("live2d")


@dataclass
class SelectionState:
    """``selection.json``: the user's marks and the cycle their class numbers refer to, what the
    last ab initio job carried or dropped, and the exports made (changed only through
    :meth:`updating`, under a file lock)."""

    cycle: int = -1  # the cycle the marks' class numbers refer to
    job: int = -1
    marks: dict[str, str] = field(default_factory=dict)  # class number -> "good" | "junk"
    carried: list[list[int]] = field(default_factory=list)  # [old, new] at the last ab initio
    dropped: list[int] = field(default_factory=list)  # marks that found no similar new class
    exports: list[dict] = field(default_factory=list)  # what was exported, latest last
    examples: list[dict] = field(default_factory=list)  # the marks the proposal learns from
    # Where it was loaded from: the class tables the learned proposal reads are there (not
    # saved; a state made in memory has none, and its marks teach nothing).
    folder: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    @contextlib.contextmanager
    def updating(cls, folder: Path) -> Iterator[SelectionState]:
        """Load, let the caller change, save: under a file lock, so that the page's marks, a
        cycle's carrying over and an export from the command line never lose each other's
        change."""
        with open(Path(folder) / SELECTION_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = cls.load(folder)
                yield state
                state.save(folder)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @classmethod
    def load(cls, folder: Path) -> SelectionState:
        path = Path(folder) / SELECTION
        if not path.exists():
            return cls(folder=Path(folder))
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            state = cls(**{k: v for k, v in values.items() if k != "folder"}, folder=Path(folder))
            state.learned_examples()  # checked here, not at each use
            return state
        except (ValueError, TypeError, KeyError) as exc:
            raise SelectionError(f"{path} is unreadable ({exc}); it is only replaced "
                                 "atomically: restore it or move it away") from None

    def save(self, folder: Path) -> None:
        values = asdict(self)
        del values["folder"]
        atomic_write_json(Path(folder) / SELECTION, values)
        self.folder = Path(folder)

    def learned_examples(self) -> tuple[Example, ...]:
        """The marks the proposal learns from (:mod:`live2d.learned_proposal`)."""
        return tuple(Example.from_dict(values) for values in self.examples)

    def _keep_examples(self, examples: list[Example]) -> None:
        self.examples = [example.to_dict() for example in examples]


def acted_on_cycles(state: SelectionState) -> set[int]:
    """The cycles a user acted on, whose class averages are kept whatever their age
    (:meth:`live2d.history.CycleHistory.thin_averages`): the one the marks refer to (the
    curation and a carried mark read it), each one marked that the learned proposal learns
    from, and each one exported."""
    cycles = {state.cycle, *(example.cycle for example in state.learned_examples())}
    cycles.update(int(export["cycle"]) for export in state.exports
                  if isinstance(export.get("cycle"), int))
    cycles.discard(-1)
    return cycles


def proposed(record: CycleRecord, state: SelectionState | None = None) -> list[int]:
    """Classes proposed as good (1-based): those the cycle's scores propose or, from the cycle
    of the first mark that teaches on (``state``'s), those the rule learned from the marks
    proposes."""
    examples = state.learned_examples() if state is not None else ()
    if examples and state is not None and state.folder is not None \
            and record.number >= min(example.cycle for example in examples):
        table = cycle_table(state.folder, record)
        if table is not None:
            return learned(record, table, examples)
    return scores_propose(record)


def scores_propose(record: CycleRecord) -> list[int]:
    """Classes a cycle's scores propose as good (1-based), whatever the marks taught."""
    return [k + 1 for k, score in enumerate(record.class_score) if score >= GOOD_SCORE]


def selected(record: CycleRecord, state: SelectionState) -> list[int]:
    """The selection used everywhere: the proposal with the marks over it (marks apply to the
    cycle they were carried to)."""
    chosen = set(proposed(record, state))
    if state.cycle == record.number:
        for number, mark in state.marks.items():
            (chosen.add if mark == "good" else chosen.discard)(int(number))
    return sorted(chosen)


def selected_particles(record: CycleRecord, classes: list[int]) -> int:
    counts = record.class_counts
    return int(sum(counts[k - 1] for k in classes if 1 <= k <= len(counts)))


def good_particles_history(history: list[CycleRecord], state: SelectionState) -> list[dict]:
    """Per cycle with scores: particles imported and particles in the selected classes (the
    answer to "do we have enough?")."""
    return [{"cycle": r.number, "imported": r.particles,
             "good": selected_particles(r, selected(r, state))}
            for r in history if r.assessed]


def mark(state: SelectionState, record: CycleRecord, marks: dict) -> None:
    """Apply ``{class number: "good" | "junk" | None}`` to the latest cycle ``record``. Each mark
    is also an example the proposal learns from (where the state has a folder with the cycle's
    class table); one put back to the proposal (None), or changed, no longer teaches."""
    n_classes = len(record.class_counts)
    for number, value in marks.items():
        try:
            k = int(number)
        except (TypeError, ValueError):
            raise SelectionError(f"class {number!r} is not a class number") from None
        if not 1 <= k <= n_classes:
            raise SelectionError(f"there is no class {k}: cycle {record.number} has classes "
                                 f"1 to {n_classes}")
        if value is not None and value not in MARKS:
            raise SelectionError(f"a class is marked good, junk or null, not {value!r}")
    if state.cycle != record.number:
        state.cycle, state.job = record.number, record.job
    table = cycle_table(state.folder, record) if state.folder is not None else None
    features = features_of(table, record.high_res) if table is not None else [None] * n_classes
    examples = list(state.learned_examples())
    for number, value in marks.items():
        k = int(number)
        examples = [example for example in examples if example.now != k]
        if value is None:
            state.marks.pop(str(k), None)
            continue
        state.marks[str(k)] = value
        if features[k - 1] is not None:
            examples.append(Example(record.number, k, features[k - 1], value, k))
    state._keep_examples(examples)


def follow_cycle(state: SelectionState, previous: CycleRecord | None, record: CycleRecord,
                 old_averages: np.ndarray | None, new_averages: np.ndarray,
                 mask_radius_px: float) -> None:
    """Move the marks onto a new cycle's classes (see the module's docstring)."""
    if not state.marks or state.cycle == record.number:
        state.cycle, state.job = record.number, record.job
        return
    new_job = record.job != state.job
    if new_job and record.job_type == "abinit" and old_averages is not None:
        # here, not at the top: imaging imports torch, which the Scipion plugin (importing
        # this module in every Scipion process) does not otherwise need
        from live2d.imaging import rotational_similarity

        marked = sorted(int(n) for n in state.marks)
        similarity = rotational_similarity(old_averages[[k - 1 for k in marked]], new_averages,
                                           mask_radius_px)
        marks, carried, dropped = {}, [], []
        for row, old in enumerate(marked):
            best = int(similarity[row].argmax())
            if similarity[row, best] >= SIMILAR_ENOUGH and str(best + 1) not in marks:
                marks[str(best + 1)] = state.marks[str(old)]
                carried.append([old, best + 1])
            else:
                dropped.append(old)
        state.marks, state.carried, state.dropped = marks, carried, dropped
        moved = dict(map(tuple, carried))
        state._keep_examples([replace(example, now=moved.get(example.now))
                              for example in state.learned_examples()])
    elif previous is not None:
        # a class emptied in the previous cycle was re-seeded, and so was one a streaming
        # update found duplicating another: it is another class now
        counts = previous.class_counts
        emptied = [n for n in state.marks if int(n) in record.reseeded
                   or (int(n) <= len(counts) and counts[int(n) - 1] == 0)]
        for number in emptied:
            del state.marks[number]
        state._keep_examples([replace(example, now=None) if str(example.now) in emptied
                              else example for example in state.learned_examples()])
        if new_job:  # what the last ab initio restart carried is said until the next job
            state.carried, state.dropped = [], []
        state.dropped = sorted({*state.dropped, *(int(n) for n in emptied)})
    state.cycle, state.job = record.number, record.job


class ClassSelection:
    """One session's selection as every face shows it: the latest scored cycle's proposal with
    the user's marks over it (``selection.json``), carried onto each new cycle, and the exports
    made from it. Safe from any thread (under the session's ``lock``); ``on_change(summary)`` is
    told of every mark and export."""

    def __init__(self, folder: Path, history: CycleHistory, lock: threading.RLock,
                 on_change: Callable[[dict[str, Any]], None]) -> None:
        self.folder = folder
        self._history = history
        self._lock = lock
        self._on_change = on_change
        self.state = SelectionState.load(folder)

    def latest_scored(self) -> CycleRecord | None:
        """The latest cycle that has class scores (the one the selection refers to)."""
        with self._lock:
            return next((r for r in reversed(self._history.records) if r.assessed), None)

    def summary(self, whole_history: bool = True) -> dict[str, Any]:
        """The proposal with the user's marks over it; ``whole_history`` False: its
        good-particle history holds only the latest cycle (what a page that has the rest
        needs)."""
        record = self.latest_scored()
        with self._lock:
            state = self.state
            learning = {"examples": len(state.examples), "changed": []}
            if record is None:
                return {"cycle": None, "classes": [], "particles": 0, "proposed": [],
                        "marks": {}, "carried": [], "dropped": [], "exports": state.exports,
                        "history": [], "learned": learning}
            classes = selected(record, state)
            marks = dict(state.marks) if state.cycle == record.number else {}
            proposal = proposed(record, state)
            learning["changed"] = changed_proposals(scores_propose(record), proposal, marks)
            return {"cycle": record.number, "classes": classes,
                    "particles": selected_particles(record, classes),
                    "proposed": proposal, "learned": learning, "marks": marks,
                    "carried": state.carried, "dropped": state.dropped,
                    "exports": state.exports,
                    "history": good_particles_history(
                        self._history.records if whole_history else [record], state)}

    def mark_classes(self, marks: dict) -> dict[str, Any]:
        """Mark classes of the latest cycle good or junk (None: back to the proposal); returns
        the summary, with ``changed``: the unmarked classes whose proposal these marks changed
        (what the proposal learned from them, also logged). Raises SelectionError with a
        message for the user."""
        record = self.latest_scored()
        if record is None:
            raise SelectionError("no classified cycle yet: nothing to mark")
        with self._lock, SelectionState.updating(self.folder) as state:
            before = proposed(record, state)
            mark(state, record, marks)
            self.state = state
            changed = changed_proposals(before, proposed(record, state), state.marks)
        if changed:
            log.info(f"class marks: {describe_changed(changed)} after your marks on cycle "
                     f"{record.number} (learned from {len(state.examples)} marks)")
        summary = self.summary()
        self._on_change(summary)
        return {**summary, "changed": changed}

    def export(self, to: str | Path, classes: str | list[int] = "auto",
               cycle: int | None = None) -> Exported:
        """:func:`live2d.export.export_particles` of this folder; the summary then lists the
        export. Raises SelectionError with a message."""
        from live2d.export import export_particles  # the export reads this module's state

        exported = export_particles(self.folder, to, classes, cycle)
        with self._lock:
            self.state = SelectionState.load(self.folder)  # the export is recorded
        self._on_change(self.summary())
        return exported

    def follow(self, record: CycleRecord, previous: CycleRecord | None,
               mask_radius_px: float) -> None:
        """Carry the marks onto ``record``, a new scored cycle not recorded yet, whose averages
        are published (see the module's docstring)."""
        with SelectionState.updating(self.folder) as state:
            old = next((r for r in reversed(self._history.records) if r.number == state.cycle),
                       None)
            old_averages = (read_images(self.folder / old.classes)
                            if old is not None and old.averages_kept else None)
            follow_cycle(state, previous, record, old_averages,
                         read_images(self.folder / record.classes), mask_radius_px)
            self.state = state
        if (previous is None or record.job != previous.job) and (state.carried or state.dropped):
            log.info(f"class marks: carried {state.carried or 'none'} (old -> new), "
                     f"dropped {state.dropped or 'none'}")
        if state.examples:
            changed = changed_proposals(scores_propose(record), proposed(record, state),
                                        state.marks)
            log.info(f"cycle {record.number}: the proposal learned from {len(state.examples)} "
                     "marks " + (f"differs from the scores' for {_classes(changed)}" if changed
                                 else "agrees with the scores'"))


def changed_proposals(before: list[int], after: list[int], marks: dict[str, str]) -> list[int]:
    """The unmarked classes proposed in one of ``before`` and ``after`` but not the other."""
    return sorted(k for k in set(before) ^ set(after) if str(k) not in marks)


def describe_changed(changed: list[int]) -> str:
    """``"2 proposals changed (classes 5, 8)"``, as the log and the page's reply say it."""
    return f"{len(changed)} proposal{'s' if len(changed) != 1 else ''} changed" + (
        f" ({_classes(changed)})" if changed else "")


def _classes(numbers: list[int]) -> str:
    return f"class{'es' if len(numbers) != 1 else ''} {', '.join(map(str, numbers))}"
