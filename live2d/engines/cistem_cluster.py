"""cisTEM's refine2d slices as tasks on a Dask cluster; merge2d then runs where live2d runs.

Each task runs one refine2d slice on a worker with the same JobRunner as a local cycle, in the
cycle's scratch folder on the shared filesystem, and returns the slice's log. Four things a
local cycle gets for free need the cluster's help:

* distinct random streams: refine2d seeds from the wall-clock second it starts in, so the
  StartClock's promise (one start per second) is kept across every worker with a Dask lock
  (their clocks agree to well under a second under NTP);
* a hard stop: the caller removes the scratch folder when a cycle is stopped, and each task
  watches for that and ends its refine2d;
* progress: each task writes its slice's fraction done to a file in the scratch folder, which
  the caller reads while it waits;
* a lost worker: its refine2d dies with it (cistem_jobs.die_with_parent) before Dask reruns
  the slice elsewhere, so two runs never write the same slice's files.

``distributed`` is imported only inside the tasks and the clock: a local cycle needs none of it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from live2d.atomic import atomic_write_text
from live2d.engines.base import Progress
from live2d.engines.cistem_jobs import Job, JobRunner, StartClock

START_LOCK = "live2d-cistem-start"
WATCH_S = 0.5  # s between a task's looks at the scratch folder
PROGRESS_PREFIX = "progress_"  # + slice number: a slice's fraction done, for the caller


class ClusterStartClock(StartClock):
    """StartClock over every worker of a Dask cluster: whoever holds the cluster-wide lock waits
    for the next second to begin and starts then, so no two starts share a second."""

    def __init__(self) -> None:
        super().__init__()
        from distributed import Lock

        self._cluster_lock = Lock(START_LOCK)

    def reserve(self) -> float:
        with self._cluster_lock:
            now = time.time()
            start_at = int(now) + 1 + self.MARGIN_S
            time.sleep(start_at - now)
            return start_at


def run_slice(scratch: Path, item: tuple[int, Job]) -> tuple[str, list[str], list[str]]:
    """On a worker: run slice ``number`` (from 1) in the cycle's ``scratch`` folder, telling its
    progress through a file there (see read_progress). Returns the worker's address, the
    slice's log lines and its last lines (for failure messages)."""
    from distributed import get_worker

    number, job = item
    cancel = threading.Event()
    finished = threading.Event()
    watcher = threading.Thread(target=_watch, args=(scratch, cancel, finished),
                               name=f"watch {job.tag}", daemon=True)
    watcher.start()
    progress_file = scratch / f"{PROGRESS_PREFIX}{number}"

    def tell(progress: Progress) -> None:
        with contextlib.suppress(OSError):  # progress is a courtesy: never fail the slice
            atomic_write_text(progress_file, f"{progress.fraction:.4f}\n", durable=False)

    runner = JobRunner(scratch, cancel, tell, clock=ClusterStartClock())
    try:
        runner.run([job])
    finally:
        finished.set()
    return get_worker().address, runner.log, list(job.last_lines)


def read_progress(scratch: Path, slices: int) -> list[float]:
    """Each slice's fraction done, as its worker last wrote it (0 before it started)."""
    done = []
    for number in range(1, slices + 1):
        try:
            done.append(float((scratch / f"{PROGRESS_PREFIX}{number}").read_text()))
        except (OSError, ValueError):
            done.append(0.0)
    return done


def _watch(scratch: Path, cancel: threading.Event, finished: threading.Event) -> None:
    """Stop the slice once its cycle's scratch folder is gone: the cycle was stopped or failed."""
    while not finished.wait(WATCH_S):
        if not scratch.is_dir():
            cancel.set()
            return
