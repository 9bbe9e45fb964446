"""A read-only view of a session another process is classifying: what the web page shows of a
folder whose ``session.lock`` is held (:mod:`live2d.session_lock`), so that a page can watch a
``live2d run`` or a Scipion run without taking the folder from it.

It reads only what the writer commits (session.json, history.jsonl without its torn last
line, store.json's count, alerts.json, selection.json, the log) and writes nothing: no store is
opened (opening one cuts back rows not committed yet), work/ is not cleaned, no batch file is
dropped, no torn history line is cut. :meth:`refresh` reads again what changed; whatever would
change the session raises SessionError saying why.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, cast

from live2d.alerts import read_alerts
from live2d.collection_yield import read_grid_map
from live2d.errors import SelectionError, SessionError
from live2d.forecast import forecast_dict, read_forecast
from live2d.history import CycleHistory, CycleRecord, read_history
from live2d.listeners import Listeners
from live2d.output_folder import ALERTS, DEFAULT_OUTPUT, YIELD_TABLES, OutputFolder
from live2d.schedule import Settings
from live2d.selection import ClassSelection, SelectionState
from live2d.session_lock import holder
from live2d.session_state import SessionState, read_state

LOG_LINES_KEPT = 1000
log = logging.getLogger("live2d")


class _Records:
    """What :class:`ClassSelection` reads of a history: its records."""

    def __init__(self, records: list[CycleRecord]) -> None:
        self.records = records


class SessionView(Listeners):
    """The session in ``output_dir`` as the page shows it, read-only; the attributes the web
    server reads of a :class:`live2d.session.Session` (``read_only`` says why it is one)."""

    def __init__(self, warp_dir: str | Path, output_dir: str | Path | None,
                 holder_text: str) -> None:
        self.warp_dir = Path(warp_dir).resolve()
        self.output_dir = Path(output_dir or self.warp_dir / DEFAULT_OUTPUT).resolve()
        self.output = OutputFolder(self.output_dir)
        self.holder_text = holder_text
        self.holder_gone = False
        self._lock = threading.RLock()
        Listeners.__init__(self)
        self.progress: dict[str, Any] | None = None
        self.missing = ""
        self.log_lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._log_read = 0  # bytes of the log read so far
        self._seen: tuple[Any, ...] = ()
        state = read_state(self.output)
        if state is None:
            raise SessionError(f"{self.output.session_state} cannot be read yet (the process "
                               f"classifying into {self.output_dir}, {holder_text}, is "
                               "starting): open the folder again in a moment")
        self.state: SessionState = state
        self._history = _Records(read_history(self.output_dir))
        self.selection = ClassSelection(self.output_dir, cast(CycleHistory, self._history),
                                        self._lock, lambda summary: None)
        self._particles = self._store_count()
        self._alerts = [alert.to_dict() for alert in read_alerts(self.output_dir)]
        self._grid_map = read_grid_map(self.output_dir, self.state.epu_dir or None)
        self._forecast = read_forecast(self.output_dir)
        self._read_log()
        self._seen = self._stamps()

    # ------------------------------------------------------------------ what the page reads
    @property
    def read_only(self) -> str:
        """Why this page cannot change the session, and what to do, in words."""
        if self.holder_gone:
            return (f"The process that was classifying into {self.output_dir} "
                    f"({self.holder_text}) has stopped. This page still only watches: choose "
                    "the folder again with Update Warp Directory (or restart live2d serve) "
                    "to run jobs here.")
        return (f"Watching read-only: {self.output_dir} is being classified by another "
                f"Live2D process ({self.holder_text}). Jobs, settings, marks and exports are "
                "for that process; stop it, then choose the folder again with Update Warp "
                "Directory (or restart live2d serve) to run jobs from this page.")

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def job(self) -> Any:
        return self.state.job

    @property
    def history(self) -> list[CycleRecord]:
        with self._lock:
            return list(self._history.records)

    @property
    def status(self) -> str:
        # The writer's own status is in its memory only: what its committed state implies.
        if self.holder_gone:
            return "stopped"
        if self.state.job is not None:
            return "running"
        return "listening" if self.state.automatic else "stopped"

    def snapshot(self, with_history: bool = True) -> dict[str, Any]:
        with self._lock:
            snapshot = {
                "warp_dir": str(self.warp_dir),
                "output_dir": str(self.output_dir),
                "status": self.status,
                "settings": self.state.settings.to_dict(),
                "particles": self._particles,
                "history": [r.to_dict(with_batches=False) for r in self._history.records],
                "job": _job_dict(self.state),
                "next_mode": self.settings.mode,
                "automatic": self.state.automatic,
                "progress": None,
                "disk": None,
                "alerts": self._alerts,
                "grid_map": self._grid_map,
                "forecast": forecast_dict(self._forecast),
                "read_only": self.read_only,
                "epu_dir": self.state.epu_dir or None,  # the writer's, shown, not editable
            }
        if not with_history:
            del snapshot["history"]
        return snapshot

    # ------------------------------------------------------------------ following the writer
    def refresh(self) -> bool:
        """Read again what the writer changed since the last look (nothing when its files did
        not change); tells the listeners of new log lines, and returns whether anything else
        changed (the page's state is then sent again)."""
        self._read_log()
        gone = holder(self.output_dir) is None
        stamps = self._stamps()
        if stamps == self._seen and gone == self.holder_gone:
            return False
        if gone and not self.holder_gone:
            log.info("the process classifying into %s (%s) has stopped",
                     self.output_dir, self.holder_text)
        self.holder_gone = gone
        state = read_state(self.output)
        with self._lock:
            if state is not None:  # never half-written (replaced atomically): else unchanged
                self.state = state
            self._history.records = read_history(self.output_dir)
            # Unreadable: the marks shown stay as they were until the writer's next save.
            with contextlib.suppress(SelectionError):
                self.selection.state = SelectionState.load(self.output_dir)
            self._particles = self._store_count()
            self._alerts = [alert.to_dict() for alert in read_alerts(self.output_dir)]
            if stamps[-len(YIELD_TABLES):] != self._seen[-len(YIELD_TABLES):]:
                self._grid_map = read_grid_map(self.output_dir, self.state.epu_dir or None)
                self._forecast = read_forecast(self.output_dir)  # written with the tables
            self._seen = stamps
        return True

    def _stamps(self) -> tuple[Any, ...]:
        """The files the page's state comes from, as (size, mtime) each: what refresh compares."""
        stamps = []
        for path in (self.output.session_state, self.output.history, self.output.store_state,
                     self.output.selection, self.output / ALERTS,
                     *(self.output / name for name in YIELD_TABLES.values())):
            try:
                stat = path.stat()
                stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _store_count(self) -> int:
        try:
            values = json.loads(self.output.store_state.read_text(encoding="utf-8"))
            return int(values.get("count", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return self._particles if hasattr(self, "_particles") else 0

    def _read_log(self) -> None:
        """The log lines the writer appended since the last look, each told to the pages."""
        try:
            with open(self.output.log, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._log_read:  # replaced: read it again from the start
                    self._log_read = 0
                handle.seek(self._log_read)
                data = handle.read(size - self._log_read)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read whole next time
        self._log_read += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            self.log_lines.append(line)
            self._emit({"type": "log", "line": line})

    # ------------------------------------------------------------------ refused
    def refuse(self, what: str) -> SessionError:
        """The error for a request that would change the session (``what``, e.g. "start a
        job")."""
        return SessionError(f"cannot {what} from this page: {self.read_only}")

    def request_stop(self, hard: bool = False) -> None:
        """Nothing to stop: no job of this process runs here (the server refuses a page's stop
        with :meth:`refuse`; this is its own shutdown)."""

    def close(self) -> None:
        """Nothing to release: the view holds no lock and no file open."""
        self._listeners.clear()


def _job_dict(state: SessionState) -> dict[str, Any] | None:
    return dataclasses.asdict(state.job) if state.job else None
