"""The one interface every classification engine implements.

Engines exchange data only through files in cisTEM's formats: an MRC particle stack, a cisTEM
star file of per-particle parameters (row i = particle i of the stack) and an MRC stack of class
averages. So any engine can continue any other engine's cycle, and any cycle's output can be taken
into cisTEM, RELION or cryoSPARC.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from live2d import cistem_star
from live2d.errors import EngineError


@dataclass(frozen=True)
class CycleParams:
    """What one refine2d-style cycle needs, in cisTEM's units (Å, degrees, fractions)."""

    pixel_size: float  # Å per pixel of the stack; class averages are written at the same size
    mask_radius: float  # Å
    high_res: float = 8.0  # Å
    low_res: float = 300.0  # Å
    angular_step: float = 15.0  # degrees; 0 = automatic from pixel size and mask radius
    search_range: float = 0.0  # Å; 0 = as far as the box allows
    smoothing: float = 1.0  # likelihood inverse temperature, >= 0.01
    fraction: float = 1.0  # of the particles used in this cycle, (0, 1]
    normalize: bool = True
    invert_contrast: bool = True  # the stack has white protein (Warp exports it so)
    exclude_blank_edges: bool = False
    auto_mask: bool = False
    auto_center: bool = True
    # An ab initio job's startup cycles: a class left with almost no particles restarts as a
    # split of a large class (:class:`Split`; the built-in engine only).
    rebalance: bool = False


@dataclass(frozen=True)
class StreamBatch:
    """One batch of a streaming update (:meth:`Engine.run_update`): particles ``start`` to
    ``stop`` (stack order), the file of their kept contribution to the class sums (read unless
    they are classified now), and where to write their new contribution when they are:
    when asked (``classify``; their rows are in the request's star), or because their kept
    sums do not fit this update (their rows are then read from ``rows``). An engine whose
    program keeps partial sums in a format of its own (cisTEM's refine2d dump, which merge2d
    reads) keeps them at ``dump``, writing new ones to ``dump_out``. ``dropped``: the classes
    (0-based) re-seeded since the batch was classified: its kept contribution to them counts
    no more, and its particles whose best class they were wait, in no class, until the batch
    is classified again."""

    start: int
    stop: int
    sums: Path
    sums_out: Path
    classify: bool
    rows: Path | None = None  # where the rows of a batch not classified now are kept
    dump: Path | None = None
    dump_out: Path | None = None
    dropped: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return self.stop - self.start

    def kept_rows(self, kept: str) -> pd.DataFrame:
        """The rows of this batch, not asked to be classified, which must be after all because
        what the engine kept of it (``kept``: "sums", "dump") does not fit this update."""
        if self.rows is None:
            raise EngineError(f"the kept {kept} of particles {self.start + 1}-{self.stop} "
                              "do not fit this update and their rows were not given")
        try:
            return cistem_star.read_star(self.rows)
        except cistem_star.StarFormatError as exc:
            raise EngineError(f"cannot classify particles {self.start + 1}-{self.stop} again: "
                              f"{exc}") from None


@dataclass(frozen=True)
class CycleRequest:
    """One cycle asked of an engine, as paths in and out (cisTEM's formats): the particle stack
    and its star, where the star and the class averages go, and the parameters."""

    stack: Path  # MRC stack of all particles
    star_in: Path  # cisTEM star, one row per particle of the stack
    star_out: Path  # run_cycle writes it; start_classes does not (as refine2d in init mode)
    classes_out: Path  # MRC stack of class averages, pixel size set
    params: CycleParams
    n_classes: int  # K
    classes_in: Path | None = None  # previous class averages; None for start_classes
    workdir: Path | None = None  # scratch for temporary files; the engine removes what it made
    threads: int = 1
    seed: int = 0
    # A streaming update's batches, in order; together they cover every particle in the
    # classes (run_update only).
    batches: tuple[StreamBatch, ...] = ()


@dataclass
class Progress:
    """How far a running cycle is, for the pages (called often: cheap to make)."""

    stage: str  # e.g. "noise spectrum", "classifying", "merging"
    fraction: float  # 0..1 of this cycle
    particles_per_second: float = 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Reseeded:
    """A class of a streaming update re-seeded because its average was the same view as
    another's (classes 0-based; ``similarity``: the rotation-invariant correlation of the two
    averages), from particles of class ``source``."""

    cls: int
    duplicated: int
    similarity: float
    source: int

    def sentence(self) -> str:
        return (f"class {self.cls + 1} duplicated class {self.duplicated + 1} (similarity "
                f"{self.similarity:.2f}): re-seeded from class {self.source + 1}")


@dataclass(frozen=True)
class Split:
    """A class of an ab initio job's startup cycle that held almost no particles
    (``particles``, its best class), re-seeded from a random sample of the particles of class
    ``source``: a second copy of that class, which the two split between them (classes
    0-based)."""

    cls: int
    particles: int
    source: int


def split_sentence(splits: tuple[Split, ...]) -> str:
    """The log's line for the classes a cycle re-seeded by splitting others."""
    held = ", ".join(f"{s.cls + 1} ({s.particles})" for s in splits)
    sources = ", ".join(str(s.source + 1) for s in splits)
    return (f"class{'es' if len(splits) > 1 else ''} {held} held almost no particles: "
            f"re-seeded from a random sample of class{'es' if len(splits) > 1 else ''} "
            f"{sources}, to split {'them' if len(splits) > 1 else 'it'}")


@dataclass(frozen=True)
class Rebuilt:
    """Kept batches of a streaming update classified again although not asked for, because
    what the engine kept of them (``kept``: class sums, refine2d dumps) does not fit this
    update: batches from ``starts``, ``particles`` in all; ``reasons``: why, e.g. "made with
    another mask" (:func:`unfit_reasons`)."""

    starts: tuple[int, ...]
    particles: int
    reasons: tuple[str, ...]
    kept: str = "class sums"

    def sentence(self) -> str:
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return (f"kept {self.kept} of {len(self.starts)} batch(es) do not fit this update{why}:"
                f" their {self.particles:,} particles were classified again")


def unfit_reasons(made: dict[str, Any] | None, key: dict[str, Any],
                  parts: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Why kept results made with ``made`` (their key; None: missing or unreadable) do not fit
    this update's ``key``: "made with another" each of ``parts`` (a name for the user, and the
    key's entries it covers) whose entries differ."""
    if made is None:
        return ("missing or unreadable",)
    changed = [name for name, entries in parts.items()
               if any(made.get(entry) != key.get(entry) for entry in entries)]
    if not changed:  # the same key, yet unusable: kept by a Live2D that kept less
        return ("kept in an older form",)
    return (f"made with another {' and '.join(changed)}",)


def emptied_sentence(classes: tuple[int, ...]) -> str:
    """The log's line for ``classes`` (0-based) re-seeded because no particle's weight was in
    them."""
    listed = ", ".join(str(c + 1) for c in classes)
    return (f"class{'es' if len(classes) > 1 else ''} {listed} "
            f"{'were' if len(classes) > 1 else 'was'} empty: re-seeded from the particles that "
            "fit worst")


@dataclass
class CycleResult:
    """What an engine did in one cycle: the files it wrote, the class populations and its
    throughput (particle-passes per second), with its log lines."""

    classes: Path
    star: Path | None  # None for start_classes
    class_counts: list[int]  # particles whose best class is k+1 (used ones only)
    particles_processed: int
    seconds: float
    log: list[str] = field(default_factory=list)
    # A streaming update's: the starts of the batches it classified (and wrote sums_out of);
    # the classes it re-seeded because they duplicated another (the batches it did not
    # classify count for them no more); the particles of those batches in no class for that
    # (their best class was re-seeded after they were classified).
    batches_classified: tuple[int, ...] = ()
    reseeded: tuple[Reseeded, ...] = ()
    waiting: int = 0
    # The kept batches classified again because what was kept of them does not fit (among
    # batches_classified); the classes (0-based) left empty and re-seeded (any cycle). The
    # session's log tells the user of both.
    rebuilt: Rebuilt | None = None
    emptied: tuple[int, ...] = ()
    split: tuple[Split, ...] = ()  # an ab initio startup cycle's (CycleParams.rebalance)

    @property
    def particles_per_second(self) -> float:
        return self.particles_processed / self.seconds if self.seconds > 0 else 0.0


class Engine(ABC):
    """A 2D classification engine behind one contract: paths in, paths out. ``start_classes``
    makes the random-start averages, ``run_cycle`` one cycle of refinement; a ``cancel`` event
    set ends either early (raising CycleCancelled)."""

    name: str = "engine"
    # Whether the engine reads one MRC stack of every particle (refine2d does); if not, the
    # store may read Warp's own stacks in place (live2d.source_images) instead of copying them.
    needs_particle_stack: bool = True
    # Whether run_update exists: streaming updates that classify only some batches and keep
    # every batch's contribution to the class sums.
    streams: bool = False

    @abstractmethod
    def start_classes(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """Write ``request.n_classes`` random-start class averages to ``request.classes_out``."""

    @abstractmethod
    def run_cycle(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """Classify every used particle against ``request.classes_in``; write star and classes."""

    def run_update(
        self, request: CycleRequest, progress: ProgressCallback, cancel: threading.Event
    ) -> CycleResult:
        """A streaming update: classify the particles of ``request.batches`` marked
        ``classify`` (their rows: ``request.star_in``) against ``request.classes_in`` and write
        their sums; the classes are made from every batch's sums, added in batch order. The
        star written holds the rows of the batches classified; the result's class counts are
        every batch's."""
        raise EngineError(f"the {self.name} engine does not run streaming updates yet: use "
                          "seeded startup or refinement jobs with it")

    def describe(self) -> str:
        """One line for the log: engine name, version, device."""
        return self.name


def class_counts(best_class: np.ndarray | pd.Series, n_classes: int) -> list[int]:
    """Particles per class from cisTEM's best-class column (negative = not used, 0 = never)."""
    values = np.asarray(best_class, dtype=np.int64)
    used = values[(values > 0) & (values <= n_classes)]
    return np.bincount(used - 1, minlength=n_classes).astype(int).tolist()
