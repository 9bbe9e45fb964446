"""Where the slices of a classification cycle run: in this process, or on a Dask cluster.

A cycle splits into independent slices (the built-in engine's chunks of particle batches, the
cisTEM engine's refine2d runs) whose partial results the engine then merges in order.
:class:`LocalExecutor` runs the slices one after the other in this process, as Live2D always
did; :class:`DaskExecutor` sends them to the workers of a ``dask.distributed`` scheduler: an
existing one (``address``), one that ``dask-jobqueue`` starts on a batch system, or a
:class:`distributed.LocalCluster` on loopback.

Workers read the particle stack from the output folder, so the folder must be on a filesystem
they share with this process; :meth:`DaskExecutor.check_shared_folder` proves it before the first
cycle. ``dask`` is imported only when a DaskExecutor is made: the default path needs none of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from live2d.errors import CycleCancelled, EngineError

CONNECT_TIMEOUT = 30.0  # s to reach a scheduler before giving up
RETRIES = 3  # a slice that raised is run again this often (lost workers are handled apart)
WAIT_POLL = 0.2  # s between checks of the cancel event while slices run
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}
INSTALL_HINT = 'pip install "dask[distributed]"'


class ExecutorError(EngineError):
    """The executor cannot run slices (no scheduler, no shared folder, a slice kept failing)."""


class Executor(ABC):
    """Runs ``fn(shared, item)`` for every item and returns the results in the items' order."""

    distributed = False

    @abstractmethod
    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], *,
            cancel: threading.Event | None = None,
            on_done: Callable[[int], None] | None = None,
            retries: int | None = None,
            on_wait: Callable[[], None] | None = None) -> list[Any]:
        """``on_done(n)`` after each finished item (n finished so far); a set ``cancel`` event
        raises CycleCancelled and abandons the items still running. ``retries``: how often a
        slice that raised runs again, where the executor retries at all (None: its default).
        ``on_wait()``: called while waiting for remote items, a few times a second, in the
        caller's thread (e.g. to relay the slices' own progress)."""

    def slots(self) -> int | None:
        """How many slices can run at once on the workers; None: this process decides."""
        return None

    def task_threads(self) -> int | None:
        """How many threads one slice may use on its worker; None: this process decides."""
        return None

    def check_shared_folder(self, folder: Path) -> None:
        """Raise ExecutorError unless every worker sees ``folder``."""
        return None

    def check_programs(self, programs: Sequence[Path]) -> None:
        """Raise ExecutorError unless every worker can run each of ``programs``."""
        return None

    def describe(self) -> str:
        return "local"

    def close(self) -> None:
        return None


class LocalExecutor(Executor):
    """Today's behaviour: every slice in this process, one after the other."""

    def map(self, fn, shared, items, *, cancel=None, on_done=None, retries=None, on_wait=None):
        results = []
        for item in items:
            if cancel is not None and cancel.is_set():
                raise CycleCancelled("the cycle was stopped")
            results.append(fn(shared, item))
            if on_done is not None:
                on_done(len(results))
        return results


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ExecutorError(f"Dask is not installed: {INSTALL_HINT} (or pip install "
                            "'live2d[dask]')") from None
    return distributed


class DaskExecutor(Executor):
    """Slices as tasks on a Dask cluster.

    ``address``: ``tcp://host:port`` of a running scheduler. ``cluster``: a cluster object
    (LocalCluster, a dask-jobqueue cluster) to use and close with this executor. Neither: a
    LocalCluster on 127.0.0.1 with ``n_workers`` single-threaded worker processes.
    """

    distributed = True

    def __init__(self, address: str | None = None, cluster: Any = None, *,
                 n_workers: int | None = None, timeout: float = CONNECT_TIMEOUT,
                 retries: int = RETRIES) -> None:
        distributed = _import_distributed()
        self.retries = retries
        self._own_cluster = None
        self._task_threads: tuple[frozenset[str], int] | None = None  # workers, threads
        if address is None and cluster is None:
            cluster = distributed.LocalCluster(
                n_workers=n_workers or max(1, (os.cpu_count() or 2) // 2), threads_per_worker=1,
                processes=True, host="127.0.0.1", dashboard_address=None)
            self._own_cluster = cluster
        target = cluster if cluster is not None else address
        try:
            self.client = distributed.Client(target, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            if self._own_cluster is not None:
                self._own_cluster.close()
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); "
                "start one (`dask scheduler`, then `dask worker ADDRESS` on the nodes), check the "
                "address and that this machine can reach its port, or leave --scheduler out to "
                "run locally") from None
        if cluster is not None and self._own_cluster is None:
            self._own_cluster = cluster  # handed over: closed with this executor
        self.address = self.client.scheduler.address

    def describe(self) -> str:
        workers = len(self.client.scheduler_info().get("workers", {}))
        return f"dask at {self.address}, {workers} worker{'' if workers == 1 else 's'}"

    def wait_for_workers(self, n: int = 1, timeout: float = CONNECT_TIMEOUT) -> None:
        try:
            self.client.wait_for_workers(n, timeout=timeout)
        except TimeoutError:
            raise ExecutorError(f"the Dask scheduler at {self.address} has no workers after "
                                f"{timeout:g} s: start some (`dask worker {self.address}`)") \
                from None

    def check_shared_folder(self, folder: Path) -> None:
        """Every worker stats a marker file made here: a folder they cannot see would make every
        slice fail later with a less clear error."""
        self.wait_for_workers()
        folder = Path(folder).resolve()
        marker = folder / f".live2d-shared-{uuid.uuid4().hex}"
        marker.write_text("live2d shared-filesystem check\n", encoding="utf-8")
        try:
            seen = self.client.run(os.path.exists, str(marker))
        finally:
            marker.unlink(missing_ok=True)
        blind = sorted(worker for worker, exists in seen.items() if not exists)
        if blind:
            raise ExecutorError(
                f"workers cannot see {folder}: a shared filesystem is needed (mount it at the same "
                f"path on every worker node; blind workers: {', '.join(blind)})")

    def slots(self) -> int:
        workers = self.client.scheduler_info().get("workers", {}).values()
        return max(1, sum(int(worker.get("nthreads", 1)) for worker in workers))

    def task_threads(self) -> int:
        """The cores of each worker's machine shared among the slices its workers run at once
        (their threads), the fewest over the machines, at least 1. A worker's threads each run
        a slice: a slice using more threads than that share, such as this machine's thread
        count, would have more threads running than there are cores."""
        workers = self.client.scheduler_info().get("workers", {})
        known = frozenset(workers)
        if self._task_threads is not None and self._task_threads[0] == known:
            return self._task_threads[1]  # asked again only when workers come or go
        try:
            machines = self.client.run(_machine_cores)
        except Exception:  # a worker left while asked: nothing to share out, one each
            return 1
        cores: dict[str, int] = {}
        slots: dict[str, int] = {}
        for address, (machine, count) in machines.items():
            cores[machine] = count
            slots[machine] = slots.get(machine, 0) + int(
                workers.get(address, {}).get("nthreads", 1))
        threads = max(1, min((cores[m] // slots[m] for m in cores), default=1))
        self._task_threads = (known, threads)
        return threads

    def check_programs(self, programs: Sequence[Path]) -> None:
        """Every worker checks it can execute each program: cisTEM must be installed at the same
        path on every node, as it is on this one."""
        self.wait_for_workers()
        paths = [str(Path(program).resolve()) for program in programs]
        seen = self.client.run(_runnable, paths)
        missing = sorted(f"{worker}: {', '.join(absent)}"
                         for worker, absent in seen.items() if absent)
        if missing:
            raise ExecutorError("workers cannot run the cisTEM programs at the paths this machine "
                                "uses: install cisTEM at the same path on every worker node (or "
                                f"on the shared filesystem); missing on {'; '.join(missing)}")

    def map(self, fn, shared, items, *, cancel=None, on_done=None, retries=None, on_wait=None):
        from distributed import as_completed

        if not items:
            return []
        retries = self.retries if retries is None else retries
        # One copy of the shared state per worker, not one per task. A task's result, not
        # scattered data: the scheduler keeps what makes it, so when every worker holding it
        # dies (one lost while the one replacing an earlier loss has not joined yet) it is
        # made again elsewhere, as the slices are, where scattered data would fail the cycle.
        with warnings.catch_warnings():  # the size warning advises scattering: not here
            warnings.filterwarnings("ignore", message=".*[Ll]arge (object|graph)",
                                    category=UserWarning)
            shared_future = self.client.submit(_shared_state, shared, pure=False)
        futures = [self.client.submit(fn, shared_future, item, retries=retries, pure=False)
                   for item in items]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        pending = as_completed(futures, loop=self.client.loop, with_results=False)
        done = 0
        try:
            while done < len(futures):
                if cancel is not None and cancel.is_set():
                    raise CycleCancelled("the cycle was stopped")
                for future in pending.next_batch(block=False) or self._pause(on_wait):
                    try:
                        results[index[future.key]] = future.result()
                    except Exception as exc:  # a slice kept failing, or its workers all died
                        raise ExecutorError(f"a slice of the cycle failed on the Dask cluster "
                                            f"after {retries} retries: "
                                            f"{type(exc).__name__}: {exc}") from exc
                    done += 1
                    if on_done is not None:
                        on_done(done)
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            self.client.cancel([shared_future])
        return results

    @staticmethod
    def _pause(on_wait: Callable[[], None] | None) -> list:
        time.sleep(WAIT_POLL)
        if on_wait is not None:
            on_wait()
        return []

    def close(self) -> None:
        self.client.close()
        if self._own_cluster is not None:
            self._own_cluster.close()


def _shared_state(shared: Any) -> Any:
    """What every slice of a map is run with, as a task's result on the workers."""
    return shared


# glibc's mallopt parameters, and the values its dynamic thresholds grow to (64-bit)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD_MAX


@functools.cache
def keep_freed_memory() -> bool:
    """Undo, in this worker process, the malloc setting Dask's nanny gives its workers
    (``MALLOC_TRIM_THRESHOLD_=65536``, to hand freed memory back at once): setting it also
    fixes glibc's mmap threshold at 128 KB, so every large array is mapped afresh and its pages
    faulted in. The built-in engine's chunks ran 2.2 times as long on a worker as in one
    process. Sets the thresholds to what glibc's own dynamic ones grow to; False where the C
    library has no ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _machine_cores() -> tuple[str, int]:
    """The cores this worker may use (a batch system's share of a node), named by machine and
    core numbers so that workers sharing them are seen to, and how many they are."""
    cores = sorted(os.sched_getaffinity(0))
    return f"{socket.gethostname()}:{cores}", len(cores)


def _runnable(paths: list[str]) -> list[str]:
    """On a worker: those of ``paths`` it cannot execute."""
    return [path for path in paths if not os.access(path, os.X_OK)]


def load_cluster_config(path: Path) -> dict[str, Any]:
    """Keyword arguments of a dask-jobqueue cluster from a YAML or JSON file (a mapping)."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExecutorError(f"cannot read the cluster config {path}: {exc}") from None
    try:
        if Path(path).suffix.lower() == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as exc:
        raise ExecutorError(f"{path} is not valid YAML/JSON: {exc}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ExecutorError(f"{path} must hold a mapping of cluster options, e.g. "
                            "{cores: 8, memory: 32GB, queue: normal, jobs: 4}")
    return config


def make_executor(scheduler: str | None = None, cluster: str | None = None,
                  cluster_config: Path | None = None, *,
                  timeout: float = CONNECT_TIMEOUT) -> Executor:
    """The executor the command-line options ask for: ``scheduler`` an address, ``cluster``
    ``local``/``slurm``/``pbs``/``sge`` (options from ``cluster_config``, and ``jobs``: how many
    batch jobs to start, default 1); neither: LocalExecutor."""
    if scheduler and cluster:
        raise ExecutorError("give either --scheduler or --cluster, not both")
    if scheduler:
        return DaskExecutor(scheduler, timeout=timeout)
    if cluster is None:
        return LocalExecutor()
    options = load_cluster_config(cluster_config) if cluster_config else {}
    if cluster == "local":
        _import_distributed()
        return DaskExecutor(n_workers=options.get("n_workers"), timeout=timeout)
    if cluster not in JOBQUEUE_KINDS:
        raise ExecutorError(f"unknown cluster kind {cluster!r}: choose local, "
                            f"{', '.join(JOBQUEUE_KINDS)}")
    _import_distributed()
    try:
        import dask_jobqueue
    except ImportError:
        raise ExecutorError(f"--cluster {cluster} needs dask-jobqueue: pip install dask-jobqueue "
                            "(or use --scheduler with workers you start yourself)") from None
    jobs = int(options.pop("jobs", 1))
    try:
        batch_cluster = getattr(dask_jobqueue, JOBQUEUE_KINDS[cluster])(**options)
    except (TypeError, ValueError) as exc:
        raise ExecutorError(f"{cluster_config}: bad {cluster} cluster options: {exc}") from None
    batch_cluster.scale(jobs=jobs)
    return DaskExecutor(cluster=batch_cluster, timeout=timeout)
