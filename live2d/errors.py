"""The errors that cross module boundaries: raised in one part of Live2D, caught in another (the
session, the command line, the web server, the Scipion protocols).

They live below every other module (this one imports nothing of Live2D) so that any module can
raise or catch them without importing the module that happens to raise them: the executors need
the engines' errors without depending on the engines. Each one's message is written for the user
and says what to do; callers show it as it is.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """A classification cycle failed (a program missing or refusing its input, a slice that kept
    failing, too few particles for the classes asked for); the message names the program or stage
    and what it said. The session counts the failure and tries the cycle again; the user fixes
    what the message names (an installation, a setting) when it keeps failing."""


class CycleCancelled(RuntimeError):
    """A hard stop ended the cycle before it finished; nothing of it was kept. Raised by the
    engines and executors when their cancel event is set; the session or command that asked for
    the stop expects it, and the cycle runs again when the job is resumed."""


class SessionError(RuntimeError):
    """Something the user must fix (wrong folder, nothing to classify); the message says what.
    Raised by :class:`live2d.session.Session`; the command line, the web server and the Scipion
    protocols show the message and stop or wait for the fix."""


class SessionInUse(SessionError):
    """Another process classifies into the output folder (it holds its ``session.lock``:
    :mod:`live2d.session_lock`); the message names it. Nothing in the folder was changed. The
    web server attaches read-only instead; the other faces show the message and stop."""

    def __init__(self, message: str, folder: object, holder: str) -> None:
        super().__init__(message)
        self.folder = folder  # the output folder, a Path
        self.holder = holder  # who holds it, in words ("pid 1234 on node7, since ...")


class SelectionError(ValueError):
    """A mark or an export that cannot be done (no such class, an unknown mark, no particles in
    the chosen classes, an export file that cannot be written, an unreadable selection.json);
    the message says why and what to choose or restore instead."""


class SettingsError(ValueError):
    """A setting with a wrong type or out of range; the message names it and the allowed range.
    Raised by :meth:`live2d.schedule.Settings.from_dict`; the user corrects that setting."""


class NotifyError(SettingsError):
    """A notification target or mail server that cannot be used (not an http(s) URL or a
    mailto: address, a mailto: without a mail server); the message says what to give instead.
    Raised by :mod:`live2d.notify` when the targets are given; a kind of SettingsError, so that
    whoever shows settings errors shows it."""
