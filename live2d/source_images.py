"""Particle images read where the source wrote them, without Live2D's combined copy.

Warp 1.x writes each micrograph's stack once, so the built-in engine can read particles from
Warp's own stacks: a store in "source" mode keeps, per particle, the source's ``N@stack`` name and
a stamp of the stack (its size and modification time when it was imported) instead of a copy of
the pixels. :class:`SourceImages` serves them like a memory-mapped stack (``images[indices]``,
``len``, ``shape``), opening stacks as they are needed and checking each one's stamp first: a
stack that changed or vanished since the import serves zeros, and :meth:`SourceImages.usable`
tells the engine to leave its particles out (the session logs how many).

:func:`open_images` opens either kind: an MRC stack (memory-mapped) or a store's
``particles.sources.json``.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from live2d import cistem_star
from live2d.warp import split_image_name, stack_stamp

SOURCES_FILE = "particles.sources.json"
OPEN_STACKS = 256  # memory maps kept open at once


def open_images(path: str | os.PathLike):
    """The particle images at ``path``: ``(n, box, box)`` array-like, memory-mapped."""
    path = Path(path)
    if path.name.endswith(SOURCES_FILE):
        star = path.parent / json.loads(path.read_text(encoding="utf-8"))["star"]
        status = star.stat()
        # a cluster worker opens it for every chunk: read the store's star once per change
        return _sources(path, status.st_size, status.st_mtime_ns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
    mrc.close()  # the memory map stays valid until its last reference goes
    return data


@functools.lru_cache(maxsize=2)
def _sources(path: Path, _size: int, _mtime: int) -> SourceImages:
    return SourceImages.from_file(path)


class SourceImages:
    def __init__(self, root: Path, names: list[str], stamps: list[str], box: int) -> None:
        self.root = Path(root)
        self.box = box
        self.stack_of, stacks = pd.factorize(pd.Series([split_image_name(n)[1] for n in names]))
        self.stacks = list(stacks)
        self.index = np.array([split_image_name(n)[0] for n in names], dtype=np.int64)
        self.stamp_of_stack: list[str] = [""] * len(self.stacks)
        for stack, stamp in zip(self.stack_of, stamps, strict=True):
            self.stamp_of_stack[stack] = stamp
        self._open: OrderedDict[int, np.ndarray | None] = OrderedDict()

    @classmethod
    def from_file(cls, path: Path) -> SourceImages:
        described = json.loads(Path(path).read_text(encoding="utf-8"))
        table = cistem_star.read_star(Path(path).parent / described["star"])
        stamps = table["SRCSTAMP"] if "SRCSTAMP" in table else [""] * len(table)
        return cls(Path(described["root"]), table["ORIGNAME"].tolist(), list(stamps),
                   int(described["box"]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index), self.box, self.box)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, slice):
            indices = np.arange(*indices.indices(len(self)))
        indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        out = np.zeros((len(indices), self.box, self.box), dtype=np.float32)
        stacks = self.stack_of[indices]
        for stack in np.unique(stacks):
            data = self._stack(int(stack))
            if data is None:
                continue
            rows = np.flatnonzero(stacks == stack)
            out[rows] = data[self.index[indices[rows]]]
        return out

    def usable(self, n: int | None = None) -> np.ndarray:
        """Per particle (the first ``n``), whether its stack is still the one imported."""
        n = len(self) if n is None else n
        good = np.array([self._unchanged(s) for s in range(len(self.stacks))], dtype=bool)
        return good[self.stack_of[:n]] if len(good) else np.zeros(n, dtype=bool)

    def changed_stacks(self, n: int | None = None) -> list[str]:
        n = len(self) if n is None else n
        used = np.unique(self.stack_of[:n])
        return [self.stacks[s] for s in used if not self._unchanged(int(s))]

    def _unchanged(self, stack: int) -> bool:
        try:
            return stack_stamp(self.root / self.stacks[stack]) == self.stamp_of_stack[stack]
        except OSError:
            return False

    def _stack(self, stack: int) -> np.ndarray | None:
        if stack in self._open:
            self._open.move_to_end(stack)
            return self._open[stack]
        data = None
        if self._unchanged(stack):
            try:
                data = open_images(self.root / self.stacks[stack])
                if data.shape[1:] != (self.box, self.box):
                    data = None
            except (OSError, ValueError):
                data = None
        self._open[stack] = data
        if len(self._open) > OPEN_STACKS:
            self._open.popitem(last=False)
        return data

    def __getstate__(self) -> dict:  # sent to cluster workers: they open the stacks themselves
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state
