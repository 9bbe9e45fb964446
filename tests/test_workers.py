"""The built-in engine's threads: units computed side by side, committed in their order."""

import threading

import pytest
import torch

from live2d.engines.builtin.workers import run_ordered
from live2d.errors import CycleCancelled

WAIT = 10.0  # s: only reached when the behaviour tested is broken


def test_units_finishing_out_of_order_are_committed_in_order():
    """Unit 0 finishes only after unit 1 was computed (on the other thread): commits still go
    0, 1, 2, ..., each once, one at a time; on_done comes in the caller's thread."""
    second_done = threading.Event()
    computed, committed, done, inside = [], [], [], []
    threads_used = set()

    def compute(unit: int) -> int:
        threads_used.add((threading.current_thread().name, torch.get_num_threads()))
        if unit == 0:
            assert second_done.wait(WAIT)
        computed.append(unit)
        if unit == 1:
            second_done.set()
        return unit * unit

    def commit(index: int, value: int) -> None:
        inside.append(index)
        assert len(inside) == 1  # one commit at a time
        committed.append((index, value))
        inside.remove(index)

    def on_done(index: int) -> None:
        assert threading.current_thread() is threading.main_thread()
        done.append(index)

    run_ordered(range(12), compute, commit, 2, on_done=on_done)
    assert computed.index(1) < computed.index(0)
    assert committed == [(i, i * i) for i in range(12)]
    assert done == list(range(12))
    assert {n for _, n in threads_used} == {1}  # single-threaded PyTorch in each
    assert len(threads_used) == 2


def test_an_error_in_a_unit_reaches_the_caller_and_stops_the_threads():
    started = []

    def compute(unit: int) -> int:
        started.append(unit)
        if unit == 3:
            raise ValueError("unit 3 is broken")
        return unit

    with pytest.raises(ValueError, match="unit 3"):
        run_ordered(range(200), compute, lambda _, __: None, 2)
    assert len(started) < 200  # the others stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("live2d-engine")]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_cancel_stops_between_units(threads):
    cancel = threading.Event()
    committed = []

    def commit(index: int, _: int) -> None:
        committed.append(index)
        if index == 2:
            cancel.set()

    with pytest.raises(CycleCancelled):
        run_ordered(range(100), lambda unit: unit, commit, threads, cancel=cancel)
    # at most the units already handed out when the cancel came: a few per thread
    assert committed[:3] == [0, 1, 2] and len(committed) < 100
