"""Where on the grid a micrograph was taken: its foil hole and grid square, from EPU's names.

EPU (Thermo Fisher's collection software) names each movie::

    FoilHole_<hole>_Data_<template>_<acquisition>_<date>_<time>[_fractions].<ext>
    e.g. FoilHole_24697853_Data_24671885_24671887_20231104_084015_fractions.tiff

and Warp's micrograph names keep it, so a particle's micrograph names its foil hole and when it
was taken (``<date>_<time>``: ``YYYYMMDD_HHMMSS``). The grid square is in an EPU session folder::

    Images-Disc<N>/GridSquare_<square>/Data/FoilHole_<hole>_Data_<...>.xml

(one file per acquisition, written as EPU collects: :func:`read_hole_squares` reads the map of
holes to squares again each time it is called), or in a movie's own path where that runs
through ``GridSquare_<square>``. Names of other software (SerialEM, plain numbering) give
neither: their particles are counted per micrograph only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_FOIL_HOLE = re.compile(r"FoilHole_(\d+)_Data(?:_(\d+)_(\d+)_(\d{8})_(\d{6}))?")
_GRID_SQUARE = re.compile(r"(?:^|[/\\])GridSquare_(\d+)(?:[/\\]|$)")
# The acquisition files of an EPU session folder, one per movie, under their grid square.
_ACQUISITION_FILES = "Images-Disc*/GridSquare_*/Data/FoilHole_*_Data_*.xml"


@dataclass(frozen=True)
class MicrographOrigin:
    """A micrograph's place on the grid as its name tells it ("" where it does not)."""

    micrograph: str
    foil_hole: str = ""
    grid_square: str = ""
    acquired: str = ""  # ISO 8601 UTC, from EPU's <date>_<time>


def micrograph_origin(name: str) -> MicrographOrigin:
    """The foil hole, grid square (where the path holds one) and time of the micrograph
    ``name`` (a file name or path, as Warp's star gives it); empty fields for names that are not
    EPU's."""
    base = re.split(r"[/\\]", name)[-1]
    hole = _FOIL_HOLE.match(base)
    square = _GRID_SQUARE.search(name)
    acquired = ""
    if hole and hole.group(4):
        try:
            taken = datetime.strptime(hole.group(4) + hole.group(5), "%Y%m%d%H%M%S")
        except ValueError:  # digits that are no date: the hole still counts
            pass
        else:
            acquired = taken.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    return MicrographOrigin(micrograph=name, foil_hole=hole.group(1) if hole else "",
                            grid_square=square.group(1) if square else "", acquired=acquired)


def epu_folder_problem(epu_dir: str | os.PathLike) -> str:
    """Why the EPU session folder ``epu_dir`` cannot give grid squares, in one line for a log;
    "" when it can (it may still hold no acquisition yet). Its particles then count per
    micrograph and foil hole only, never an error: the folder is advice, not input."""
    path = Path(epu_dir)
    if not path.is_dir():
        return f"the EPU session folder {path} is not there (or not a folder)"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"the EPU session folder {path} cannot be read"
    return ""


def read_hole_squares(epu_dir: str | os.PathLike) -> dict[str, str]:
    """Foil hole -> grid square, from the acquisition files of the EPU session folder
    ``epu_dir`` (empty where it has none yet). Reads names only, never the files, so calling
    it again as EPU collects costs one listing of the folder."""
    squares: dict[str, str] = {}
    for path in Path(epu_dir).glob(_ACQUISITION_FILES):
        hole = _FOIL_HOLE.match(path.name)
        if hole:
            squares[hole.group(1)] = path.parent.parent.name.removeprefix("GridSquare_")
    return squares
