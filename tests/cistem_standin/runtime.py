"""What the stand-ins share at run time: cisTEM's progress bar, the build they pretend to be, and
the failure hooks tests switch on through environment variables.

* ``CISTEM_STANDIN_BUILD=no-openmp``: refine2d asks 24 questions (no thread count).
* ``CISTEM_STANDIN_FAIL=<program>:<mode>``, modes:
  ``exit`` (stop with status 3 when the work starts), ``error`` (print an ``Error:`` line, go
  on and exit 0), ``no-output`` (write no output file), ``hang`` (never finish; keep the
  progress bar going), ``hang-ignore-term`` (as hang, and ignore SIGTERM), ``nan`` (merge2d:
  one class average of NaN), ``kill-parent-once`` (the first run anywhere SIGKILLs the process
  that started it, as a crashed Dask worker, then works on silently for ever; later runs work
  normally; remembered by a file ``killed-parent`` in the record folder).
* ``CISTEM_STANDIN_FAIL_FIRST=<n>``: refine2d fails only in the slice starting at particle n.
* ``CISTEM_STANDIN_RECORD=<folder>``: each run writes its answers there (userinput.record).
* ``CISTEM_STANDIN_DELAY=<seconds>``: refine2d spends this long on each particle it refines,
  so that a slice lasts long enough to show progress.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from cistem_standin.userinput import out

BAR_WIDTH = 30


def openmp_build() -> bool:
    return os.environ.get("CISTEM_STANDIN_BUILD", "") != "no-openmp"


def particle_delay() -> float:
    return float(os.environ.get("CISTEM_STANDIN_DELAY", "0") or 0)


def failure_mode(program: str, first_particle: int | None = None) -> str | None:
    """The failure the test asked ``program`` (this slice of it) to show, if any."""
    wanted_program, _, mode = os.environ.get("CISTEM_STANDIN_FAIL", "").partition(":")
    if wanted_program != program:
        return None
    only_first = os.environ.get("CISTEM_STANDIN_FAIL_FIRST")
    if only_first and first_particle is not None and int(only_first) != first_particle:
        return None
    return mode


def act_on(mode: str | None, bar: ProgressBar | None) -> None:
    """Carry out the modes that end or stall the work; the others are for the caller."""
    if mode == "exit":
        out("\nStand-in: exiting with status 3 as asked\n")
        sys.exit(3)
    if mode == "error":
        out("\nError: stand-in failure requested\n")
    if mode == "kill-parent-once":
        marker = os.path.join(os.environ["CISTEM_STANDIN_RECORD"], "killed-parent")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getppid(), signal.SIGKILL)
        while True:  # silently: no write to the dead parent's pipe ends this process for it
            time.sleep(0.2)
    if mode in ("hang", "hang-ignore-term"):
        if mode == "hang-ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.2)
            if bar is not None:
                bar.update(1)


class ProgressBar:
    """cisTEM's ProgressBar: carriage-return updates at most once a second, a final line."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.started = self.shown = time.time()
        out(f"     0% [{' ' * BAR_WIDTH}] ???h:??m:??s   \r")

    def update(self, done: int) -> None:
        now = time.time()
        if now - self.shown < 1.0:
            return
        self.shown = now
        share = min(done / self.total, 1.0)
        eta = (now - self.started) * (1 - share) / share if share > 0 else 0.0
        bar = "=" * int(BAR_WIDTH * share)
        out(f"   {int(100 * share):3d}% [{bar:<{BAR_WIDTH}}] {_hms(eta)}  \r")

    def finish(self) -> None:
        out(f"   100% [{'=' * BAR_WIDTH}] done! ({_hms(time.time() - self.started)})\n")


def _hms(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}h:{whole // 60 % 60:02d}m{whole % 60:02d}s"
