"""One writer per output folder: the process that classifies into a folder holds an exclusive
OS lock (``flock``) on its ``session.lock`` for as long as its session is open.

Two writers damage a folder: opening a session empties ``work/`` (the other's running cycle),
cuts the store back to its commit point (rows the other appended but has not committed yet) and
drops batch files no record names yet (the other's running streaming update). So a second
writer is refused before it touches anything, with a message naming the holder; readers
(``live2d status``, ``export``, ``yield``, a read-only page) ask :func:`holder` and never lock.

The kernel releases an ``flock`` when the last descriptor of it closes, whatever ends the
process (SIGKILL, a crash, a power cut of the node): a killed run never leaves a stale lock, so
nobody is ever told to delete a lock file. The file's text (pid, host, start, command) is only
for the message: whether the folder is in use is the lock, never the text.

Within one process the lock is counted, not taken twice: a process coordinates its own sessions
(the web server opens the folder a page picks again before closing the one it had), and
``flock`` on a second descriptor would refuse the process its own folder. Forked children share
the descriptor and keep the folder locked while they live (they work for the session); programs
started with exec do not inherit it (descriptors are close-on-exec).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from live2d.errors import SessionInUse
from live2d.output_folder import SESSION_LOCK

# A reader's probe holds a shared lock for microseconds: a writer that meets one tries again
# for this long before it takes the folder for another writer's.
PROBE_GRACE_SECONDS = 0.5

_held: dict[Path, tuple[int, int]] = {}  # lock file -> (descriptor, sessions of this process)
_held_lock = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """Who holds a folder's lock, as its ``session.lock`` says (all empty where it says
    nothing readable yet: the holder is between taking the lock and writing its name)."""

    pid: int = 0
    host: str = ""
    since: float = 0.0
    command: str = ""

    def describe(self) -> str:
        """E.g. "pid 1234 on node7, since 2026-12-06 10:02 UTC, `live2d run`"."""
        if not self.pid:
            return "a process that has not said which yet"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.since))
        command = f", `{self.command}`" if self.command else ""
        return f"pid {self.pid} on {self.host or 'an unknown host'}, since {when}{command}"


def in_use_message(folder: Path, holder: Holder) -> str:
    return (f"{folder} is in use by another Live2D process ({holder.describe()}): stop it "
            "first, or wait for it to finish, before classifying into this folder. To watch "
            "it meanwhile, `live2d serve` attaches to the folder read-only, and `live2d "
            "status`, `live2d yield` and `live2d export` read it without changing it")


def this_command() -> str:
    """What this process was started as, for the holder's message: ``live2d run``, or the
    script's name (a Scipion protocol's runner)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name in ("live2d", "__main__.py", "cli.py") and len(sys.argv) > 1:
        return f"live2d {sys.argv[1]}"
    return name


class SessionLock:
    """This process's hold on one output folder; :meth:`release` once (the session's close)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._released = False

    @classmethod
    def acquire(cls, folder: str | os.PathLike, command: str | None = None) -> SessionLock:
        """Take ``folder``'s lock (the folder exists). Raises SessionInUse, naming the
        holder, when another process holds it; nothing in the folder is changed then."""
        path = Path(folder).resolve() / SESSION_LOCK
        with _held_lock:
            if path in _held:
                descriptor, count = _held[path]
                _held[path] = (descriptor, count + 1)
                return cls(path)
            # Not O_TRUNC: opening must not wipe the holder's text before the lock is ours.
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _lock_or_raise(descriptor, path)
                _write_holder(descriptor, Holder(os.getpid(), socket.gethostname(),
                                                 time.time(), command or this_command()))
            except BaseException:
                os.close(descriptor)  # releases the lock if it was taken
                raise
            _held[path] = (descriptor, 1)
        return cls(path)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _held_lock:
            descriptor, count = _held[self.path]
            if count > 1:
                _held[self.path] = (descriptor, count - 1)
                return
            del _held[self.path]
            # Emptied before unlocking, so that the next holder's text is never cut; the text
            # is advice, and closing releases the lock all the same where this fails.
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
            os.close(descriptor)


def holder(folder: str | os.PathLike) -> Holder | None:
    """Who holds ``folder``'s lock, where another process does; None where none does (or
    this one does). Changes nothing: a folder without a lock file gets none."""
    path = Path(folder).resolve() / SESSION_LOCK
    with _held_lock:
        if path in _held:
            return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def _lock_or_raise(descriptor: int, path: Path) -> None:
    deadline = time.monotonic() + PROBE_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                found = _read_holder(descriptor)
                raise SessionInUse(in_use_message(path.parent, found), path.parent,
                                   found.describe()) from None
            time.sleep(0.05)


def _write_holder(descriptor: int, who: Holder) -> None:
    # Written in place, not replaced by a rename: the lock belongs to this inode, and a renamed
    # file would be one nobody holds. Readers that catch it half-written say "not said yet".
    text = json.dumps({"pid": who.pid, "host": who.host, "since": round(who.since, 1),
                       "command": who.command}).encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text + b"\n", 0)
    os.fsync(descriptor)


def _read_holder(descriptor: int) -> Holder:
    try:
        values = json.loads(os.pread(descriptor, 4096, 0))
        return Holder(int(values["pid"]), str(values["host"]), float(values["since"]),
                      str(values.get("command", "")))
    except (OSError, ValueError, TypeError, KeyError):
        return Holder()
