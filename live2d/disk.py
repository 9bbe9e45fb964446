"""Disk use of a session's output folder, and whether the next cycles still fit.

A session runs for days: people should see what it costs on disk before the disk is full (a
full disk stops new work cleanly, but stops it). What a cycle writes is estimated from what it
holds: the star of every particle, the class averages and their thumbnails.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STAR_BYTES_PER_PARTICLE = 200  # a cycle star's row
THUMBNAIL_BYTES = 20_000  # one class's PNG, generously
CYCLES_AHEAD = 5  # free space below what this many cycles write is "low"


@dataclass(frozen=True)
class DiskUse:
    """The output folder's disk use as last measured, and whether the free space is too low for the
    next cycles."""
    used: int  # bytes in the output folder
    free: int  # bytes free on its filesystem
    per_particle: float  # used / particles (0 without particles)
    next_cycle: int  # bytes a cycle of this size writes, about
    low: bool  # free space below CYCLES_AHEAD cycles

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        per = f", {self.per_particle / 1024:.1f} KB per particle" if self.per_particle else ""
        text = f"{_size(self.used)} used{per}; {_size(self.free)} free"
        if self.low:
            text += (f": low, the next {CYCLES_AHEAD} cycles need about "
                     f"{_size(CYCLES_AHEAD * self.next_cycle)}")
        return text


def folder_bytes(folder: str | os.PathLike) -> int:
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += folder_bytes(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:  # vanished while being counted
                continue
    return total


def disk_use(folder: str | os.PathLike, particles: int, classes: int, box: int,
             copies_images: bool = False, new_particles: int = 0) -> DiskUse:
    """``new_particles``: about how many arrive per cycle (their copy, where one is kept)."""
    used = folder_bytes(folder)
    free = shutil.disk_usage(folder).free
    next_cycle = (STAR_BYTES_PER_PARTICLE * particles + classes * (4 * box * box + THUMBNAIL_BYTES)
                  + (4 * box * box * new_particles if copies_images else 0))
    return DiskUse(used, free, used / particles if particles else 0.0, next_cycle,
                   free < CYCLES_AHEAD * next_cycle)


class DiskWatch:
    """The output folder's disk use as last measured (:attr:`use`; None before the first
    measure); the session's alert (live2d.alerts.disk_low) says when free space turns low."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.use: DiskUse | None = None

    def measure(self, particles: int, classes: int, box: int, copies_images: bool,
                new_particles: int) -> DiskUse:
        """Measure now (walking the folder: O(files), so after imports and cycles only)."""
        use = disk_use(self.folder, particles, classes, box, copies_images, new_particles)
        self.use = use
        return use

    def to_dict(self) -> dict | None:
        """What the pages show: the figures and the text."""
        return None if self.use is None else self.use.to_dict() | {"text": self.use.describe()}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
