"""A cycle's CPU work shared out over threads that each run single-threaded PyTorch.

PyTorch's own intra-op threads split every operation statically over the threads and wait for
all of them at its end: on a workstation that is not Live2D's alone (Warp, a Scipion GUI,
another job), the thread that lost its core stalls the others at every operation, and they spin
while they wait. Here each thread takes the next unit of work (a batch of particles, a class's
references) when it is done with its last, so a thread that lost its core holds up only its own
unit; PyTorch releases the GIL in its kernels, so the threads compute side by side. Units are
committed (added to sums, stored) strictly in their order, by one thread at a time, so the
numbers are those of running the units one after the other, for any number of threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

from live2d.errors import CycleCancelled

Unit = TypeVar("Unit")
Value = TypeVar("Value")

# Units computed but not yet committed, per thread: what they hold (a batch's weights over
# frames and translations) waits in memory, so a thread that lost its core for long makes the
# others wait (without spinning) instead of piling up work.
AHEAD_PER_THREAD = 2
CANCEL_POLL = 0.1  # s between the caller's checks of the cancel event while units run


def run_ordered(units: Sequence[Unit], compute: Callable[[Unit], Value],
                commit: Callable[[int, Value], None], threads: int, *,
                on_done: Callable[[int], None] | None = None,
                cancel: threading.Event | None = None) -> None:
    """``commit(i, compute(units[i]))`` for every unit, commits in index order, one at a time.

    With ``threads`` > 1 the units are computed on that many threads with single-threaded
    PyTorch; ``on_done(i)`` (after unit i is committed), the cancel checks and any error reach
    the caller in its own thread. A set ``cancel`` raises CycleCancelled between units."""
    if threads <= 1 or len(units) <= 1:
        for index, unit in enumerate(units):
            _check(cancel)
            commit(index, compute(unit))
            if on_done is not None:
                on_done(index)
        _check(cancel)
        return
    _OrderedRun(units, compute, commit, min(threads, len(units)), cancel).run(on_done)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CycleCancelled("the cycle was stopped")


class _OrderedRun(Generic[Unit, Value]):
    """One :func:`run_ordered` on threads: a shared counter hands out the units; whichever
    thread finds the next unit to commit ready commits it, and those after it that are."""

    def __init__(self, units: Sequence[Unit], compute: Callable[[Unit], Value],
                 commit: Callable[[int, Value], None], threads: int,
                 cancel: threading.Event | None) -> None:
        self.units, self.compute, self.commit = units, compute, commit
        self.threads, self.cancel = threads, cancel
        self.changed = threading.Condition()
        self.next_unit = 0  # the next unit to compute
        self.next_commit = 0  # the next unit to commit
        self.ready: dict[int, Value] = {}  # computed, waiting for their turn
        self.committing = False  # a thread is committing: the others leave it the ready ones
        self.committed: list[int] = []  # for the caller's on_done
        self.error: BaseException | None = None
        self.stop = False

    def run(self, on_done: Callable[[int], None] | None) -> None:
        workers = [threading.Thread(target=self._work, name=f"live2d-engine-{n}", daemon=True)
                   for n in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            while True:
                with self.changed:
                    while (not self.committed and self.error is None
                           and self.next_commit < len(self.units)
                           and not self._cancelled()):
                        self.changed.wait(CANCEL_POLL)
                    committed, self.committed = self.committed, []
                    error, finished = self.error, self.next_commit == len(self.units)
                if error is not None:
                    raise error
                if on_done is not None:
                    for index in committed:
                        on_done(index)
                _check(self.cancel)
                if finished:
                    return
        finally:
            with self.changed:
                self.stop = True
                self.changed.notify_all()
            for worker in workers:
                worker.join()

    def _work(self) -> None:
        torch.get_num_threads()  # PyTorch's per-thread set-up first, or it would undo the next
        torch.set_num_threads(1)
        ahead = AHEAD_PER_THREAD * self.threads
        try:
            while True:
                with self.changed:
                    while (not self.stop and self.next_unit < len(self.units)
                           and self.next_unit - self.next_commit >= ahead):
                        self.changed.wait()
                    if self.stop or self.next_unit >= len(self.units) or self._cancelled():
                        return
                    index = self.next_unit
                    self.next_unit += 1
                self._hand_in(index, self.compute(self.units[index]))
        except BaseException as exc:
            with self.changed:
                if self.error is None:
                    self.error = exc
                self.stop = True
                self.changed.notify_all()

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _hand_in(self, index: int, value: Value) -> None:
        with self.changed:
            self.ready[index] = value
            if self.committing:
                return
            self.committing = True
        while True:
            with self.changed:
                if self.stop or self.next_commit not in self.ready:
                    self.committing = False
                    self.changed.notify_all()
                    return
                index = self.next_commit
                value = self.ready.pop(index)
            self.commit(index, value)
            with self.changed:
                self.next_commit += 1
                self.committed.append(index)
                self.changed.notify_all()
