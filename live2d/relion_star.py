"""RELION particle star files (3.0 and 3.1) as RELION, WarpTools 2 and cryoSPARC write them.

These files are rewritten whole (WarpTools' ``fs_export_particles`` even changes the row order
between runs), so they are read whole, with ``starfile``, and rows are matched by
``rlnImageName``. RELION 3.1 keeps pixel size, box, voltage, Cs and amplitude contrast in a
``data_optics`` table joined by ``rlnOpticsGroup``; RELION 3.0 has them per particle (the pixel
size as ``rlnImagePixelSize`` or ``rlnDetectorPixelSize`` and ``rlnMagnification``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from live2d.warp import (
    MAX_LINE_BYTES,
    MAX_STAR_COLUMNS,
    Refusal,
    WarpStarError,
    check_particle_values,
)

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
MICROSCOPE_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@dataclass(frozen=True)
class StarParticles:
    """A particle star's rows, optics merged in, and the values Live2D needs to be single."""

    rows: pd.DataFrame  # one row per complete particle line, optics columns merged in
    pixel_size: float
    box: int | None  # None: RELION 3.0, read it from the stacks
    voltage: float
    cs: float
    amplitude_contrast: float
    unfinished: int  # particle lines left for the next read (the file was being written)
    # Rows left out for a non-finite or implausible CTF, microscope or pixel value.
    refused: tuple[Refusal, ...] = ()


def read_particle_star(path: str | os.PathLike) -> StarParticles:
    """Read a whole RELION particle star. Raises WarpStarError with what is wrong (no particle
    table, no CTF, several pixel sizes...), OSError if it cannot be read now."""
    path = Path(path)
    raw = path.read_bytes()
    # Bounds, as for Warp's star (live2d.warp): a line that long or that many columns is no
    # particle star, and waiting for the line to end would re-read it at every poll.
    if len(raw) - (raw.rfind(b"\n") + 1) > MAX_LINE_BYTES:
        raise WarpStarError(f"{path} ends in a line of more than {MAX_LINE_BYTES} bytes without "
                            "a newline: it is no particle star row")
    if raw.count(b"\n_") > 2 * MAX_STAR_COLUMNS:  # optics and particles tables
        raise WarpStarError(f"{path} has more than {MAX_STAR_COLUMNS} columns in a table: it is "
                            "not a particle star")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises whatever pandas does on a broken table
        raise WarpStarError(f"{path} is not a readable star file ({exc})") from None
    if not blocks and b"data_" not in raw and any(
            line.strip() and not line.lstrip().startswith(b"#") for line in raw.splitlines()):
        raise WarpStarError(f"{path} has no data block: it is not a star file")
    particles = _particle_block(blocks, path)
    unfinished = 0
    if raw and not raw.endswith(b"\n") and blocks and list(blocks.values())[-1] is particles \
            and len(particles):
        particles, unfinished = particles.iloc[:-1], 1  # its last line may be cut short
    missing = [c for c in CTF_COLUMNS if c not in particles]
    if missing:
        raise WarpStarError(f"{path} has no {', '.join(missing)}: classification needs each "
                            "particle's CTF; export the particles with their CTF parameters")
    optics = blocks.get("optics")
    rows = particles
    if isinstance(optics, pd.DataFrame) and len(optics):
        if "rlnOpticsGroup" not in particles:
            raise WarpStarError(f"{path}: the particles have no rlnOpticsGroup for its "
                                "data_optics table")
        extra = [c for c in optics.columns if c not in particles or c == "rlnOpticsGroup"]
        rows = particles.merge(optics[extra], on="rlnOpticsGroup", how="left")
    complete = rows[list(CTF_COLUMNS)].notna().all(axis=1).to_numpy().copy()
    # Only the last line can be cut short (its missing fields read as NaN): a NaN in any other
    # row is a bad value, refused below, not a row to wait for on every poll.
    complete[:-1] = True
    unfinished += int((~complete).sum())
    rows = rows[complete].reset_index(drop=True)
    # Before the values that must be single: one bad row is refused, not the whole star.
    rows, refused = check_particle_values(rows)
    rows = rows.reset_index(drop=True)
    pixel = _pixel_sizes(rows, path)
    box = _single(rows, "rlnImageSize", path, "box size") if "rlnImageSize" in rows else None
    values = {}
    for column in MICROSCOPE_COLUMNS:
        if column not in rows:
            raise WarpStarError(f"{path} has no {column}: classification needs the "
                                "microscope's voltage, Cs and amplitude contrast for the CTF")
        values[column] = _single(rows, column, path, column[3:])
    return StarParticles(rows, pixel, int(box) if box is not None else None,
                         values["rlnVoltage"], values["rlnSphericalAberration"],
                         values["rlnAmplitudeContrast"], unfinished, tuple(refused))


def is_particle_star(path: Path) -> bool:
    """Whether ``path`` looks like a particle star (has rlnImageName), from its first 64 KB."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64 * 1024)
    except OSError:
        return False
    return b"_rlnImageName" in head


def _particle_block(blocks: dict, path: Path) -> pd.DataFrame:
    for name in ("particles", "", "images"):
        block = blocks.get(name)
        if isinstance(block, pd.DataFrame) and "rlnImageName" in block:
            return block
    for block in blocks.values():
        if isinstance(block, pd.DataFrame) and "rlnImageName" in block:
            return block
    if not blocks:  # nothing but a header so far
        return pd.DataFrame({"rlnImageName": pd.Series(dtype=str)})
    raise WarpStarError(f"{path} has no particle table (no data block with rlnImageName)")


def _pixel_sizes(rows: pd.DataFrame, path: Path) -> float:
    if not len(rows):
        return 0.0
    if "rlnImagePixelSize" in rows:
        return _single(rows, "rlnImagePixelSize", path, "pixel size")
    if "rlnDetectorPixelSize" in rows and "rlnMagnification" in rows:
        pixel = rows["rlnDetectorPixelSize"].astype(float) * 1e4 / rows["rlnMagnification"]
        return _single(pd.DataFrame({"pixel": pixel.round(6)}), "pixel", path, "pixel size")
    raise WarpStarError(f"{path} gives no pixel size (rlnImagePixelSize, or "
                        "rlnDetectorPixelSize and rlnMagnification)")


def _single(rows: pd.DataFrame, column: str, path: Path, what: str) -> float:
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    if not len(values):
        return 0.0
    if np.isnan(values).any():
        raise WarpStarError(f"{path}: {column} has values that are not numbers")
    if np.ptp(values) > 1e-4 * max(abs(values[0]), 1e-12):
        raise WarpStarError(f"{path} holds particles of several {what}s "
                            f"({', '.join(f'{v:g}' for v in np.unique(values)[:4])}): Live2D "
                            "classifies one at a time; export one optics group per star")
    return float(values[0])
