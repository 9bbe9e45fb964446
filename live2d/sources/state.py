"""What ``import.json`` records: how far a source was imported, into which store generation, and
what identifies the source the store's particles came from.

The identity is written in the positional list form that earlier versions wrote
(``[box, model, min_score, which(, "black")]`` for a Warp 1.x folder,
``["star", path, box, pixel_size, contrast]`` for a particle star) and read from it: an output
folder reopened by an earlier Live2D (a rollback, the Scipion plugin in another environment)
then finds the identity it wrote, instead of a new form it would take for a changed source and
answer with a full re-import.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live2d.atomic import atomic_write_json
from live2d.store import ParticleStore
from live2d.warp import StarProgress, WarpSettings

STAR_KIND = "star"  # the first item of a star source's list form


@dataclass(frozen=True)
class WarpFolderIdentity:
    """What makes the particles imported from a Warp 1.x folder stale when it changes."""

    box: int
    model: str
    min_score: float
    which: str  # "allparticles" or "goodparticles"
    contrast: str = "white"  # protein contrast, "white" or "black"

    LABELS = ("box size", "BoxNet model", "picking threshold", "particle file", "contrast")

    def to_json(self) -> list:
        # "black" only: white protein is recorded as before contrast was (4 items).
        values = [self.box, self.model, self.min_score, self.which]
        return [*values, "black"] if self.contrast == "black" else values

    def describe_change(self, old: SourceIdentity | None) -> str:
        """Why the particles from ``old`` are stale, for the log."""
        if old is None:
            return "the particle store was rebuilt"
        return _describe_differences(self.LABELS, old, self, "white") or \
            "Warp's settings changed"


@dataclass(frozen=True)
class StarIdentity:
    """What makes the particles imported from a RELION-style particle star stale when it
    changes."""

    star: str
    box: int
    pixel_size: float  # rounded to 6 decimals
    contrast: str  # "white" or "black"

    LABELS = ("layout", "particle star", "box size", "pixel size", "contrast")

    def to_json(self) -> list:
        return [STAR_KIND, self.star, self.box, self.pixel_size, self.contrast]

    def describe_change(self, old: SourceIdentity) -> str:
        """Why the particles from ``old`` are stale, for the log."""
        return _describe_differences(self.LABELS, old, self) or "the particle star changed"


SourceIdentity = WarpFolderIdentity | StarIdentity


def identity_from_json(values: list) -> SourceIdentity | None:
    """The identity of a list as :meth:`to_json` writes it (None for ``[]``: none recorded).
    Raises ValueError for a list no version writes."""
    if not values:
        return None
    if values[0] == STAR_KIND and len(values) == 5:
        return StarIdentity(*values[1:])
    if len(values) == 4 or (len(values) == 5 and values[4] == "black"):
        return WarpFolderIdentity(*values)
    raise ValueError(f"unknown particle source {values!r}")


def _describe_differences(labels: tuple[str, ...], old: SourceIdentity, new: SourceIdentity,
                          pad: str = "") -> str:
    # Position by position, as the list forms compare: a folder whose layout changed kind
    # is described as before too.
    old_values, new_values = old.to_json(), new.to_json()
    if pad:
        old_values, new_values = [*old_values, pad][:5], [*new_values, pad][:5]
    return "; ".join(f"{label} changed {a} -> {b}" for label, a, b in
                     zip(labels, old_values, new_values, strict=False) if a != b)


@dataclass
class ImportState:
    """Progress of the import into one store generation, as ``import.json`` keeps it.

    Written after the store commits, so it may lag behind the store after a kill (the store's
    image names skip rows read again). ``skipped``: stacks left out after waiting too long;
    ``refused``: rows refused for bad values; ``outside``: folders outside the source folder
    already mentioned; ``settings`` and ``star_seen``: a particle star's settings and the
    ``[size, mtime_ns, contrast]`` of the star last imported whole."""

    source: SourceIdentity | None = None
    progress: StarProgress = field(default_factory=StarProgress)
    generation: int = 0
    skipped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    settings: WarpSettings | None = None
    star_seen: list | None = None

    @classmethod
    def load(cls, path: Path, store: ParticleStore) -> tuple[ImportState, bool]:
        """The state of ``store`` and whether a kill came between emptying it and saving
        progress (then only the source identity is kept: the re-import is to be finished)."""
        empty = cls(generation=store.generation)
        if not path.exists() or not store.box:
            return empty, False
        try:
            values: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            state = cls(
                source=identity_from_json(values.get("source", [])),
                progress=StarProgress.from_dict(values["progress"]) if "progress" in values
                else StarProgress(),
                generation=values.get("generation", store.generation),
                skipped=list(values.get("skipped", [])),
                refused=list(values.get("refused", [])),
                outside=list(values.get("outside", [])),
                settings=WarpSettings(**values["settings"]) if values.get("settings") else None,
                star_seen=values.get("star_seen"))
        except ValueError:  # only progress is lost: the store's names prevent duplicates
            return empty, False
        if state.generation != store.generation:
            return dataclasses.replace(empty, source=state.source), True
        return state, False

    def save(self, path: Path) -> None:
        atomic_write_json(path, {
            "source": self.source.to_json() if self.source is not None else [],
            "progress": self.progress.to_dict(), "generation": self.generation,
            "skipped": self.skipped, "refused": self.refused, "outside": self.outside,
            "settings": dataclasses.asdict(self.settings) if self.settings else None,
            "star_seen": self.star_seen})
