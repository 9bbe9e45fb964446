"""What the web page can ask for, validated, and the worker thread that runs jobs.

Framework-free on purpose: the Tornado layer only parses JSON and forwards. Every message is
checked here (command known, fields of the right type, settings through :class:`Settings`), so a
hostile or broken client gets an error reply and nothing else happens.

The selection (the proposal with the user's good/junk marks over it) is the session's: ``mark``
changes it for every page, ``export`` writes its particles into the output folder's
``exports/`` for the page to download. With it go, per class of its cycle, how many particles
the particle curation keeps (:mod:`live2d.curation`), and so how many of the selection's it
keeps: measured on a thread of its own the first time a cycle is asked for (a cycle's first
curation reads its new particles' images), kept for that cycle, and sent to every page when
ready. So is a streaming session's :class:`live2d.streaming.KeepingUp` (latency over the last
hour, how recently the least recently aligned particles were classified), as ``live2d status``
says it: it reads the store's table, so it is measured once per finished cycle, on a thread.

The server may start without a Warp folder (the page's first step is then Update Warp
Directory), and accepts any existing folder under ``warp_root``, Warp's or not yet: a watcher
thread checks it every few seconds and the page's state says what it lacks (``missing``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from live2d.class_quality import GOOD_SCORE
from live2d.curation import session_cycle_curation
from live2d.epu import epu_folder_problem
from live2d.errors import (
    CycleCancelled,
    EngineError,
    SelectionError,
    SessionError,
    SessionInUse,
    SettingsError,
)
from live2d.history import CycleRecord, read_class_table
from live2d.layouts import WARP, detect_layout
from live2d.notify import DeliveryError, check_message, deliver, shown
from live2d.output_folder import EXPORTS, export_name, is_export_name
from live2d.schedule import JOB_LABELS, JOB_TYPES, Settings
from live2d.selection import MARKS, describe_changed
from live2d.session import Session
from live2d.session_view import SessionView
from live2d.streaming import session_keeping_up
from live2d.warp import WarpFolderError, particle_star_path, read_settings

if TYPE_CHECKING:
    from live2d.executors import Executor

log = logging.getLogger("live2d")
Publish = Callable[[dict[str, Any]], None]
COMMANDS = ("get_state", "start_job", "start_automatic", "stop", "set_warp_dir", "ping", "mark",
            "export", "set_notify", "test_notify", "dismiss_alert", "set_epu_dir")
# The fields each command may carry besides "command" and "id" (the older ones share a set).
FIELDS = {"mark": {"classes", "cycle"}, "export": set(),
          "set_notify": {"notify", "smtp", "smtp_from"}, "test_notify": set(),
          "dismiss_alert": {"key"}, "set_epu_dir": {"path"}}
OLDER_FIELDS = {"job_type", "settings", "hard", "path"}
# What each command that changes the session is refused as, on a folder watched read-only.
CHANGES = {"start_job": "start a job", "start_automatic": "start automatic jobs",
           "stop": "stop jobs", "mark": "mark classes", "export": "export particles",
           "set_notify": "change where alerts are sent",
           "test_notify": "send a test notification",
           "dismiss_alert": "dismiss alerts",
           "set_epu_dir": "change the EPU session folder"}
# The web layer runs these off its event loop: an export writes every selected particle's row;
# the notification commands wait on receivers (a test's answer, the old sender's last tries);
# a new EPU folder is listed once (on a share, thousands of acquisition files).
SLOW_COMMANDS = ("export", "set_notify", "test_notify", "set_epu_dir")
MAX_NOTIFY_TARGETS = 20
CLASS_NUMBER = re.compile(r"[1-9][0-9]{0,4}")
MAX_MARKS = 1000
MAX_ALERT_KEY = 200  # keys are a rule and a grid square's id: far shorter
MAX_PATH = 4096  # Linux's PATH_MAX: a longer "path" is no folder's
WATCH_SECONDS = 2.0  # how often the Warp folder is checked for what it lacks


class CommandError(ValueError):
    """A message the server refuses; the text goes back to the page as is."""


class LatestMeasurement:
    """A value measured off the caller's thread (it may read images or the store's table),
    for the latest key asked for, one measurement at a time. A key asked for while another is
    measured is measured next: the thread looks again before it ends, so no request is dropped
    for good (a page would wait for the value forever). ``measure(key, *args)`` returns the
    value; ``measured(key)`` is called after each, e.g. to send it to every page."""

    def __init__(self, name: str, measure: Callable[..., Any],
                 measured: Callable[[Any], None]) -> None:
        self._name = name
        self._measure = measure
        self._measured = measured
        self._lock = threading.Lock()
        self.latest: tuple[Any, Any] | None = None  # (key, value) last measured
        self._wanted: tuple[Any, tuple] | None = None
        self._thread: threading.Thread | None = None

    def get(self, key: Any, *args: Any) -> tuple[bool, Any]:
        """(True, the value) where ``key``'s is measured; else (False, None) and it is
        measured (``args`` go to ``measure``)."""
        latest = self.latest  # once: the thread replaces it
        if latest is not None and latest[0] == key:
            return True, latest[1]
        with self._lock:
            self._wanted = (key, args)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"live2d-{self._name}")
                self._thread.start()
        return False, None

    def join(self, timeout: float) -> None:
        """Wait for the measuring thread, if one runs, to end."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                wanted, latest = self._wanted, self.latest
                if wanted is None or (latest is not None and latest[0] == wanted[0]):
                    self._thread = None  # under the lock: a later get starts another
                    return
            key, args = wanted
            try:
                value = self._measure(key, *args)
            except Exception:  # kept as "none to be had": a later key is measured as ever
                log.exception("%s: the measurement failed", self._name)
                value = None
            self.latest = (key, value)
            self._measured(key)


class Controller:
    """The web app's view of the session, framework-free: opens the session of the folder the
    page picks, runs its jobs or automatic loop in one worker thread, checks every command a
    page sends, and forwards the session's events to ``publish``."""

    def __init__(self, warp_dir: str | Path | None = None,
                 output_dir: str | Path | None = None, *,
                 engine: str = "auto", device: str = "auto", cistem_bin: str | None = None,
                 warp_root: str | Path | None = None, settings: dict[str, Any] | None = None,
                 publish: Publish = lambda event: None, executor: Executor | None = None,
                 epu_dir: str | Path | None = None,
                 notify: dict[str, Any] | None = None) -> None:
        """``warp_dir`` None: no session until the page picks a folder (under ``warp_root``,
        default: ``warp_dir``'s parent, else the current folder). ``settings``: applied to the
        first session opened. ``executor``: where cycles' slices run (a Dask cluster); the
        caller closes it. ``epu_dir``: the EPU session folder of ``warp_dir``'s session;
        ``notify``: its notification options (Session's notify, smtp, smtp_from)."""
        self.publish = publish
        self._engine_options = {"engine": engine, "device": device, "cistem_bin": cistem_bin,
                                "executor": executor}
        if warp_dir is not None:
            warp_dir = Path(warp_dir).resolve()
        if warp_root:
            self.warp_root = Path(warp_root).resolve()
        else:
            self.warp_root = warp_dir.parent if warp_dir is not None else Path.cwd().resolve()
        self._first_settings = dict(settings or {})
        Settings.from_dict(self._first_settings)  # a bad one fails now, not at the first page
        # A SessionView where another process classifies into the folder (read-only).
        self.session: Session | SessionView | None = None
        self._missing = ""  # what the Warp folder lacks, as the watcher last found it
        self._worker: threading.Thread | None = None
        # From a start until just before its worker's last event, so that the event tells the
        # pages the work ended (the thread itself is still alive while it sends it).
        self._busy = False
        self._lock = threading.Lock()
        self._exporting = threading.Lock()
        self._tables: dict[Path, tuple[int, list]] = {}  # class table files read, by mtime
        # The latest selection cycle's curation per class (None: none to be had), by what
        # decides it: the folder, the cycle, the cut.
        self.curations = LatestMeasurement("curation", self._measure_curation,
                                           self._curation_measured)
        # The latest streaming update's KeepingUp (None: the session does not stream), by
        # what decides it (the folder and its latest cycle). The figures before it stand
        # meanwhile.
        self.keeping_up = LatestMeasurement("keeping-up", self._measure_keeping_up,
                                            self._keeping_up_measured)
        self._closed = threading.Event()
        if warp_dir is not None:
            self.session = self._open(warp_dir, output_dir, epu_dir=epu_dir,
                                      notify=notify or {})
        self._missing = self._check_folder()
        self._watcher = threading.Thread(target=self._watch, name="live2d-watch", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """A job or the automatic loop is running."""
        return self._busy

    def state(self, with_log: bool = False) -> dict[str, Any]:
        """Everything a page shows: what it is sent when it connects."""
        session = self.session
        snapshot = session.snapshot() if session is not None else self._no_session()
        state = {"type": "state", **snapshot, "busy": self.busy, "specs": Settings.specs(),
                 "job_types": JOB_LABELS, "warp_root": str(self.warp_root),
                 "missing": self._missing, "keeping_up": self._keeping_up(session)}
        state.update(self._selection_state(session))
        if with_log:
            state["log"] = list(session.log_lines) if session is not None else []
        return state

    def update(self, new_cycle: bool = False) -> dict[str, Any]:
        """What changes while a session runs, for pages that have its :meth:`state`: no cycle
        history (a finished cycle is sent on its own) and the good-particle history's latest
        point only, so that its size does not grow with the number of cycles. The latest class
        table and the map of grid squares only after a ``new_cycle`` (nothing else changes
        them)."""
        session = self.session
        snapshot = session.snapshot(with_history=False) if session is not None else \
            {k: v for k, v in self._no_session().items() if k != "history"}
        update = {"type": "update", **snapshot, "busy": self.busy, "missing": self._missing,
                  "keeping_up": self._keeping_up(session),
                  **self._selection_state(session, whole_history=False)}
        if not new_cycle:  # none changes between cycles: the map may be large
            del update["class_tables"]
            update.pop("grid_map", None)
            update.pop("forecast", None)
        return update

    def _selection_state(self, session: Session | None,
                         whole_history: bool = True) -> dict[str, Any]:
        """The selection summary, each export with the name it downloads by (when it is one
        the server serves), and the class table (resolution, score, reason) of the cycle the
        selection refers to; other cycles' tables the page fetches from /files/."""
        if session is None:
            return {"selection": None, "class_tables": {}, "good_score": GOOD_SCORE}
        summary = session.selection.summary(whole_history)
        root = session.output_dir.resolve()
        exports = []
        for export in summary["exports"]:
            path = Path(export["file"])
            served = path.parent == root / EXPORTS and is_export_name(path.name)
            exports.append({**export, "download": f"{EXPORTS}/{path.name}" if served
                            else None})
        summary = {**summary, "exports": exports}
        tables = {}
        record = session.selection.latest_scored()
        if record is not None and record.class_table:
            table = self._class_table(session.output_dir, record)
            if table is not None:
                tables[str(record.number)] = table
        curation = self._curation(session, record) if record is not None else None
        # Of the selected classes' particles, those the curation keeps (None: not known yet,
        # or the session does not curate)
        kept = None if curation is None else sum(
            curation[str(k)]["kept"] for k in summary["classes"] if str(k) in curation)
        summary = {**summary, "curation": curation, "kept": kept}
        return {"selection": summary, "class_tables": tables, "good_score": GOOD_SCORE}

    def _curation(self, session: Session | SessionView,
                  record: CycleRecord) -> dict[str, dict] | None:
        """Per class number of ``record`` (as text), its particles, how many the session's
        particle curation keeps and the rule that decided (ClassCuration.rule); None while it
        is measured (the pages are sent it when ready), where the session does not curate, or
        where the cycle's particles cannot be read."""
        if not session.settings.curate_particles:
            return None
        key = (session.output_dir, record.number, session.settings.curation_cut)
        return self.curations.get(key, record)[1]

    def _measure_curation(self, key: tuple[Path, int, float],
                          record: CycleRecord) -> dict[str, dict] | None:
        """The curation of ``record``, the cycle in ``key``'s folder."""
        try:
            curation = session_cycle_curation(key[0], record)
        except Exception:  # advice: the page shows whole classes, and the log says why
            log.exception("the particle curation of cycle %d could not be measured",
                          record.number)
            return None
        if curation is None:  # not curating, or its particle results are gone or unreadable
            return None
        return {str(c.number): {"particles": c.particles, "kept": c.kept, "rule": c.rule()}
                for c in curation.classes}

    def _curation_measured(self, key: tuple[Path, int, float]) -> None:
        if self.session is not None and self.session.output_dir == key[0]:
            self.publish({"type": "curation", "cycle": key[1]})

    def _keeping_up(self, session: Session | SessionView | None) -> dict[str, Any] | None:
        """Whether the session's classes keep up with the microscope, as ``live2d status`` says
        it (:func:`live2d.streaming.session_keeping_up`, with the number of the cycle it is
        of); None where its latest cycle is no streaming update. Measured once per cycle on a
        thread (it reads the store's table), then every page is sent it; meanwhile the
        figures of the cycle before stand (None for another folder's)."""
        history = session.history if session is not None else []
        if not history or history[-1].job_type != "stream":
            return None
        latest = history[-1]
        key = (session.output_dir, len(history), latest.number, latest.finished)
        done, value = self.keeping_up.get(key, history)
        if done:
            return value
        before = self.keeping_up.latest
        return before[1] if before is not None and before[0][0] == key[0] else None

    def _measure_keeping_up(self, key: tuple[Path, int, int, float],
                            history: list[CycleRecord]) -> dict[str, Any] | None:
        """The KeepingUp of ``history``, the session's in ``key``'s folder."""
        try:
            state = session_keeping_up(key[0], history)
        except Exception:  # e.g. the store being replaced: the next cycle tries again
            log.debug("the latency of cycle %d could not be measured", key[2], exc_info=True)
            return None
        return None if state is None else {"cycle": key[2], **state.to_dict()}

    def _keeping_up_measured(self, key: tuple[Path, int, int, float]) -> None:
        if self.session is not None and self.session.output_dir == key[0]:
            self.publish({"type": "keeping_up"})

    def _class_table(self, folder: Path, record: CycleRecord) -> list | None:
        path = folder / record.class_table
        try:
            mtime = path.stat().st_mtime_ns
            cached = self._tables.get(path)
            if cached is None or cached[0] != mtime:
                table = read_class_table(folder, record)
                if table is None:
                    return None
                self._tables = {path: (mtime, table)}  # only the latest is asked for
            return self._tables[path][1]
        except (OSError, ValueError):
            return None

    def _no_session(self) -> dict[str, Any]:
        settings = Settings.from_dict(self._first_settings)
        return {"warp_dir": None, "output_dir": None, "status": "stopped",
                "settings": settings.to_dict(), "particles": 0, "history": [], "job": None,
                "next_mode": settings.mode, "automatic": False, "progress": None,
                "read_only": None, "epu_dir": None}

    # ------------------------------------------------------------------ watching the folder
    def _check_folder(self) -> str:
        """What the Warp folder lacks before particles can be imported ("" when nothing)."""
        session = self.session
        if session is None:
            return (f"no Warp folder yet: click Update Warp Directory and give the folder Warp "
                    f"processes (under {self.warp_root})")
        try:
            layout = detect_layout(session.warp_dir, session.state.star or None)
            if layout.kind != WARP:
                if layout.waiting:
                    return layout.waiting
                return "" if layout.star.exists() else f"waiting for the particle star " \
                    f"{layout.star}"
            settings = read_settings(session.warp_dir)
        except WarpFolderError as exc:
            return str(exc)
        star = particle_star_path(session.warp_dir, settings, session.settings.particle_file)
        if not star.exists():
            return f"waiting for Warp's first particles ({star.name} not there)"
        return ""

    def _watch(self) -> None:
        """Tell the pages when what the folder lacks changes (Warp starts, export turned on)."""
        while not self._closed.wait(WATCH_SECONDS):
            self._follow()
            try:
                missing = self._check_folder()
            except Exception:  # e.g. a share that hangs up oddly: try again later
                continue
            if missing != self._missing:
                self._missing = missing
                self.publish({"type": "folder", "missing": missing})

    def _follow(self) -> None:
        """A folder watched read-only: what its writer changed, to every page."""
        session = self.session
        if not isinstance(session, SessionView):
            return
        try:
            changed = session.refresh()
        except Exception:  # e.g. a share that hangs up: try again at the next look
            log.debug("reading %s again failed", session.output_dir, exc_info=True)
            return
        if changed and session is self.session:
            self.publish({"type": "session"})

    # ------------------------------------------------------------------ commands
    def handle(self, message: Any) -> dict[str, Any] | None:
        """Carry out one page message; returns a reply for the sender (None: nothing to say)."""
        if not isinstance(message, dict):
            raise CommandError("a message must be a JSON object with a 'command'")
        command = message.get("command")
        if command not in COMMANDS:
            raise CommandError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
        unknown = set(message) - {"command", "id"} - FIELDS.get(command, OLDER_FIELDS)
        if unknown:
            raise CommandError(f"unexpected field(s) {', '.join(sorted(map(str, unknown)))}")
        if command == "ping":  # liveness and latency checks
            return {"type": "pong", "id": message.get("id")}
        if command == "get_state":
            return self.state(with_log=True)
        if isinstance(self.session, SessionView) and command in CHANGES:
            raise CommandError(str(self.session.refuse(CHANGES[command])))
        if command == "stop":
            hard = message.get("hard", True)
            if not isinstance(hard, bool):
                raise CommandError("'hard' must be true or false")
            if self.session is None:
                return {"type": "ok", "message": "nothing is running"}
            self.session.request_stop(hard=hard)
            return {"type": "ok", "message": "stopping"}
        if command == "set_warp_dir":
            return self._set_warp_dir(message.get("path"))
        if self.session is None:
            raise CommandError("no Warp folder yet: choose it first with Update Warp Directory")
        if command == "mark":
            return self._mark(message.get("classes"), message.get("cycle"))
        if command == "export":
            return self._export()
        if command == "set_notify":
            return self._set_notify(message.get("notify"), message.get("smtp"),
                                    message.get("smtp_from"))
        if command == "test_notify":
            return self._test_notify()
        if command == "dismiss_alert":
            return self._dismiss_alert(message.get("key"))
        if command == "set_epu_dir":
            return self._set_epu_dir(message.get("path"))
        settings = self._apply_settings(message.get("settings"))
        if command == "start_job":
            job_type = message.get("job_type", settings.mode)
            if job_type not in JOB_TYPES:
                raise CommandError(f"job_type must be one of {', '.join(JOB_TYPES)}")
            self._start(lambda: self.session.run_job(job_type, resume=False, clear_stop=False),
                        "job")
        else:
            self._start(lambda: self.session.run_automatic(clear_stop=False), "automatic jobs")
        return {"type": "ok", "message": f"started {command.removeprefix('start_')}"}

    def is_slow(self, message: Any) -> bool:
        """Whether ``message`` is a command that takes long (the web layer runs it in a thread:
        :meth:`handle` is safe to call from one for these)."""
        return isinstance(message, dict) and message.get("command") in SLOW_COMMANDS

    def _mark(self, marks: Any, cycle: Any = None) -> dict[str, Any]:
        """``{"3": "good", "5": "junk", "7": null}`` (null: back to the proposal); every page
        hears of the new selection through the session's event. ``cycle``: the one the page
        showed; refused if another has finished since (its classes may be other ones)."""
        if not isinstance(marks, dict) or not marks:
            raise CommandError("'classes' must be an object of class numbers and marks, "
                               'e.g. {"3": "good", "5": "junk", "7": null}')
        if len(marks) > MAX_MARKS:
            raise CommandError(f"at most {MAX_MARKS} classes can be marked at once")
        for number, value in marks.items():
            if not isinstance(number, str) or not CLASS_NUMBER.fullmatch(number):
                raise CommandError(f"{str(number)[:20]!r} is not a class number (1, 2, ...)")
            if value is not None and value not in MARKS:
                raise CommandError(f"class {number} can be marked good, junk or null (the "
                                   f"proposal), not {str(value)[:20]!r}")
        if cycle is not None:
            if not isinstance(cycle, int) or isinstance(cycle, bool):
                raise CommandError("'cycle' must be the number of the cycle the marks are for")
            latest = self.session.selection.summary()["cycle"]
            if cycle != latest:
                raise CommandError(f"cycle {cycle} is not the latest classified cycle any more "
                                   f"({latest}): look at its classes and mark them again")
        try:
            summary = self.session.selection.mark_classes(marks)
        except SelectionError as exc:
            raise CommandError(str(exc)) from None
        learned = f"; {describe_changed(summary['changed'])} after your marks" \
            if summary["changed"] else ""
        return {"type": "ok", "message": f"{len(summary['classes'])} classes selected, "
                                         f"{summary['particles']:,} particles{learned}"}

    def _export(self) -> dict[str, Any]:
        """The selection's particles as a RELION star in ``exports/`` of the output folder,
        replacing an earlier export of the same cycle (atomically)."""
        session = self.session  # the folder may change meanwhile: this export keeps its own
        if not self._exporting.acquire(blocking=False):
            raise CommandError("an export is being written: wait for it to finish")
        try:
            cycle = session.selection.summary()["cycle"]
            if cycle is None:
                raise CommandError("no classified cycle yet: nothing to export")
            folder = session.output_dir / EXPORTS
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise CommandError(f"cannot make {folder} ({exc.strerror})") from None
            name = export_name(cycle)
            exported = session.selection.export(folder / name, cycle=cycle)
        except SelectionError as exc:
            raise CommandError(str(exc)) from None
        finally:
            self._exporting.release()
        log.info(f"exported {exported.particles:,} particles of classes "
                 f"{', '.join(map(str, exported.classes))} (cycle {exported.cycle}) to "
                 f"{exported.path}")
        return {"type": "exported", "message": f"exported {exported.particles:,} particles of "
                f"classes {', '.join(map(str, exported.classes))} (cycle {exported.cycle})",
                "file": str(exported.path), "download": f"{EXPORTS}/{name}",
                "cycle": exported.cycle, "classes": exported.classes,
                "particles": exported.particles}

    def _set_notify(self, targets: Any, smtp: Any, smtp_from: Any) -> dict[str, Any]:
        """Replace where the session sends its alerts: ``notify`` every target (the page sees
        webhooks by host only, so an edit gives them all again), ``smtp`` and ``smtp_from``
        unchanged where absent."""
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise CommandError("'notify' must be a list of http(s) URLs and mailto: addresses "
                               "([] sends alerts nowhere)")
        if len(targets) > MAX_NOTIFY_TARGETS:
            raise CommandError(f"at most {MAX_NOTIFY_TARGETS} notification targets")
        for name, value in (("smtp", smtp), ("smtp_from", smtp_from)):
            if value is not None and not isinstance(value, str):
                raise CommandError(f"'{name}' must be text")
        try:
            summary = self.session.set_notify([t for t in targets if t.strip()], smtp,
                                              smtp_from)
        except SettingsError as exc:  # NotifyError: says what to give instead
            raise CommandError(str(exc)) from None
        where = ", ".join(summary["targets"]) or "no one"
        return {"type": "ok", "message": f"alerts are sent to {where}"}

    def _test_notify(self) -> dict[str, Any]:
        """One test message to each of the session's targets, at once and once (the page waits
        for the answer): which arrived, and why the others did not."""
        state = self.session.state
        if not state.notify:
            raise CommandError("no notification targets: add a webhook URL or mailto: address "
                               "first")
        message = check_message(self.session.output_dir, self.session.warp_dir)
        results = []
        for target in state.notify:
            try:
                deliver(target, message, state.smtp, state.smtp_from)
                results.append(f"sent to {shown(target)}")
            except DeliveryError as exc:
                results.append(f"failed: {shown(target)}: {exc}")
        return {"type": "notify_test", "message": "; ".join(results),
                "ok": not any(r.startswith("failed") for r in results)}

    def _dismiss_alert(self, key: Any) -> dict[str, Any]:
        """Hide the alert ``key`` on every page until it clears and fires anew (the session
        keeps it in alerts.json; every page hears of it through the session's event)."""
        if not isinstance(key, str) or not key or len(key) > MAX_ALERT_KEY:
            raise CommandError("'key' must be the key of an alert in force, e.g. "
                               "\"square:1834522\" or \"warp_stalled\"")
        try:
            dismissed = self.session.dismiss_alert(key)
        except OSError as exc:
            raise CommandError(f"the dismissal could not be saved: {exc}") from None
        if not dismissed:
            raise CommandError(f"no alert {key[:40]!r} is in force (it may have cleared)")
        return {"type": "ok", "message": "alert dismissed"}

    def _set_epu_dir(self, path: Any) -> dict[str, Any]:
        """Keep the EPU session folder ``path`` ("" forgets it) for the next scored cycle. Unlike
        the Warp folder it need not be under ``warp_root``: EPU writes it on the microscope's
        share, seldom beside Warp's, and the server only lists the names of its acquisition
        files, never reads or serves them."""
        # A NUL byte is no path's: the OS calls would raise ValueError, not say what is wrong.
        if not isinstance(path, str) or len(path) > MAX_PATH or "\0" in path:
            raise CommandError("'path' must be the EPU session folder's path (\"\" for none)")
        folder = None
        if path.strip():
            folder = Path(os.path.expanduser(path.strip()))
            if not folder.is_absolute():  # relative to what? the server's folder is no answer
                raise CommandError(f"{path.strip()!r} is not an absolute path: give the EPU "
                                   "session folder's whole path")
            problem = epu_folder_problem(folder.resolve())
            if problem:  # a typo is refused, not kept to be found out at the next cycle
                raise CommandError(problem)
        try:
            found = self.session.set_epu_dir(folder)
        except OSError as exc:  # session.json could not be written: the old folder stays
            raise CommandError(f"the EPU session folder could not be saved: {exc}") from None
        return {"type": "epu_saved", "message": f"{found} (from the next classified cycle: "
                                                "the yield tables and map shown are the last "
                                                "cycle's)"}

    def _apply_settings(self, values: Any) -> Settings:
        if values is None:
            return self.session.settings
        if not isinstance(values, dict):
            raise CommandError("'settings' must be an object of setting names and values")
        if self.busy:
            raise CommandError("a job is running: stop it before starting another")
        try:
            return self.session.update_settings(values)
        except SettingsError as exc:
            raise CommandError(str(exc)) from None

    def _start(self, target: Callable[[], Any], what: str) -> None:
        with self._lock:
            if self.busy:
                raise CommandError("a job is running: stop it before starting another")
            self.session.clear_stop()  # here, so that a stop sent right after is kept

            def run() -> None:
                try:
                    target()
                except CycleCancelled:
                    log.warning("the running cycle was stopped; the previous one is kept")
                except (EngineError, SessionError, WarpFolderError, OSError) as exc:
                    log.error(f"{what} failed: {exc}")
                except Exception:  # the page must hear about anything that ends the worker
                    log.exception(f"{what} failed unexpectedly")
                finally:
                    self._busy = False
                    self.publish({"type": "status", "status": self.session.status})

            self._worker = threading.Thread(target=run, name="live2d-job", daemon=True)
            self._busy = True
            try:
                self._worker.start()
            except BaseException:
                self._busy = False
                raise

    def _set_warp_dir(self, path: Any) -> dict[str, Any]:
        # A NUL byte is no path's: the OS calls would raise ValueError, not say what is wrong.
        if (not isinstance(path, str) or not path.strip() or len(path) > MAX_PATH
                or "\0" in path):
            raise CommandError("'path' must be the Warp folder's path")
        if self.busy:
            raise CommandError("stop the running jobs before changing the Warp folder")
        folder = Path(os.path.expanduser(path.strip())).resolve()
        if not folder.is_relative_to(self.warp_root):
            raise CommandError(f"{folder} is outside {self.warp_root}, the folder this server "
                               "may read (start it with --warp-root to change that)")
        if not folder.is_dir():
            raise CommandError(f"{folder} does not exist or is not a folder")
        old = self.session
        try:
            # Settings carry over from the folder watched so far; the first folder takes the
            # server's (Controller(settings=...)) if any, else keeps its saved ones.
            # A watched folder's settings are another process's: the new folder keeps its own.
            carried = old.settings if isinstance(old, Session) else None
            self.session = self._open(folder, None, carried)
        # e.g. the workers cannot see it; a session.json edited by hand (its settings or
        # notification targets refused)
        except (EngineError, SessionError, SettingsError, OSError) as exc:
            raise CommandError(str(exc)) from None
        if old is not None:
            old.close()
        self._missing = self._check_folder()
        log.info(f"now watching {folder}" + (f": {self._missing}" if self._missing else ""))
        self.publish({"type": "session"})  # another folder: every page is sent its whole state
        return {"type": "ok", "message": f"now watching {folder}"}

    def _open(self, warp_dir: Path, output_dir: str | Path | None,
              settings: Settings | None = None, epu_dir: str | Path | None = None,
              notify: dict[str, Any] | None = None) -> Session | SessionView:
        try:
            session = Session(warp_dir, output_dir, settings=settings, epu_dir=epu_dir,
                              **(notify or {}), **self._engine_options)
        except SessionInUse as exc:
            # The page may still watch: a run on the command line, or Scipion's, is often
            # what the user wants to see. Nothing is written until that process stops.
            view = SessionView(warp_dir, output_dir, exc.holder)
            log.warning("%s is being classified by another Live2D process (%s): watching it "
                        "read-only; jobs, settings, marks and exports stay with that process",
                        view.output_dir, exc.holder)
            if settings is not None or self._first_settings or epu_dir is not None:
                log.warning("the settings given to this server are not applied while the "
                            "folder is read-only here (they are if this page takes it over)")
            if notify:
                log.warning("the notification targets given to this server are not applied "
                            "while the folder is read-only here")
            view.add_listener(self._forward)
            return view
        try:
            session.check_workers()
            if settings is None and self._first_settings:
                session.update_settings(self._first_settings)
        except BaseException:
            session.close()
            raise
        self._first_settings = {}  # applied once: later folders carry the session's over
        session.add_listener(self._forward)
        return session

    def _forward(self, event: dict[str, Any]) -> None:
        self.publish(event)  # looked up per event: the web layer swaps in its own publisher

    def close(self) -> None:
        self._closed.set()
        if self.session is None:
            return
        self.session.request_stop(hard=True)
        if self._worker is not None:
            self._worker.join(timeout=30)
        self.session.close()

