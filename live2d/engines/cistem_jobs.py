"""Running cisTEM programs side by side: answers on stdin, every line to the log, progress from
the carriage-return progress bars, failures with the program's last words, and a hard stop that
ends every process group within seconds.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from live2d.engines.base import Progress, ProgressCallback
from live2d.errors import CycleCancelled, EngineError

log = logging.getLogger("live2d.cistem")

TERM_GRACE_S = 2.0  # after SIGTERM, before SIGKILL
ERROR_GRACE_S = 10.0  # a program that printed "Error:" but keeps running is ended after this
POLL_S = 0.1
REPORT_EVERY_S = 0.25
LAST_LINES = 20  # quoted in a failure message

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS_BAR = re.compile(r"^\s*(\d{1,3})% \[")
_NORMAL_TERMINATION = ": Normal termination"
STARTING = "starting"  # the stage of a job that has not announced one yet

# A line starting a stage: (its start, stage name, share of the job done when the stage
# starts and when it ends). The noise spectrum samples ~2000 images, a small part of the work.
STAGES: tuple[tuple[str, str, float, float], ...] = (
    ("Generating ", "starting classes", 0.0, 1.0),
    ("Calculating noise power spectrum", "noise spectrum", 0.0, 0.1),
    ("Calculating new class averages", "classifying", 0.1, 1.0),
    ("Reading intermediate arrays", "merging", 0.0, 1.0),
)


class StartClock:
    """Wall-clock seconds for starting refine2d processes, never the same second twice.

    cisTEM seeds its random generator with time(NULL) when a program starts, so two processes
    started within one second share a random stream: the same psi grid offset and the same
    percent-used subset pattern. A process is started either early in a second nobody used
    (so it is seeded well before the second ends) or just after the next free second begins.
    """

    EARLY_S = 0.25
    MARGIN_S = 0.02

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_second = -1

    def reserve(self) -> float:
        """The time to start the next process at; its second is not handed out again."""
        with self._lock:
            now = time.time()
            second = int(now)
            if second > self._last_second and now - second < self.EARLY_S:
                self._last_second = second
                return now
            self._last_second = max(second + 1, self._last_second + 1)
            return self._last_second + self.MARGIN_S


# One for the whole process, so concurrent engines do not share seconds either.
START_CLOCK = StartClock()


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """A prefix that makes a program get SIGKILL when the process that started it dies, so a
    killed live2d run or Dask worker leaves no refine2d behind writing into the cycle's files.
    util-linux's setpriv execs the program in place (same pid, same process group)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else ()


class OutputSplitter:
    """Splits a program's output into finished lines and carriage-return updates."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        """Events ("line" | "update", text) for ``data``; empty ``data`` means end of output."""
        text = self._pending + self._decoder.decode(data, final=not data)
        parts = re.split(r"(\r|\n)", text)
        self._pending = parts.pop()
        events = [
            ("update" if separator == "\r" else "line", _ANSI_ESCAPE.sub("", segment))
            for segment, separator in zip(parts[0::2], parts[1::2], strict=True)
        ]
        if not data and self._pending:
            events.append(("line", _ANSI_ESCAPE.sub("", self._pending)))
            self._pending = ""
        return events


def progress_bar_fraction(text: str) -> float | None:
    """0..1 from a cisTEM progress-bar segment such as ``   42% [=====     ] 0h:00m28s``."""
    match = _PROGRESS_BAR.match(text)
    return min(int(match.group(1)), 100) / 100.0 if match else None


@dataclass
class Job:
    """One program run: what to answer, and what it has said and done so far."""

    program: Path
    title: str  # names it in failure messages, e.g. "refine2d slice 2/4 (particles 51-100)"
    tag: str  # prefixes its lines in the log, e.g. "refine2d 2/4"
    answers: list[str]
    weight: int  # particles it works through; 0 when it adds nothing to the particle rate
    staggered: bool  # seeded from the clock: start it in a second of its own
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    reader: threading.Thread | None = field(default=None, init=False)
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES), init=False)
    error_line: str | None = field(default=None, init=False)
    error_seen_at: float = field(default=0.0, init=False)
    output_closed: bool = field(default=False, init=False)
    finished: bool = field(default=False, init=False)
    stage: str = field(default=STARTING, init=False)
    stage_span: tuple[float, float] = field(default=(0.0, 1.0), init=False)
    done: float = field(default=0.0, init=False)  # 0..1 of this job

    def failure(self, what: str) -> EngineError:
        lines = "\n".join(f"    {line}" for line in self.last_lines) or "    (nothing)"
        return EngineError(f"{self.title} {what}; its last lines:\n{lines}")


class JobRunner:
    """Runs batches of jobs for one cycle and keeps that cycle's log."""

    def __init__(self, cwd: Path, cancel: threading.Event, progress: ProgressCallback,
                 clock: StartClock | None = None) -> None:
        self.cwd = cwd
        self.clock = clock or START_CLOCK
        self.cancel = cancel
        self.progress = progress
        self.log: list[str] = []
        self._events: queue.Queue[tuple[Job, str, str]] = queue.Queue()
        self._span = (0.0, 1.0)
        self._batch_started = time.monotonic()
        self._rate = 0.0
        self._reported: tuple[str, float] | None = None
        self._reported_at = 0.0

    def run(self, jobs: list[Job], span: tuple[float, float] = (0.0, 1.0)) -> None:
        """Run ``jobs`` side by side; return when all ended well, else raise EngineError (or
        CycleCancelled on ``cancel``) after ending every process still running."""
        self._span = span
        self._batch_started = time.monotonic()
        pending = deque(jobs)
        start_at: float | None = None
        try:
            while True:
                if self.cancel.is_set():
                    raise CycleCancelled("cisTEM cycle stopped on request")
                wait = POLL_S
                if pending:
                    if start_at is None:
                        start_at = self.clock.reserve() if pending[0].staggered else time.time()
                    now = time.time()
                    if now >= start_at:
                        # A start that slipped past its reserved second must reserve again.
                        if not pending[0].staggered or int(now) == int(start_at):
                            self._start(pending.popleft())
                        start_at = None
                        continue
                    wait = min(wait, start_at - now)
                self._drain(wait)
                self._check(jobs)
                if not pending and all(job.finished for job in jobs):
                    break
                self._report(jobs)
            self._report(jobs, force=True)
        except BaseException:
            _stop(jobs)
            raise
        finally:
            _release(jobs)

    def _start(self, job: Job) -> None:
        log.debug("%s: starting %s", job.tag, job.program)
        try:
            job.process = subprocess.Popen(
                [*die_with_parent(), str(job.program)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,  # its own process group, so a stop reaches everything
            )
        except OSError as exc:
            raise EngineError(f"{job.title} could not be started: {exc}") from None
        job.reader = threading.Thread(
            target=_read_output, args=(job, self._events), name=f"cistem {job.tag}", daemon=True
        )
        job.reader.start()
        assert job.process.stdin is not None
        try:
            # At most 25 lines of < 1000 bytes: fits the pipe buffer, so this never blocks.
            job.process.stdin.write(("\n".join(job.answers) + "\n").encode())
            job.process.stdin.close()
        except BrokenPipeError:
            pass  # it exited before reading; its exit status tells why

    def _drain(self, timeout: float) -> None:
        try:
            event = self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return
        while True:
            self._handle(*event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, job: Job, kind: str, text: str) -> None:
        if kind == "closed":
            job.output_closed = True
            return
        fraction = progress_bar_fraction(text)
        if fraction is not None:
            low, high = job.stage_span
            job.done = low + (high - low) * fraction
        if kind == "update":
            return
        stripped = text.strip()
        if not stripped:
            return
        line = f"{job.tag}: {text.rstrip()}"
        self.log.append(line)
        log.debug("%s", line)
        job.last_lines.append(text.rstrip())
        if stripped.startswith("Error:") and job.error_line is None:
            job.error_line = stripped
            job.error_seen_at = time.monotonic()
        for start, stage, low, high in STAGES:
            if stripped.startswith(start):
                job.stage, job.stage_span, job.done = stage, (low, high), low
        if _NORMAL_TERMINATION in stripped:
            job.done = 1.0

    def _check(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            if job.process is None or job.finished:
                continue
            status = job.process.poll()
            if status is None:
                if job.error_line and time.monotonic() - job.error_seen_at > ERROR_GRACE_S:
                    raise job.failure(f"printed {job.error_line!r} and did not exit")
                continue
            if not job.output_closed:
                continue  # exited; its last output is still on the way
            job.finished = True
            if status > 0:
                raise job.failure(f"failed with exit status {status}")
            if status < 0:
                raise job.failure(f"was killed by signal {signal.Signals(-status).name}")
            if job.error_line:
                raise job.failure(f"printed {job.error_line!r}")

    def _report(self, jobs: list[Job], force: bool = False) -> None:
        started = [job for job in jobs if job.process is not None]
        if not started:
            return
        total_weight = sum(job.weight for job in jobs)
        if total_weight > 0:
            done = sum(job.weight * job.done for job in jobs) / total_weight
            elapsed = time.monotonic() - self._batch_started
            self._rate = sum(job.weight * job.done for job in jobs) / elapsed if elapsed else 0.0
        else:
            done = sum(job.done for job in jobs) / len(jobs)
        # The stage of the job furthest behind, once it has announced one: a slice that was
        # just started is not a step back for the cycle.
        announced = [job for job in started if job.stage != STARTING] or started
        behind = [job for job in announced if not job.finished] or announced
        stage = min(behind, key=lambda job: job.done).stage
        low, high = self._span
        fraction = low + (high - low) * done
        now = time.monotonic()
        state = (stage, round(fraction, 3))
        if state == self._reported:
            return
        new_stage = self._reported is None or stage != self._reported[0]
        if not (force or new_stage or now - self._reported_at >= REPORT_EVERY_S):
            return
        self._reported, self._reported_at = state, now
        self.progress(Progress(stage=stage, fraction=fraction, particles_per_second=self._rate))


def _read_output(job: Job, events: queue.Queue[tuple[Job, str, str]]) -> None:
    assert job.process is not None and job.process.stdout is not None
    splitter = OutputSplitter()
    fd = job.process.stdout.fileno()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        for kind, text in splitter.feed(data):
            events.put((job, kind, text))
        if not data:
            break
    events.put((job, "closed", ""))


def _stop(jobs: Iterable[Job]) -> None:
    """SIGTERM every running job's process group, then SIGKILL what is left after a grace."""
    running = [job for job in jobs if job.process is not None and job.process.poll() is None]
    for job in running:
        _signal_group(job, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    for job in running:
        assert job.process is not None
        try:
            job.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _signal_group(job, signal.SIGKILL)
            job.process.wait()
        log.debug("%s: stopped (status %s)", job.tag, job.process.returncode)


def _signal_group(job: Job, signum: signal.Signals) -> None:
    assert job.process is not None
    with contextlib.suppress(ProcessLookupError):  # it has exited meanwhile
        os.killpg(job.process.pid, signum)


def _release(jobs: Iterable[Job]) -> None:
    for job in jobs:
        if job.reader is not None:
            job.reader.join(timeout=1.0)
        if job.process is not None and job.process.stdout is not None:
            job.process.stdout.close()
