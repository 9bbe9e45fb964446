"""How often the classification protocol republishes its outputs: a bounded share of the run.

Publishing a cycle rewrites ``outputClasses`` (every classified particle's row, copied by SQL)
in the session's own thread, so its cost grows with the session: 3 s at 100,000 particles,
24 s at 1,000,000 (``bench/scipion_publish.py``). With a streaming update every few minutes
that is still a small share, but updates come as often as particles arrive, and an ab initio
job's cycles come faster. :class:`PublishBudget` publishes a cycle at once while publishing is
cheap, and otherwise only once the time since the last publish is at least ``1 / share - 1``
times what it cost, so publishing never takes more than ``share`` of the run: a cycle that
comes sooner waits (only the newest waiting one is kept) and goes out with the next cycle that
is due, or when the run ends (:meth:`flush`). Scipion's outputs then lag the session by at most
one publishing interval; the page and ``live2d status`` always show every cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")

# Publishing at most this share of the run's time...
PUBLISH_SHARE = 0.1
# ...once a publish costs more than this (s): below it every cycle goes out, as small sessions
# (and the tests' projects) expect.
ALWAYS_BELOW_SECONDS = 5.0


class PublishBudget(Generic[Item]):
    """Calls ``publish(item)`` for the items offered, within the share of time given."""

    def __init__(self, publish: Callable[[Item], None], share: float = PUBLISH_SHARE,
                 always_below: float = ALWAYS_BELOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the publishing share must be in (0, 1], not {share}")
        self._publish = publish
        self._share = share
        self._always_below = always_below
        self._clock = clock
        self._last_cost = 0.0
        self._last_end: float | None = None
        self.waiting: Item | None = None

    def next_due(self) -> float:
        """The clock time from which the next publish is within the budget."""
        if self._last_end is None or self._last_cost <= self._always_below:
            return float("-inf")
        return self._last_end + self._last_cost * (1.0 / self._share - 1.0)

    def offer(self, item: Item) -> bool:
        """Publishes ``item`` now if it is due (True), else keeps it as the one waiting, in
        place of any older one (False)."""
        if self._clock() < self.next_due():
            self.waiting = item
            return False
        self._run(item)
        return True

    def flush(self) -> bool:
        """Publishes the item waiting, if any, whatever the budget: the run ends."""
        if self.waiting is None:
            return False
        self._run(self.waiting)
        return True

    @property
    def last_cost(self) -> float:
        return self._last_cost

    def _run(self, item: Item) -> None:
        self.waiting = None  # a failed publish is not retried: the caller surfaces its error
        started = self._clock()
        self._publish(item)
        self._last_end = self._clock()
        self._last_cost = self._last_end - started
