"""The graceful stop of the plugin's streaming protocols: a file in the protocol's extra folder.

The project GUI runs in another process than the protocol's step, so its right-click action
cannot reach the running step: it creates the stop file, which the step looks for between polls
(the Stop button, by contrast, kills the process).
"""

from __future__ import annotations

import os
from pathlib import Path

# Right-click action that ends streaming gracefully (the Stop button kills the process).
STOP_ACTION = "STOP STREAMING"
STOP_FILE = "STOP_STREAMING.TXT"


class StreamStopping:
    """Mixin of a streaming Scipion protocol: the right-click STOP STREAMING action, and the
    stop file it creates that the running step checks, withdraws or keeps as a marker. Mixed
    into a pyworkflow protocol, whose ``_getExtraPath`` and ``isRunning`` it uses."""

    def _stopFile(self) -> str:
        return self._getExtraPath(STOP_FILE)

    def _stopRequested(self) -> bool:
        return os.path.exists(self._stopFile())

    def _withdrawStop(self) -> None:
        """Forget a stop the step asked of itself (it ends with an error instead)."""
        if os.path.exists(self._stopFile()):
            os.remove(self._stopFile())

    def getActions(self):
        """Right-click action in the project GUI (the GUI runs in another process)."""
        return [(STOP_ACTION, self.stopStreaming)] if self.isRunning() else []

    def stopStreaming(self, *_args) -> None:
        Path(self._stopFile()).touch()
