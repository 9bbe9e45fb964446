"""A session's state: ``session.json`` (settings, the job in progress, counters), typed in memory,
saved atomically after every change, and opened with its cycle history.

Opening migrates what older versions wrote (version 1 kept the history inside session.json: it
moves to ``history.jsonl``) and catches a job up with its history (a kill between recording a
cycle and saving the job's progress would otherwise run that cycle twice).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live2d.atomic import atomic_write_json
from live2d.errors import SessionError, SettingsError
from live2d.history import CycleHistory, records_of
from live2d.output_folder import OutputFolder
from live2d.schedule import CycleSpec, Settings

STATE_VERSION = 2  # 2: the history moved to history.jsonl
MAX_CYCLE_FAILURES = 3


@dataclass
class JobState:
    """A classification job under way: its plan of cycles (:class:`CycleSpec` as dicts, as
    session.json keeps them), the index of the next one to run, and the failures in a row of
    that cycle."""

    number: int
    job_type: str
    plan: list[dict[str, Any]]
    next_index: int = 0
    failures: int = 0
    # The particles the job classifies: those imported when it started (None: a job begun by
    # a version that took every particle imported by each cycle's start). Particles arriving
    # during the job wait for the next one, so a job's cycles cost the same from first to last.
    particles: int | None = None

    def spec(self, index: int) -> CycleSpec:
        return CycleSpec(**self.plan[index])

    @property
    def finished(self) -> bool:
        return self.next_index >= len(self.plan)


@dataclass
class SessionState:
    """What ``session.json`` holds, typed: where particles come from, the settings (every change
    validated: :meth:`change_settings`), the job in progress, and what the automatic loop needs
    to know after a restart."""

    warp_dir: str
    settings: Settings
    star: str = ""  # the particle star named with --star ("": the folder's layout decides)
    # The EPU session folder named with --epu, for grid squares ("": only the movie paths say).
    epu_dir: str = ""
    # Where alerts are sent (--notify: http(s) URLs, mailto: addresses; live2d.notify) and the
    # mail server for the mailto: ones (--smtp HOST[:PORT], --smtp-from).
    notify: list[str] = field(default_factory=list)
    smtp: str = ""
    smtp_from: str = ""
    job: JobState | None = None
    jobs_started: int = 0
    particles_at_last_job: int | None = None
    automatic: bool = False
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form session.json keeps."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["settings"] = self.settings.to_dict()
        values["job"] = dataclasses.asdict(self.job) if self.job else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SessionState:
        """Raises TypeError, ValueError or AttributeError for what no version wrote; raises
        SettingsError for settings that do not validate."""
        values = {**values, "version": STATE_VERSION}
        if "settings" not in values:
            raise TypeError("no settings")
        job = values.get("job")
        values["job"] = JobState(**job) if job else None
        values["settings"] = Settings.from_dict(values["settings"])
        return cls(**values)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    def change_settings(self, values: dict[str, Any]) -> Settings:
        """The one writer of the settings: ``values`` validated over the current ones (raises
        SettingsError with a message for the user); the caller saves the state."""
        self.settings = Settings.from_dict(values, base=self.settings)
        return self.settings

    def catch_up(self, history: CycleHistory) -> None:
        """Move the job past the cycles its history already records (a kill between recording
        a cycle and saving the job's progress), rather than run one again."""
        if self.job is None:
            return
        done = [r.job_cycle for r in history.records if r.job == self.job.number]
        if done and max(done) > self.job.next_index:
            self.job.next_index = max(done)
            self.job.failures = 0

    def note_failure(self) -> bool:
        """Count a failure of the job's next cycle; True when that gives the job up (it is
        dropped: the loop retries a failing cycle a few times, not for ever)."""
        if self.job is None:
            return False
        self.job.failures += 1
        if self.job.failures >= MAX_CYCLE_FAILURES:
            self.job = None
            return True
        return False


def open_state(output: OutputFolder, warp_dir: Path,
               settings: Settings | None) -> tuple[SessionState, CycleHistory, bool]:
    """The state and cycle history of the session in ``output`` (a new one when there is none,
    with ``settings`` or the defaults; given ``settings`` replace a resumed session's).
    Returns (state, history, resumed). Raises SessionError when session.json is unreadable."""
    path = output.session_state
    if not path.exists():
        state = SessionState(str(warp_dir), settings or Settings())
        state.save(path)
        return state, CycleHistory(output.root), False
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        older_history = values.pop("history", None)
        if settings is not None:  # given settings replace the stored ones unread
            values["settings"] = settings.to_dict()
        state = SessionState.from_dict(values)
    except SettingsError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise SessionError(
            f"{path} is unreadable ({exc}); it is only ever replaced atomically, so something "
            "else wrote it: restore it or move it away") from None
    if older_history is not None:  # an earlier version's session: the history moves out
        history = CycleHistory.replace(output.root, records_of(older_history, path))
        state.save(path)
    else:
        history = CycleHistory(output.root)
    state.catch_up(history)
    return state, history, True


def read_state(output: OutputFolder) -> SessionState | None:
    """The state of the session in ``output`` for a reader (a summary, a status), changing
    nothing; None where there is no session or its state cannot be read."""
    try:
        values = json.loads(output.session_state.read_text(encoding="utf-8"))
        values.pop("history", None)
        return SessionState.from_dict(values)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None
