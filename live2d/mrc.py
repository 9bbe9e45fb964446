"""Live2D's MRC stacks of 2D images: how they are read and labelled, once for every user."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from live2d.atomic import file_kind


def mark_image_stack(path: str | Path) -> None:
    """Label ``path`` as a stack of 2D images (space group 0, one section per image) in place.

    Engines write class averages as 3D arrays (merge2d and mrcfile both label them volumes);
    Scipion, RELION and cryoSPARC then read "64 x 64 x 6" instead of "6 images of 64 x 64". Only
    the header changes; the pixel size is kept, along z too.
    """
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        pixel = float(mrc.voxel_size.x)
        mrc.set_image_stack()
        mrc.voxel_size = (pixel, float(mrc.voxel_size.y), pixel)


def read_images(path: str | Path) -> np.ndarray:
    """``(n, h, w)`` float32 images of an MRC file, whatever its header calls them: mrcfile gives
    an image stack and a volume as the same 3-D array, one image as 2-D and a volume stack as
    4-D. A copy, valid once the file is closed."""
    with mrcfile.open(path, permissive=True) as mrc:
        if mrc.data is None:
            raise ValueError(f"{path}: no image data")
        data = np.array(mrc.data, dtype=np.float32)
    return data.reshape((-1, *data.shape[-2:]))


# ------------------------------------------------------------------ stacks read where they lie
# Stacks that other programs write (Warp's, another store's) are read with plain reads, never
# memory-mapped: a file shortened under a map kills the process with SIGBUS, where a short read is
# an error Live2D handles. Only regular files are opened, without blocking: a FIFO in a stack's
# place would hang open() (and read()) in the kernel, deaf to SIGTERM.
HEADER_BYTES = 1024
_MODES = (0, 1, 2, 6, 12)  # real-valued MRC modes numpy has a dtype for
_LARGEST_IMAGES = 2 ** 40  # nx·ny·nz beyond this is not a header but other bytes read as one


class StackChanged(OSError):
    """A stack is shorter, or no longer the file it was, while it is read."""


class NotAStack(ValueError):
    """A file that is not an MRC stack at all, in a way that waiting will not fix (not a regular
    file, a header contradicting the file's size): the message says what is wrong, as a clause
    about "it" (callers name the file)."""


class StackIncomplete(ValueError):
    """A stack whose header is not written yet (Warp may still be writing it)."""


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of ``path``, which must be a regular file; NotAStack otherwise.
    Opened non-blocking: a FIFO swapped in after the check cannot block the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAStack(f"it is {file_kind(mode)}, not a regular file (Live2D reads only stacks "
                        "that are files)")
    return fd


def read_exactly(fd: int, size: int, offset: int, path: str | os.PathLike) -> bytes:
    """``size`` bytes at ``offset``; StackChanged if the file ends before them."""
    data = os.pread(fd, size, offset)
    while len(data) < size:  # a regular file gives all at once unless it ends: be sure
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise StackChanged(f"{path} ends at {offset + len(data)} bytes, {offset + size} "
                               "were there: it was shortened or replaced while it was read")
        data += more
    return data


@dataclass(frozen=True)
class StackHeader:
    """What reading a stack's images needs from its header, checked against the file's size
    before anything is allocated (a header claiming a 2 GiB extended header is refused, not
    read)."""

    nx: int
    ny: int
    nz: int
    dtype: np.dtype
    data_offset: int  # header and extended header
    file_size: int

    @property
    def image_bytes(self) -> int:
        return self.nx * self.ny * self.dtype.itemsize

    @property
    def complete_images(self) -> int:
        """Images wholly in the file (the header's count at most)."""
        return min(self.nz, max(0, self.file_size - self.data_offset) // self.image_bytes)


def read_stack_header(fd: int, path: str | os.PathLike) -> StackHeader:
    """The header of the open stack ``fd``: NotAStack if it cannot be one, StackIncomplete if
    it is not written yet."""
    size = os.fstat(fd).st_size
    if size < HEADER_BYTES:
        raise StackIncomplete(f"{size} bytes, less than an MRC header")
    raw = read_exactly(fd, HEADER_BYTES, 0, path)
    for order in ("<", ">"):  # byte order by what makes sense (machine stamps are often wrong)
        nx, ny, nz, mode = np.frombuffer(raw, dtype=f"{order}i4", count=4).tolist()
        if mode in _MODES:
            break
    else:
        if not any(raw[:16]):
            raise StackIncomplete("its header is still blank")
        raise NotAStack("it is not an MRC stack (no MRC data mode in its header)")
    nsymbt = int(np.frombuffer(raw, dtype=f"{order}i4", count=1, offset=92)[0])
    if nx == ny == nz == 0:
        raise StackIncomplete("its header is still blank")
    if min(nx, ny) < 1 or nz < 0 or nx * ny * nz > _LARGEST_IMAGES:  # (no images yet: fine)
        raise NotAStack(f"it is not an MRC stack: its header says {nx}×{ny}×{nz} pixels")
    if nsymbt < 0 or HEADER_BYTES + nsymbt > size:
        raise NotAStack(f"its header announces a {nsymbt}-byte extended header in a "
                        f"{size}-byte file: the file is damaged or not an MRC stack")
    return StackHeader(nx, ny, nz, np.dtype(mrcfile.utils.dtype_from_mode(mode)).newbyteorder(
        order), HEADER_BYTES + nsymbt, size)


class MrcStack:
    """An MRC stack's images read on demand with plain reads (``images[indices]``, ``len``,
    ``shape``), as float32; each read opens the file again, so this pickles to cluster workers
    and holds no descriptor. The header is read once: images past the count it gave are not
    there (open the stack again once it grew). A read that finds the file shorter raises
    StackChanged."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        fd = open_regular(self.path)
        try:
            self.header = read_stack_header(fd, self.path)
        finally:
            os.close(fd)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.header.nz, self.header.ny, self.header.nx)

    def __len__(self) -> int:
        return self.header.nz

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, (int, np.integer)):
            return self[[int(indices)]][0]
        if isinstance(indices, slice):
            indices = np.arange(*indices.indices(len(self)))
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"{self.path} holds {n} images")
        indices = np.where(indices < 0, indices + n, indices)
        return self.read(indices)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images ``indices`` (valid, any order): one read per run of consecutive images."""
        header = self.header
        unique, inverse = np.unique(indices, return_inverse=True)
        native = header.dtype == np.dtype(np.float32)
        # Increasing (as the engine asks): the images read are the answer, no second copy.
        direct = native and len(unique) == len(indices) and bool(np.all(unique == indices))
        buffer = np.empty((len(unique), header.ny, header.nx), dtype=header.dtype)
        if len(unique):
            try:
                fd = open_regular(self.path)
            except NotAStack as exc:  # it was a stack when this was opened
                raise StackChanged(f"{self.path}: {exc}") from None
            try:
                size = header.image_bytes
                flat = memoryview(buffer.reshape(-1).view(np.uint8))
                breaks = (np.flatnonzero(np.diff(unique) != 1) + 1).tolist()
                firsts = unique.tolist()
                for start, stop in zip([0, *breaks], [*breaks, len(firsts)], strict=True):
                    view = flat[start * size:stop * size]
                    offset = header.data_offset + firsts[start] * size
                    got = os.preadv(fd, [view], offset)
                    if got < len(view):
                        view[got:] = read_exactly(fd, len(view) - got, offset + got, self.path)
            finally:
                os.close(fd)
        if direct:
            return buffer
        return buffer.astype(np.float32, copy=False)[inverse.reshape(-1)]
