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

Where a grid square lies on the grid comes from the image EPU takes of it before its holes::

    Images-Disc<N>/GridSquare_<square>/GridSquare_<YYYYMMDD>_<HHMMSS>.xml

a ``MicroscopeImage`` (.NET DataContract XML) whose ``microscopeData/stage/Position`` holds the
stage's ``X`` and ``Y`` in metres (:func:`read_square_positions`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_FOIL_HOLE = re.compile(r"FoilHole_(\d+)_Data(?:_(\d+)_(\d+)_(\d{8})_(\d{6}))?")
_GRID_SQUARE = re.compile(r"(?:^|[/\\])GridSquare_(\d+)(?:[/\\]|$)")
# The acquisition files of an EPU session folder, one per movie, under their grid square.
_ACQUISITION_FILES = "Images-Disc*/GridSquare_*/Data/FoilHole_*_Data_*.xml"
# The image of each grid square, one per time EPU (re)took it: the newest name is the latest.
_SQUARE_IMAGE_FILES = "Images-Disc*/GridSquare_*/GridSquare_*.xml"
_STAGE_POSITION = ("microscopeData", "stage", "Position")

log = logging.getLogger("live2d")
# Square image path -> (mtime_ns, size, its stage position in µm or None): EPU never rewrites
# one, so a folder read again as it grows parses only the new squares' files.
_positions_read: dict[str, tuple[int, int, tuple[float, float] | None]] = {}
_said: set[str] = set()  # the files already said to give no position: said once, not per read


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


def read_square_positions(epu_dir: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Grid square -> its stage position (x, y) in µm, from the newest image EPU took of each
    square in the EPU session folder ``epu_dir``. A square whose file cannot be read (half
    written, not EPU's, without a stage position) has none, said once in the log; a folder that
    is not there gives none. One listing of the folder when called again, files parsed only when
    new or changed."""
    newest: dict[str, Path] = {}
    for path in Path(epu_dir).glob(_SQUARE_IMAGE_FILES):
        square = path.parent.name.removeprefix("GridSquare_")
        # GridSquare_<YYYYMMDD>_<HHMMSS>.xml: the names sort as the times do.
        if square.isdigit() and (square not in newest or path.name > newest[square].name):
            newest[square] = path
    positions: dict[str, tuple[float, float]] = {}
    for square, path in newest.items():
        position = _square_position(path)
        if position is not None:
            positions[square] = position
    return positions


def _square_position(path: Path) -> tuple[float, float] | None:
    """The stage position (µm) in the square image file ``path``, cached by its mtime and size
    (a half-written file is read again once EPU finishes it)."""
    try:
        stat = path.stat()
    except OSError:  # gone between the listing and now
        return None
    key = str(path)
    cached = _positions_read.get(key)
    if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return cached[2]
    try:
        position, problem = _parse_stage_position(path), ""
    except (OSError, ET.ParseError, ValueError) as exc:
        position, problem = None, str(exc) or type(exc).__name__
    if position is None and key not in _said:
        _said.add(key)
        log.warning("%s gives no stage position (%s): its grid square is placed in collection "
                    "order on the map", path, problem or "no microscopeData/stage/Position X, Y")
    _positions_read[key] = (stat.st_mtime_ns, stat.st_size, position)
    return position


def _parse_stage_position(path: Path) -> tuple[float, float] | None:
    """X and Y of ``microscopeData/stage/Position`` in µm, matched by local names: EPU's
    namespaces (DataContract's, one per .NET namespace) may change with its version."""
    element: ET.Element | None = ET.parse(path).getroot()
    for name in _STAGE_POSITION:
        element = _child(element, name)
    texts = [((c.text or "").strip() if c is not None else "")
             for c in (_child(element, "X"), _child(element, "Y"))]
    if not all(texts):
        return None
    x, y = (float(text) * 1e6 for text in texts)  # metres in EPU's files
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"stage position {x}, {y} µm is not a number")
    return x, y


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    """``element``'s first child whose local name (without its {namespace}) is ``name``."""
    if element is None:
        return None
    return next((c for c in element if c.tag.rsplit("}", 1)[-1] == name), None)
