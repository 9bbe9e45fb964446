"""Crash-safe file replacement: temp file in the same folder, fsync, rename, fsync the folder;
and the repair of an append-only text file that a kill left with a torn last line."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words (``mode``: its ``st_mode``), for the
    messages that refuse to read or replace it."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give a disk-full error raised in the block ``path`` as its file name when it names none
    (a write's or a close's ENOSPC names no file), so that the message says where to free
    space."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextmanager
def replacing(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error the
    file is fsynced and renamed over ``path``, otherwise it is removed. For writers that need a
    file name (mrcfile), where :func:`atomic_write_bytes` needs the bytes. ``durable=False``
    skips the fsyncs: readers still see the old file or the new one whole, but a power cut
    may leave neither (for files as passing as a progress report)."""
    path = Path(path)
    # Per process and thread: two writers of one file never share a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with naming(path):
            yield tmp
            if durable:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with replacing(path, durable) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def cut_torn_line(path: str | os.PathLike) -> bool:
    """Cut off the last line of ``path`` when it does not end in a newline (a kill mid-append
    tore it), so that the next append starts a line of its own. Reads only the file's tail.
    True when something was cut; a missing file is left missing."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return False
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return False
            data = _tail(handle, size)
            handle.truncate(size - len(data) + data.rfind(b"\n") + 1)
    except FileNotFoundError:
        return False
    return True


def _tail(handle: BinaryIO, size: int, block: int = 1 << 16) -> bytes:
    """The file's bytes from its last newline on (a line is a few KB; read back in blocks)."""
    data = b""
    position = size
    while position > 0 and b"\n" not in data:
        step = min(block, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    return data


def fsync_dir(folder: str | os.PathLike) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
