"""How good each class of a cycle is, as the session recorded it, for the protocol's classes and
the viewer's gallery: the cycle's class table (``cycle_NNN_classes.json``, written by
:mod:`live2d.class_quality`) and the selection (:mod:`live2d.selection`). Plain Python, no
Scipion objects."""

from __future__ import annotations

import os
from pathlib import Path

from live2d.errors import SelectionError
from live2d.history import CycleRecord, read_class_table
from live2d.selection import SelectionState, selected


def class_table_by_number(session_dir: str | os.PathLike, record: CycleRecord) -> dict[int, dict]:
    """A cycle's class table by class number; empty if the cycle has none (the random start, or
    a session from before class tables)."""
    return {int(row["number"]): row for row in read_class_table(session_dir, record) or []}


def resolution_text(row: dict | None) -> str:
    """``"12.3 Å"``, ``"≤ 8.0 Å"`` (the estimate reached its box's Nyquist) or ``"–"`` (no
    estimate: fewer than 2 particles)."""
    if not row or row.get("resolution") is None:
        return "–"
    return f"{'≤ ' if row.get('at_limit') else ''}{float(row['resolution']):.1f} Å"


def reason_text(row: dict | None) -> str:
    """The reason for the score without the resolution it may start with (shown beside it):
    "12.3 Å, centred, 4% of particles" -> "centred, 4% of particles"."""
    reason = str((row or {}).get("reason", ""))
    where = resolution_text(row)
    for separator in (", ", ": "):
        if reason.startswith(where + separator):
            return reason[len(where + separator):]
    return reason


def cycle_selection(session_dir: str | os.PathLike, record: CycleRecord) -> set[int]:
    """The classes of a cycle selected as everywhere else: the proposal with the marks over it. The
    marks of an unreadable ``selection.json`` are left out here (the session refuses to go on
    with one and says so)."""
    try:
        state = SelectionState.load(Path(session_dir))
    except SelectionError:
        state = SelectionState()
    return set(selected(record, state))
