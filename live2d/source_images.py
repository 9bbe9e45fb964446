"""Particle images read where the source wrote them, without Live2D's combined copy.

Warp 1.x writes each micrograph's stack once, so the built-in engine can read particles from
Warp's own stacks: a store in "source" mode keeps, per particle, the source's ``N@stack`` name and
a stamp of the stack (:func:`live2d.warp.stack_stamp`: its size, time and a fingerprint when it was
imported, or for another Live2D store's growing stack that store's id and generation) instead of
a copy of the pixels. :class:`SourceImages` serves them like a stack
(``images[indices]``, ``len``, ``shape``), opening stacks as they are needed and checking each
one's stamp first: a stack that changed or vanished since the import (a store's: emptied, or not
holding the images asked for) serves zeros, and :meth:`SourceImages.usable` tells the engine to
leave its particles out (the session logs how many).

:func:`open_images` opens either kind: an MRC stack or a store's ``particles.sources.json``. Both
are read with plain reads, never memory-mapped: a stack shortened while a cycle reads it raises
StackChanged (the cycle fails, and the next leaves its particles out), where a map would kill
the process with SIGBUS.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from live2d import cistem_star
from live2d.mrc import MrcStack, StackChanged
from live2d.output_folder import STORE_SOURCES, STORE_STATE
from live2d.warp import split_image_name, stamp_holds, store_stamp

OPEN_STACKS = 256  # stacks whose headers are kept
_NOT_OPEN = object()


def open_images(path: str | os.PathLike) -> MrcStack | SourceImages:
    """The particle images at ``path``: ``(n, box, box)`` array-like, read as they are asked
    for, with plain reads (:class:`live2d.mrc.MrcStack`: never memory-mapped, so a stack cut
    short under a cycle is an error, StackChanged, not a SIGBUS)."""
    path = Path(path)
    if path.name.endswith(STORE_SOURCES):
        # A cluster worker opens it for every chunk: read the store's star once per commit.
        # Keyed on the commit, not on the star's size: an import writes its rows to the star
        # before it commits them, and another thread opening the images in between would
        # otherwise keep the particles before them under the star's final size.
        commit = (path.parent / STORE_STATE).read_text(encoding="utf-8")
        return _sources(path, commit)
    return MrcStack(path)


@functools.lru_cache(maxsize=2)
def _sources(path: Path, commit: str) -> SourceImages:
    return SourceImages.from_file(path, json.loads(commit))


# The images last made from each sources file, with the store identity they were made for:
# a store that grew since is read as those plus its new particles (O(new), not O(particles)).
_GROWN: dict[Path, tuple[str, SourceImages]] = {}


class SourceImages:
    """The images of a store that reads its particles in place: where each one lies (a stack and
    an index in it), each stack checked against the stamp taken at import before it is read."""
    def __init__(self, root: Path, names: list[str], stamps: list[str], box: int) -> None:
        self.root = Path(root)
        self.box = box
        self.index = np.zeros(0, dtype=np.int64)
        self.stack_of = np.zeros(0, dtype=np.int64)
        self.stacks: list[str] = []
        self.stamp_of_stack: list[str] = []
        # A stack per (file, stamp): particles of one file imported at different times (a
        # growing stack) are each checked against the stamp taken when they were imported.
        self._stack_ids: dict[tuple[str, str], int] = {}
        self._open: OrderedDict[int, MrcStack | SourceImages | None] = OrderedDict()
        # The cache hands one object to every thread of a process (the session's engine, the
        # server's curation and thumbnails): its open stacks are looked up, added and evicted
        # under this lock, so that no thread loses a stack another evicts between two steps.
        self._open_lock = threading.Lock()
        self._add(names, stamps)

    def _add(self, names: list[str], stamps: list[str]) -> None:
        parsed = [split_image_name(name) for name in names]
        index = np.array([index for index, _ in parsed], dtype=np.int64)
        stack_of = np.empty(len(parsed), dtype=np.int64)
        for row, ((_, stack), stamp) in enumerate(zip(parsed, stamps, strict=True)):
            key = (stack, stamp)
            number = self._stack_ids.get(key)
            if number is None:
                number = self._stack_ids[key] = len(self.stacks)
                self.stacks.append(stack)
                self.stamp_of_stack.append(stamp)
            stack_of[row] = number
        self.index = np.concatenate([self.index, index])
        self.stack_of = np.concatenate([self.stack_of, stack_of])

    def extended(self, names: list[str], stamps: list[str]) -> SourceImages:
        """These images and the particles ``names`` after them: a new object (this one may be
        in use), made at the cost of the new particles, not of all of them."""
        grown = copy.copy(self)
        grown.stacks, grown.stamp_of_stack = list(self.stacks), list(self.stamp_of_stack)
        grown._stack_ids = dict(self._stack_ids)
        grown._open = OrderedDict()
        grown._open_lock = threading.Lock()
        grown._add(names, stamps)
        return grown

    @classmethod
    def from_file(cls, path: Path, store: dict) -> SourceImages:
        """The images ``path`` (a store's sources file) describes, up to the store's commit
        ``store`` (its ``store.json``)."""
        described = json.loads(Path(path).read_text(encoding="utf-8"))
        folder = Path(path).parent
        # Up to the store's commit (a row being appended is not a particle yet), and only the
        # rows added since the last cycle read it.
        table = cistem_star.read_growing_star(folder / described["star"],
                                              int(store["star_bytes"]), store_stamp(store))
        stamps = table["SRCSTAMP"] if "SRCSTAMP" in table else pd.Series([""] * len(table))
        # A star replaced whole (migrated, provenance filled in) has another inode: read whole.
        identity = f"{store_stamp(store)}:{(folder / described['star']).stat().st_ino}"
        root, box = Path(described["root"]), int(described["box"])
        known = _GROWN.get(Path(path))
        if (known is not None and known[0] == identity and known[1].root == root and
                known[1].box == box and len(known[1]) <= len(table)):
            start = len(known[1])
            images = known[1].extended(table["ORIGNAME"].iloc[start:].tolist(),
                                       list(stamps.iloc[start:]))
        else:
            images = cls(root, table["ORIGNAME"].tolist(), list(stamps), box)
        _GROWN[Path(path)] = (identity, images)
        return images

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
            rows = np.flatnonzero(stacks == stack)
            wanted = self.index[indices[rows]]
            data = self._stack(int(stack), int(wanted.max()) + 1)
            if data is None:
                continue
            try:
                out[rows] = data[wanted]
            except OSError as exc:  # shortened or replaced since its stamp was checked
                with self._open_lock:
                    self._open.pop(int(stack), None)
                raise StackChanged(
                    f"{self.stacks[stack]} changed while it was read ({exc}); the next cycle "
                    "leaves its particles out") from None
        return out

    def usable(self, n: int | None = None) -> np.ndarray:
        """Per particle (the first ``n``), whether its stack is still the one imported."""
        n = len(self) if n is None else n
        good = np.zeros(len(self.stacks), dtype=bool)
        for stack, images in self._needed(n).items():
            good[stack] = self._unchanged(stack, images)
        return good[self.stack_of[:n]]

    def changed_stacks(self, n: int | None = None) -> list[str]:
        n = len(self) if n is None else n
        return list(dict.fromkeys(self.stacks[stack] for stack, images in self._needed(n).items()
                                  if not self._unchanged(stack, images)))

    def _needed(self, n: int) -> dict[int, int]:
        """Per stack the first ``n`` particles use: how many images it must hold for them."""
        needed = np.zeros(len(self.stacks), dtype=np.int64)
        np.maximum.at(needed, self.stack_of[:n], self.index[:n] + 1)
        return {int(stack): int(needed[stack]) for stack in np.unique(self.stack_of[:n])}

    def _unchanged(self, stack: int, images: int) -> bool:
        return stamp_holds(self.root / self.stacks[stack], self.stamp_of_stack[stack], images)

    def _stack(self, stack: int, images: int) -> MrcStack | SourceImages | None:
        """The stack, opened once; opened again when ``images`` are wanted and it held fewer
        then: a growing store's stack opened before its later particles came."""
        with self._open_lock:
            return self._stack_locked(stack, images)

    def _stack_locked(self, stack: int, images: int) -> MrcStack | SourceImages | None:
        data = self._open.get(stack, _NOT_OPEN)
        if data is not _NOT_OPEN:
            self._open.move_to_end(stack)
            if data is None or len(data) >= images:
                return data
        data = None
        if self._unchanged(stack, images):
            try:
                data = open_images(self.root / self.stacks[stack])
                if data.shape[1:] != (self.box, self.box) or len(data) < images:
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
        del state["_open_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open_lock = threading.Lock()
