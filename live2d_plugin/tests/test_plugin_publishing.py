"""The classification protocol's publishing budget (live2d_plugin.publishing)."""

from __future__ import annotations

import pytest

from live2d_plugin.publishing import PublishBudget


class Clock:
    """A clock the publish function moves forward by the publish's cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(costs: list[float], share: float = 0.1, always_below: float = 5.0
           ) -> tuple[PublishBudget[int], list[int], Clock]:
    clock, published = Clock(), []

    def publish(item: int) -> None:
        published.append(item)
        clock.now += costs[min(len(published), len(costs)) - 1]

    return PublishBudget(publish, share, always_below, clock), published, clock


def test_cheap_publishes_all_go_out_at_once():
    publisher, published, clock = budget([1.0])
    for cycle in range(1, 6):
        assert publisher.offer(cycle)
        clock.now += 0.5  # cycles far faster than 9 x the cost: cheap ones still all go
    assert published == [1, 2, 3, 4, 5]
    assert not publisher.flush()


def test_costly_publishes_take_at_most_their_share_and_the_newest_waits():
    publisher, published, clock = budget([20.0])
    assert publisher.offer(1)  # the first always goes: nothing was spent yet
    assert publisher.next_due() == pytest.approx(20.0 + 180.0)
    clock.now += 60.0
    assert not publisher.offer(2)
    clock.now += 60.0
    assert not publisher.offer(3)
    assert publisher.waiting == 3  # only the newest waits
    clock.now += 60.0  # 200 s: due
    assert publisher.offer(4)
    assert published == [1, 4]
    assert publisher.waiting is None
    spent = 2 * 20.0
    assert spent / publisher.next_due() <= 0.1 + 1e-9  # each publish, then 9 x its cost


def test_flush_publishes_the_waiting_cycle_whatever_the_budget():
    publisher, published, clock = budget([30.0])
    publisher.offer(1)
    clock.now += 1.0
    assert not publisher.offer(2)
    assert publisher.flush()
    assert published == [1, 2]
    assert not publisher.flush()


def test_a_failed_publish_is_not_kept_waiting():
    def fail(item: int) -> None:
        raise RuntimeError("disk full")

    publisher = PublishBudget(fail)
    with pytest.raises(RuntimeError):
        publisher.offer(1)
    assert publisher.waiting is None
    assert not publisher.flush()


def test_share_must_be_a_fraction():
    with pytest.raises(ValueError, match="share"):
        PublishBudget(print, share=0.0)
