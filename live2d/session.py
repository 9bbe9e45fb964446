"""The live loop: import what Warp picked, run scheduled classification jobs, keep every cycle.

One ``Session`` owns one output folder. Its state (settings, the job in progress) lives in
``session.json``, written atomically after every change, and every cycle's record is appended to
``history.jsonl`` (:mod:`live2d.history`), so a process killed at any moment restarts where it
was: the running job resumes at its first unfinished cycle, and neither file's writes grow with
the number of cycles so far.

Threading: the loop (``run_job``, ``run_automatic``) runs in one worker thread; ``request_stop``,
``snapshot``, ``update_settings``, ``set_notify``, ``set_epu_dir``, ``keep_averages_of`` and
listeners are safe to use from any other thread (a web server's event loop, a Scipion protocol).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from live2d.alerts import (
    CYCLE_RULES,
    DISK_LOW,
    WARP_STALLED,
    AlertBook,
    cycle_alerts,
    disk_low,
    warp_stalled,
)
from live2d.atomic import naming
from live2d.collection_yield import (
    ScoredParticles,
    read_grid_map,
    score_particles,
    write_yield_tables,
)
from live2d.cycle import CycleInputs, clean_work_folder, run_cycle
from live2d.disk import DiskUse, DiskWatch
from live2d.engines import Engine, make_engine
from live2d.epu import epu_folder_problem, read_hole_squares
from live2d.errors import CycleCancelled, EngineError, SelectionError, SessionError
from live2d.forecast import (
    forecast,
    forecast_dict,
    particle_times,
    read_forecast,
    write_forecast,
)
from live2d.history import CycleRecord
from live2d.importer import Importer, ImportReport
from live2d.listeners import Listeners
from live2d.notify import Notifier, alert_message, check_targets, shown
from live2d.output_folder import DEFAULT_OUTPUT, OutputFolder
from live2d.schedule import (
    JOB_TYPES,
    REVISIT_BLOCK,
    AutomaticTrigger,
    Settings,
    next_job_type,
    plan_job,
    revisit_plan,
)
from live2d.selection import ClassSelection, SelectionState, acted_on_cycles
from live2d.session_lock import SessionLock
from live2d.session_state import JobState, open_state
from live2d.sources import ParticleFeed
from live2d.store import ParticleStore
from live2d.streaming import drop_unreferenced, spare_revisit_due

if TYPE_CHECKING:
    from live2d.executors import Executor

LOG_LINES_KEPT = 1000
log = logging.getLogger("live2d")

# What a scored cycle's alerts are judged on: the store's table, its particles scored by the
# cycle, the EPU folder's foil hole -> grid square (None: none kept or readable).
ScoredCycle = tuple[pd.DataFrame, ScoredParticles, dict[str, str] | None]


class SessionLogHandler(logging.FileHandler):
    """Writes the "live2d" logger to the session's log file and keeps the latest lines for the
    pages, telling them of each (a "log" event)."""

    def __init__(self, session: Session) -> None:
        super().__init__(session.output.log, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        line = self.format(record)
        self.session.log_lines.append(line)
        self.session._emit({"type": "log", "line": line})


class Session(Listeners):
    """A live classification session over one output folder: it imports what the particle
    source adds, plans and runs jobs of cycles (:func:`live2d.cycle.run_cycle`), records each
    cycle (:mod:`live2d.history`), keeps the selection (:mod:`live2d.selection`) and tells its
    listeners of every change. Its state is :class:`live2d.session_state.SessionState`."""

    def __init__(
        self,
        warp_dir: str | Path,
        output_dir: str | Path | None = None,
        *,
        settings: Settings | None = None,
        engine: Engine | str = "auto",
        device: str = "auto",
        cistem_bin: str | None = None,
        executor: Executor | None = None,
        star: str | Path | None = None,
        particle_feed: Callable[[ParticleStore], ParticleFeed] | None = None,
        epu_dir: str | Path | None = None,
        owner: str | None = None,
        notify: Sequence[str] | None = None,
        smtp: str | None = None,
        smtp_from: str | None = None,
    ) -> None:
        """``executor``: where the engine's slices run (live2d.executors; None: this process).
        The caller owns it and closes it after :meth:`close`. ``star``: the particle star to
        import (a WarpTools 2 export, any RELION-style star; relative to ``warp_dir``); a
        resumed session keeps the one it was started with unless another is given.
        ``particle_feed``: makes the particle source that fills the session's store (e.g. a
        Scipion input set; ``warp_dir`` is then only the folder the session names); None: the
        folder ``warp_dir`` (:class:`live2d.importer.Importer`). ``epu_dir``: the EPU session
        folder, for the grid square of each foil hole in the yield tables (:mod:`live2d.epu`);
        kept like ``star``. ``notify``: where alerts are sent (http(s) URLs, mailto:
        addresses; :mod:`live2d.notify`), ``smtp`` and ``smtp_from`` the mail server and sender
        of the mailto: ones; each kept like ``star`` (``notify=[]`` forgets the kept targets).
        ``owner``: what the message of a second writer calls this process (default: the
        command it was started as).

        Raises SessionInUse, changing nothing in the folder, when another process has the
        output folder open for writing (live2d.session_lock); NotifyError (a SettingsError)
        for targets that cannot be used."""
        self.warp_dir = Path(warp_dir).resolve()
        if not self.warp_dir.is_dir():  # checked before the output folder could create it
            raise SessionError(f"{self.warp_dir} does not exist or is not a folder: give the "
                               "folder Warp processes (it may be empty until Warp starts)")
        if notify:  # a malformed target creates nothing (a mailto: is checked with the state)
            check_targets([t for t in notify if not t.startswith("mailto:")], smtp or "")
        self.output_dir = Path(output_dir or self.warp_dir / DEFAULT_OUTPUT).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.output = OutputFolder(self.output_dir)
        # Before anything below writes: opening cleans work/, cuts the store back and drops
        # unnamed batch files, which would wreck another process's running cycle.
        self._folder_lock = SessionLock.acquire(self.output_dir, owner)
        try:
            self._open(settings, engine, device, cistem_bin, executor, star, particle_feed,
                       epu_dir, notify, smtp, smtp_from)
        except BaseException:
            if hasattr(self, "_log_handler"):  # the logger's until removed
                logging.getLogger("live2d").removeHandler(self._log_handler)
                self._log_handler.close()
            self._folder_lock.release()
            raise

    def _open(self, settings: Settings | None, engine: Engine | str, device: str,
              cistem_bin: str | None, executor: Executor | None, star: str | Path | None,
              particle_feed: Callable[[ParticleStore], ParticleFeed] | None,
              epu_dir: str | Path | None, notify: Sequence[str] | None, smtp: str | None,
              smtp_from: str | None) -> None:
        self._engine_choice = engine
        self._engine_options = {"device": device, "cistem_bin": cistem_bin,
                                "executor": executor}
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self._lock = threading.RLock()
        Listeners.__init__(self)
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self.status = "stopped"  # stopped | listening | running | stopping
        self.progress: dict[str, Any] | None = None
        # What the Warp folder lacks before anything can be imported (no previous.settings
        # yet...), as the last poll found it; "" once particles can be imported.
        self.missing = ""
        self.log_lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._said: set[str] = set()  # the warnings a cycle says once a session (live2d.cycle)
        # The cycle count when a spare-time job last failed: none is tried again before the
        # next cycle, or a broken one would be retried at every poll.
        self._spare_failed_at = -1
        # Cycles whose class averages another program reads where they are (keep_averages_of)
        self._averages_read_elsewhere: frozenset[int] = frozenset()
        self._log_handler = self._attach_log()
        self.state, self._history, resumed = open_state(self.output, self.warp_dir, settings)
        if resumed:
            self._log(f"resuming session in {self.output_dir}: {len(self._records)} cycles")
        if star is not None and str(star) != self.state.star:
            self.state.star = str(star)
            self._write_state()
        if epu_dir is not None and str(Path(epu_dir).resolve()) != self.state.epu_dir:
            self.state.epu_dir = str(Path(epu_dir).resolve())
            self._write_state()
        self._epu_folder()  # a folder that cannot be read is said now, not at the first cycle
        self._notifier: Notifier | None = None
        # NotifyError: __init__ detaches the log handler and releases the folder.
        self._notifier = self._keep_notify(notify, smtp, smtp_from)
        self.store = ParticleStore(self.output_dir)
        self.importer: ParticleFeed = Importer(
            self.warp_dir, self.store, which=self.settings.particle_file,
            star=self.state.star or None, contrast=self.settings.contrast,
        ) if particle_feed is None else particle_feed(self.store)
        if particle_feed is not None:  # the session's settings hold for any source
            self.importer.configure(which=self.settings.particle_file,
                                    contrast=self.settings.contrast)
        self._disk = DiskWatch(self.output_dir)
        self.alerts = AlertBook(self.output_dir)
        # The page's map of grid squares, read again whenever the yield tables are written.
        self.grid_map = read_grid_map(self.output_dir, self._epu_folder())
        self.forecast = read_forecast(self.output_dir)
        self.selection = ClassSelection(
            self.output_dir, self._history, self._lock,
            lambda summary: self._emit({"type": "selection", "selection": summary}))
        self._clean_work_dir()
        drop_unreferenced(self.output, self._records[-1] if self._records else None)

    # ----------------------------------------------------------------- state and persistence
    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def history(self) -> list[CycleRecord]:
        with self._lock:
            return list(self._records)

    @property
    def _records(self) -> list[CycleRecord]:
        return self._history.records

    @property
    def job(self) -> JobState | None:
        return self.state.job

    def _write_state(self) -> None:
        with self._lock:
            self.state.save(self.output.session_state)

    def update_settings(self, values: dict[str, Any]) -> Settings:
        """Validate and store new settings (raises SettingsError with a message for the user)."""
        with self._lock:
            settings = self.state.change_settings(values)
            self.importer.configure(which=settings.particle_file, contrast=settings.contrast)
            self._write_state()
        self._emit({"type": "settings", "settings": settings.to_dict()})
        return settings

    # ----------------------------------------------------------------- events and log
    def _attach_log(self) -> logging.Handler:
        if self.output.log.exists():
            with open(self.output.log, encoding="utf-8", errors="replace") as handle:
                self.log_lines.extend(line.rstrip("\n") for line in handle)
        handler = SessionLogHandler(self)
        logging.getLogger("live2d").addHandler(handler)
        logging.getLogger("live2d").setLevel(logging.INFO)
        return handler

    def close(self) -> None:
        if self._notifier is not None:  # before the log closes: its last lines go there
            self._notifier.close()
        logging.getLogger("live2d").removeHandler(self._log_handler)
        self._log_handler.close()
        self._folder_lock.release()

    def _log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)

    def _set_status(self, status: str) -> None:
        self.status = status
        self._emit({"type": "status", "status": status})

    def snapshot(self, with_history: bool = True) -> dict[str, Any]:
        """Everything a UI shows, JSON-ready; ``with_history`` False: all but the history of
        cycles (for a UI that has it and hears of each new cycle)."""
        with self._lock:
            snapshot = {
                "warp_dir": str(self.warp_dir),
                "output_dir": str(self.output_dir),
                "status": self.status,
                "settings": self.state.settings.to_dict(),
                "particles": self.store.count,
                "history": [r.to_dict(with_batches=False) for r in self._records],
                "job": dataclasses.asdict(self.state.job) if self.state.job else None,
                "next_mode": self.settings.mode,
                "automatic": self.state.automatic,
                "progress": self.progress,
                "disk": self._disk.to_dict(),
                "alerts": [alert.to_dict() for alert in self.alerts.active],
                "grid_map": self.grid_map,
                "forecast": forecast_dict(self.forecast),
                "read_only": None,  # this process writes the folder (a SessionView's says why not)
                "notify": self.notify_summary(),
                "epu_dir": self.state.epu_dir or None,
            }
        if not with_history:
            del snapshot["history"]
        return snapshot

    # ----------------------------------------------------------------- control
    def request_stop(self, hard: bool = False) -> None:
        """Stop after the running cycle; ``hard`` also ends the running cycle now."""
        self._stop.set()
        if hard:
            self._cancel.set()
        if self.status in ("running", "listening"):
            self._set_status("stopping")

    def clear_stop(self) -> None:
        """Forget earlier stop requests: done when a job or the loop is started, by whoever
        starts it (a worker thread clearing it itself would lose a stop sent meanwhile)."""
        self._stop.clear()
        self._cancel.clear()

    # ----------------------------------------------------------------- importing
    def import_new(self) -> ImportReport:
        """One poll of the Warp folder; a re-import forces the next job to start ab initio."""
        executor = self._engine_options["executor"]
        # Cluster workers get the copy: they may not see Warp's folder where this machine does.
        self.importer.configure(copy_images=self.engine.needs_particle_stack or bool(
            executor is not None and executor.distributed))
        with naming(self.store.folder):  # a full disk's error names where to free space
            # Stale particles are re-imported at once: the session's next job starts afresh.
            report = self.importer.poll_reimporting()
        self.missing = report.missing
        for message in report.messages:
            self._log(message)
        if report.new_particles:
            self._log(f"imported {report.new_particles} particles ({report.total} in all)")
            if self.disk is None:  # then after every cycle: walking the folder is O(files)
                self.check_disk()
        if report.reimported:
            self._log(f"{report.reason}", logging.WARNING)
            with self._lock:
                self.state.job = None
                self.state.particles_at_last_job = None
                self.state.change_settings({"mode": "abinit"})
                self._write_state()
        if report.new_particles or report.reimported:
            self._emit({"type": "import", "particles": report.total,
                        "new": report.new_particles, "waiting_on": report.waiting_on,
                        "reimported": report.reimported})
        return report

    # ----------------------------------------------------------------- jobs
    def latest_cycle(self) -> CycleRecord | None:
        """The newest cycle of the current particle set (older sets cannot seed a job)."""
        with self._lock:
            last = self._records[-1] if self._records else None
        if last is not None and last.generation == self.store.generation:
            return last
        return None

    def start_job(self, job_type: str | None = None, *, spare: bool = False) -> JobState:
        """Plan a new job over the particles imported so far (replacing an unfinished one);
        ``spare``: a streaming update that only re-visits older batches
        (:func:`~live2d.schedule.revisit_plan`), what an idle engine runs between updates."""
        settings = self.settings
        job_type = "stream" if spare else job_type or settings.mode
        if spare and not (self.latest_cycle() and self.latest_cycle().streamed):
            raise SessionError("only a streaming update's classes have batches to re-visit")
        if job_type not in JOB_TYPES:
            raise SessionError(f"unknown job type {job_type!r}: one of {', '.join(JOB_TYPES)}")
        if job_type != "abinit" and self.latest_cycle() is None:
            self._log(f"no classes yet for these particles: running ab initio, not {job_type}")
            job_type = "abinit"
        if job_type == "stream" and not self.engine.streams:
            self._log(f"the {self.engine.name} engine does not run streaming updates yet: "
                      "running a seeded startup")
            job_type = "seeded"
        n = self.store.count
        if n < 1 and self.missing:
            raise SessionError(f"nothing to classify yet: {self.missing}")
        if n < 1:
            raise SessionError(
                f"no particles imported from {self.warp_dir} yet: is Warp exporting particles?")
        if n < settings.classes:
            raise SessionError(f"{n} particles are too few for {settings.classes} classes")
        plan = revisit_plan(settings) if spare else plan_job(job_type, settings, n)
        if not plan:
            raise SessionError(f"the {job_type} job has no cycles with these settings")
        with self._lock:
            self.state.jobs_started += 1
            job = JobState(self.state.jobs_started, job_type, [dataclasses.asdict(s) for s in plan],
                           particles=n)
            self.state.job = job
            self._write_state()
        self._log(f"job {job.number}: {job_type}, {len(plan)} cycles, {n} particles"
                  + (" (spare time: older batches re-visited)" if spare else ""))
        return job

    def run_job(
        self, job_type: str | None = None, *, resume: bool = True, clear_stop: bool = True,
        spare: bool = False,
    ) -> bool:
        """Run the unfinished job (if ``resume``) or a new one (``spare``: see
        :meth:`start_job`) to the end, importing between cycles. Returns True when the job
        finished, False when a stop request ended it early. Raises EngineError / SessionError
        when a cycle fails, CycleCancelled on a hard stop."""
        if clear_stop:
            self.clear_stop()
        self.import_new()
        job = self.job if resume and self.job else None
        if (job is not None and not spare and not job.finished
                and job.spec(job.next_index).block == REVISIT_BLOCK):
            # A spare-time re-visit a stop or kill interrupted is optional work: what is due
            # (new particles first) runs instead, and the idle engine re-visits again later.
            self._log(f"job {job.number} (spare-time re-visit) left unfinished: not resumed")
            job = None
        if job is not None and job.next_index >= len(job.plan):
            # Its last cycle was published, then a kill came before its end was recorded:
            # nothing is left to resume, so it ends here and the job due runs instead.
            self._end_job(job)
            job = None
        if job is None:
            job = self.start_job(job_type, spare=spare)
        else:
            self._log(f"job {job.number} ({job.job_type}): resuming at its "
                      f"{self._cycle_words(job)}")
        self._set_status("running")
        first = True
        try:
            while job.next_index < len(job.plan):
                if self._stop.is_set():
                    self._log(f"job {job.number} stopped before its {self._cycle_words(job)}")
                    return False
                if not first:
                    self.import_new()  # particles picked meanwhile join the next cycle
                    if self.state.job is None:  # a re-import dropped the job
                        return False
                first = False
                with naming(self.output_dir):
                    self._run_cycle(job)
                job = self.job
                assert job is not None
            self._end_job(job)
            return True
        finally:
            self.progress = None
            self._set_status("stopping" if self._stop.is_set() else "stopped")

    def _end_job(self, job: JobState) -> None:
        """Record that ``job`` ran its last cycle; the next automatic job type follows it."""
        with self._lock:
            self.state.job = None
            self.state.particles_at_last_job = self.latest_cycle().particles
            mode = next_job_type(job.job_type, self.engine.streams)
            self.state.change_settings({"mode": mode})
            self._write_state()
        self._log(f"job {job.number} finished; the next automatic job is {mode}")

    def run_automatic(self, stop: threading.Event | None = None, *,
                      clear_stop: bool = True, raise_failures: bool = False) -> bool:
        """Poll the particle source and run jobs whenever enough particles arrived, until a stop
        request, or until a source that closes (a Scipion set) is closed and every particle it
        holds is classified: then a last job classifies what the others left, however few, and
        this returns True (False after a stop). ``raise_failures``: a failing import or cycle
        raises (a Scipion protocol then fails); otherwise it is logged and retried at the next
        polls, and its job given up after MAX_CYCLE_FAILURES failures."""
        if clear_stop:
            self.clear_stop()
        with self._lock:
            self.state.automatic = True
            self._write_state()
        self._log("automatic jobs: listening for particles from Warp")
        trigger = AutomaticTrigger()
        polled: int | None = None  # the particle count at the previous poll
        try:
            while not (self._stop.is_set() or (stop is not None and stop.is_set())):
                self._set_status("listening")
                try:
                    report = self.import_new()
                except OSError as exc:  # e.g. the output disk is full: nothing was committed
                    if raise_failures:
                        raise
                    self._log(f"import failed: {exc}; retrying at the next poll", logging.ERROR)
                    self._wait(self.settings.poll_seconds, stop)
                    continue
                due, why = trigger.due(self.settings, report.total,
                                       self.state.particles_at_last_job, self.job is not None)
                # Counted from poll to poll: a job's own imports between cycles count too.
                self._check_stall(trigger.quiet_seconds(),
                                  polled is not None and report.total > polled)
                polled = report.total
                if why:
                    self._log(why)
                if report.closed:
                    due = due or self._closing_job_due(report.total)
                if due:
                    self._run_automatic_job(raise_failures)
                    continue
                if self.spare_revisit_due():  # new particles come first: none is due
                    self._run_automatic_job(raise_failures, spare=True)
                    continue
                if report.closed:
                    return True
                self._wait(self.settings.poll_seconds, stop)
            return False
        finally:
            with self._lock:
                self.state.automatic = False
                self._write_state()
            self._set_status("stopped")
            self._log("automatic jobs stopped")

    def _closing_job_due(self, total: int) -> bool:
        """Whether a closed source's particles need a last job: any that the last job did not
        see, even below first_job_at or update_every. Raises SessionError when they are too few
        for the classes asked for (none will ever come to make up the number)."""
        if total < self.settings.classes:
            raise SessionError(f"the input set is closed with {total} particles, fewer than "
                               f"the {self.settings.classes} classes asked for")
        return total > 0 and self.state.particles_at_last_job != total

    def spare_revisit_due(self) -> bool:
        """Whether the engine, with no job to run, should re-visit older batches of a streaming
        session's classes rather than wait (:func:`live2d.streaming.spare_revisit_due`)."""
        with self._lock:
            tried = len(self._records) == self._spare_failed_at
            records = [r for r in self._records if r.generation == self.store.generation]
        return (self.job is None and self.settings.mode == "stream" and not tried
                and spare_revisit_due(records, self.settings) and self.engine.streams)

    def _run_automatic_job(self, raise_failures: bool, spare: bool = False) -> None:
        """The job an automatic poll found due (``spare``: a spare-time re-visit): its failure
        raised (``raise_failures``) or logged and counted towards giving the job up."""
        try:
            self.run_job(clear_stop=False, spare=spare)
        except (EngineError, SessionError, OSError) as exc:
            if spare:
                with self._lock:
                    self._spare_failed_at = len(self._records)
            if raise_failures:
                raise
            self._log(f"job failed: {exc}", logging.ERROR)
            self._note_failure()
        except CycleCancelled:
            self._log("cycle ended by a hard stop", logging.WARNING)

    def _wait(self, seconds: float, stop: threading.Event | None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if stop is not None and stop.is_set():
                return
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _note_failure(self) -> None:
        """Retry a failing cycle on the next polls, then give its job up."""
        with self._lock:
            job = self.state.job
            if job is None:
                return
            if self.state.note_failure():
                self._log(f"giving up job {job.number} after {job.failures} failures",
                          logging.ERROR)
            try:
                self._write_state()
            except OSError as exc:  # a full disk: the count is kept in memory until it frees
                self._log(f"cannot save the session state: {exc}", logging.ERROR)
        self._wait(self.settings.poll_seconds, None)

    def check_workers(self) -> None:
        """With a distributed executor, raise EngineError now (not at the first cycle) if its
        workers cannot see the output folder or run the engine; nothing to do otherwise."""
        executor = self._engine_options["executor"]
        if executor is not None and executor.distributed:
            executor.check_shared_folder(self.output_dir)
            _ = self.engine  # making it checks the workers can run its programs

    # ----------------------------------------------------------------- one cycle
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(str(self._engine_choice), **self._engine_options)
            self._log(f"engine: {self._engine.describe()}")
        return self._engine

    def _cycle_words(self, job: JobState) -> str:
        """The job's next cycle, counted both ways: within the job from 1 (as its plan) and as
        the session's cycle number (as cycle_NNN files), e.g. "cycle 8 of 11 (session cycle 7)"."""
        return (f"cycle {job.next_index + 1} of {len(job.plan)} "
                f"(session cycle {len(self._records)})")

    def _run_cycle(self, job: JobState) -> None:
        spec = job.spec(job.next_index)
        previous = self.latest_cycle() if spec.kind != "start" else None
        if previous is None and spec.kind != "start":
            raise SessionError("a refinement cycle needs classes and none exist: start ab initio")
        inputs = CycleInputs(self.output, self.store, self.settings,
                             self.importer.source_settings(), self.engine, self._cancel,
                             self._said)

        def on_progress(progress: dict[str, Any]) -> None:
            self.progress = progress
            self._emit({"type": "progress", "progress": progress})

        record, params = run_cycle(len(self._records), job, previous, inputs, on_progress)
        previous_record = self._records[-1] if self._records else None
        if record.assessed:
            self.selection.follow(record, previous_record,
                                  params.mask_radius / self.store.pixel_size)
        with self._lock:
            self._history.append(record)  # then the job moves on
            assert self.state.job is not None
            self.state.job.next_index = record.job_cycle
            self.state.job.failures = 0
            self._write_state()
        self._clean_work_dir()
        drop_unreferenced(self.output, record)
        if record.assessed:
            scored = self._write_yield(record)
            if scored is not None:
                self._check_cycle_alerts(*scored)
        with self._lock:
            self._history.prune_results(self.settings.keep_cycle_results)
            thinned = self._thin_averages()
        self.check_disk()
        self._log(f"cycle {record.number} (job {job.number}, cycle {record.job_cycle} of "
                  f"{record.job_cycles}) done in {record.finished - record.started:.1f} s "
                  f"({record.particles_per_second:.0f} particles/s)")
        # With the cycles whose averages went: the pages mark them (their history is sent once)
        self._emit({"type": "cycle", "cycle": record.to_dict(with_batches=False),
                    "thinned": thinned})

    def keep_averages_of(self, cycles: Collection[int]) -> None:
        """Names the cycles whose class averages another program reads where they are (the
        Scipion plugin: the cycle its outputs show), in place of those named before. An older
        streaming update named when it leaves the latest ``keep_cycle_results`` keeps its
        averages, as one a user acted on does; one no longer named by then loses them."""
        with self._lock:
            self._averages_read_elsewhere = frozenset(cycles)

    def _thin_averages(self) -> list[int]:
        """CycleHistory.thin_averages, keeping those of the cycles a user acted on as
        ``selection.json`` says now (another process's export included) and of those named by
        :meth:`keep_averages_of`; none thinned while ``selection.json`` cannot be read (tried
        again after the next cycle)."""
        try:
            acted_on = acted_on_cycles(SelectionState.load(self.output_dir))
        except SelectionError as exc:
            log.warning("class averages of older streaming updates not thinned: %s", exc)
            return []
        return self._history.thin_averages(self.settings.keep_cycle_results,
                                           acted_on | self._averages_read_elsewhere)

    def _write_yield(self, record: CycleRecord) -> ScoredCycle | None:
        """The yield tables of the cycle just recorded (O(particles), like its star): a
        failure is logged, the cycle stands. Returns what the alerts are judged on (None after
        a failure): the store's table, its particles scored, the EPU folder's hole -> square."""
        try:
            table = self.store.read_table()
            # Curating reads every selected particle's image: worth it for the classes a job
            # ends with (and each streaming update, which ends its own), not for the cycles
            # an ab initio job passes through on its way, where whole classes count.
            final = record.streamed or record.job_cycle == record.job_cycles
            particles = score_particles(self.output_dir, table, record, curate=final)
            epu = self._epu_folder()
            hole_squares = read_hole_squares(epu) if epu else None
            write_yield_tables(self.output_dir, particles, hole_squares)
        except Exception as exc:  # the tables are advice; the cycle is the work
            log.warning("yield tables of cycle %d not written: %s", record.number, exc)
            return None
        # The pages have it with the cycle; the squares' positions are read with the tables
        # since EPU adds a square's image before its holes.
        self.grid_map = read_grid_map(self.output_dir, self._epu_folder())
        return table, particles, hole_squares

    def _check_cycle_alerts(self, table: pd.DataFrame, particles: ScoredParticles,
                            hole_squares: dict[str, str] | None) -> None:
        """Fire or clear the alerts judged on a scored cycle (live2d.alerts.CYCLE_RULES): a
        failure is logged, the cycle stands."""
        try:
            times, what = particle_times(table)
            outlook = forecast(particles, times, self.settings.target_good_particles, what)
            write_forecast(self.output_dir, outlook)
            self.forecast = (outlook.cycle, outlook.lines())  # the pages have it with the cycle
            self._update_alerts(CYCLE_RULES,
                                cycle_alerts(particles, hole_squares, outlook, self.settings))
        except Exception as exc:  # advice, like the tables
            log.warning("alerts of cycle %d not judged: %s", particles.cycle, exc)

    def _check_stall(self, quiet_seconds: float, arrived: bool) -> None:
        """Fire the stall alert once no particle has arrived for warp_stalled_after seconds;
        clear it when particles arrive (not when a restart merely resets the quiet time)."""
        stalled = warp_stalled(quiet_seconds, self.warp_dir, self.settings)
        if stalled or arrived or not self.settings.warp_stalled_after:
            try:
                self._update_alerts((WARP_STALLED,), stalled)
            except OSError as exc:  # e.g. a full disk: said, and tried again at the next poll
                log.error("alerts not saved: %s", exc)

    def _update_alerts(self, rules: tuple[str, ...], firing: dict[str, str]) -> None:
        """Record the conditions of ``rules`` (live2d.alerts.AlertBook.update); an alert that
        starts goes to the log as a warning and to the listeners, as does one that clears. One
        whose figures changed goes to the listeners only: without it a page whose update was
        made between two changes would keep the older figures until the next cycle."""
        with self._lock:
            fired, cleared, changed = self.alerts.update(rules, firing)
        for alert in fired:
            log.warning(alert.message)
            self._emit({"type": "alert", "active": True, **alert.to_dict()})
        for alert in cleared:
            log.info("no longer: %s", alert.message)
            self._emit({"type": "alert", "active": False, **alert.to_dict()})
        for alert in changed:
            self._emit({"type": "alert_changed", **alert.to_dict()})
        notifier = self._notifier  # once: a page may replace it meanwhile
        if notifier is not None:  # queued: a slow receiver never holds up the loop
            for alert, active in [(a, True) for a in fired] + [(a, False) for a in cleared]:
                notifier.send(alert_message(alert.key, alert.message, alert.since, active,
                                            self.output_dir, self.warp_dir))

    def dismiss_alert(self, key: str) -> bool:
        """Hide the alert ``key`` on every page until it clears (kept in alerts.json, so that
        a page opened or reloaded later hides it too); False when no such alert is in force.
        Raises OSError when the file cannot be written."""
        with self._lock:
            alert = self.alerts.dismiss(key)
        if alert is None:
            return False
        log.info("alert dismissed on the page: %s", alert.message)
        self._emit({"type": "alert_dismissed", "key": key})
        return True

    # ----------------------------------------------------------------- notifications
    def _keep_notify(self, notify: Sequence[str] | None, smtp: str | None,
                     smtp_from: str | None) -> Notifier | None:
        """Keep the notification targets given (None: the kept ones), checked first: bad ones
        raise NotifyError and change nothing. Returns a notifier for the session's targets;
        None where it has none."""
        targets = self.state.notify if notify is None else list(notify)
        server = self.state.smtp if smtp is None else smtp.strip()
        targets = check_targets(targets, server)
        given = (targets, server,
                 self.state.smtp_from if smtp_from is None else smtp_from.strip())
        with self._lock:
            if given != (self.state.notify, self.state.smtp, self.state.smtp_from):
                self.state.notify, self.state.smtp, self.state.smtp_from = given
                self._write_state()
        return Notifier(*given) if targets else None

    def set_notify(self, notify: Sequence[str], smtp: str | None = None,
                   smtp_from: str | None = None) -> dict[str, Any]:
        """Replace where alerts are sent (a page's edit; ``notify`` [] sends none); raises
        NotifyError for targets that cannot be used, changing nothing. Returns
        :meth:`notify_summary`, which the listeners hear too."""
        notifier = self._keep_notify(notify, smtp, smtp_from)
        old, self._notifier = self._notifier, notifier
        if old is not None:
            old.close()  # what it still holds is tried once more, in its own thread
        summary = self.notify_summary()
        log.info("alerts are sent to %s", ", ".join(summary["targets"]) or "no one")
        self._emit({"type": "notify", "notify": summary})
        return summary

    def notify_summary(self) -> dict[str, Any]:
        """Where alerts are sent, for the pages: webhooks by host only (their path is their
        secret, and every page sees this), the mail server and sender."""
        return {"targets": [shown(target) for target in self.state.notify],
                "smtp": self.state.smtp, "smtp_from": self.state.smtp_from}

    def set_epu_dir(self, epu_dir: str | Path | None) -> str:
        """Keep the EPU session folder ``epu_dir`` (a page's edit; None or "" forgets it) in
        session.json. Nothing is computed again now: the next scored cycle's yield tables, grid
        map and alerts use it. Returns what the log says of it (how many grid squares it names
        so far, or why it cannot give them); the listeners hear of the change. Raises OSError,
        changing nothing, where session.json cannot be written."""
        folder = str(Path(epu_dir).resolve()) if epu_dir else ""
        with self._lock:
            if folder != self.state.epu_dir:
                kept, self.state.epu_dir = self.state.epu_dir, folder
                try:
                    self._write_state()
                except OSError:  # the old folder stays the one used, as session.json says
                    self.state.epu_dir = kept
                    raise
        if not folder:
            found = "no EPU session folder: grid squares come from the movie paths only"
            log.info(found)
        elif problem := epu_folder_problem(folder):
            self._said.add(problem)  # said here: the next cycle need not say it again
            found = f"{problem}: grid squares come from the movie paths only"
            log.warning(found)
        else:
            # One listing of the folder, so that a wrong folder shows at once (none found).
            squares = read_hole_squares(folder)
            found = (f"EPU session folder {folder}: {len(squares):,} foil holes on "
                     f"{len(set(squares.values())):,} grid squares so far")
            log.info(found)
        self._emit({"type": "epu", "epu_dir": folder or None})
        return found

    def _epu_folder(self) -> Path | None:
        """The EPU session folder kept in the state, where it can be read; where it cannot, the
        log says so once (the yield is then per micrograph and foil hole) and this is None."""
        if not self.state.epu_dir:
            return None
        problem = epu_folder_problem(self.state.epu_dir)
        if problem and problem not in self._said:
            self._said.add(problem)
            log.warning("%s: grid squares come from the movie paths only", problem)
        return None if problem else Path(self.state.epu_dir)

    @property
    def disk(self) -> DiskUse | None:
        """The output folder's disk use, as last measured."""
        return self._disk.use

    def check_disk(self) -> DiskUse | None:
        """Measure the output folder's disk use and tell the pages (an alert when free space
        falls below what the next cycles need, cleared when it no longer does)."""
        if not self.store.box:
            return None
        latest = self.latest_cycle()
        use = self._disk.measure(
            self.store.count, len(latest.class_counts) if latest else self.settings.classes,
            self.store.box, self.store.copies_images,
            min(self.settings.update_every, self.store.count))
        self._emit({"type": "disk", "disk": self._disk.to_dict()})
        try:
            self._update_alerts((DISK_LOW,), disk_low(use, self.output_dir))
        except OSError as exc:  # the disk may already be full: said, tried at the next measure
            log.error("alerts not saved: %s", exc)
        return use

    def _clean_work_dir(self) -> None:
        clean_work_folder(self.output)
