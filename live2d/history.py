"""Every cycle's record in an append-only file, so that a cycle costs the same on day three as
on day one.

``history.jsonl`` holds one JSON object per line: a finished cycle's record (a
:class:`live2d.session.CycleRecord` as a dict, with its ``number``), or a change to an earlier
record (``{"change": 12, "star_kept": false}``: cycle 12's star was pruned). Appending is one
fsynced write whatever the length of the history; ``session.json`` keeps only what is small
(settings, the job in progress).

A process killed mid-append leaves a torn last line: readers skip it, and the next writer cuts
it off (the cycle it described was never recorded, so it runs again).

Sessions written before this file existed kept the history inside ``session.json``;
:func:`read_history` reads either, and the session moves it here when it opens one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from live2d.atomic import atomic_write_text, cut_torn_line, fsync_dir

HISTORY_FILE = "history.jsonl"
log = logging.getLogger("live2d")


class CycleHistory:
    """The records of ``folder``'s cycles, oldest first, kept in memory and on disk."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / HISTORY_FILE
        if cut_torn_line(self.path):
            log.warning("%s ended in a torn line (a kill mid-write): cut off; that cycle runs "
                        "again", self.path)
        self.records: list[dict[str, Any]] = _parse(self.path)

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict[str, Any]) -> None:
        """Record a finished cycle (durable when this returns)."""
        self._write(record)
        self.records.append(dict(record))

    def change(self, number: int, **values: Any) -> None:
        """Change fields of cycle ``number``'s record."""
        self._write({"change": number, **values})
        _apply_change(self.records, number, values)

    @classmethod
    def replace(cls, folder: str | os.PathLike, records: list[dict[str, Any]]) -> CycleHistory:
        """Write ``records`` as the whole history (moving an old session's history here)."""
        text = "".join(_line(r) for r in records)
        atomic_write_text(Path(folder) / HISTORY_FILE, text)
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


def read_history(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``folder``'s cycles for readers (the status command, an export, the Scipion
    viewer), whether the session keeps them here or, from an older version, in session.json."""
    folder = Path(folder)
    path = folder / HISTORY_FILE
    if path.exists():
        return _parse(path)
    try:
        state = json.loads((folder / "session.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = state.get("history", []) if isinstance(state, dict) else []
    return history if isinstance(history, list) else []


def _parse(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records: list[dict[str, Any]] = []
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
            records.append(value)
    return records


def _apply_change(records: list[dict[str, Any]], number: Any, values: dict[str, Any]) -> None:
    for record in reversed(records):
        if record.get("number") == number:
            record.update(values)
            return


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) + "\n"

