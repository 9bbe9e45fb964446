"""Telling the web server (and the Scipion protocol) of a session's events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("live2d")
Listener = Callable[[dict[str, Any]], None]


class Listeners:
    """The listeners of a session (or of a read-only view of one), each called with every
    event from the thread that emits it."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """``listener(event)`` is called on every change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken page must never stop classification (or the view)
                log.exception("session listener failed")
