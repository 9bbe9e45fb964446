"""Moving data between Scipion objects and Live2D's files; no classification here.

* Store rows -> ``Particle`` objects (the import protocol).
* ``Particle`` objects -> RELION-like rows with their Scipion ids, which the classification's
  particle source (:mod:`live2d_plugin.particle_source`) imports into its session's store.
* A cycle's star row -> a 2D alignment ``Transform``.
* A cycle's class table (resolution estimate, score, reason) -> attributes of its ``Class2D``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from pwem.objects import Acquisition, Coordinate, CTFModel, Particle, Transform
from pyworkflow.object import Boolean, Float, Integer, String

from live2d import warp
from live2d.sources.base import SOURCE_ID

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".map")
# The CTF and microscope of a particle's row, in the order _ctf_values gives them.
CTF_LABELS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnVoltage",
              "rlnSphericalAberration", "rlnAmplitudeContrast")
# Attribute of the imported particles: "white" or "black" protein (the import's contrast).
CONTRAST_ATTRIBUTE = "_live2dContrast"
# Attribute of the import's set: the EPU session folder its form names ("" for none), which
# the classification of the set takes unless its own form names one.
EPU_FOLDER_ATTRIBUTE = "_live2dEpuFolder"
# Attributes of every class of outputClasses, from the cycle's class table
# (live2d.class_quality): the half-set resolution estimate in Å (at or better than it when
# _live2dAtLimit; None for a class of fewer than 2 particles), the good/junk score (0..1), the
# reason for it, and whether the class is in the selection that outputParticles holds; for a
# selected class, how many of its particles the particle curation keeps (live2d.curation: those
# outputParticles takes; None where the session does not curate, or the class is not selected:
# junk goes whole).
RESOLUTION_ATTRIBUTE = "_live2dResolution"
AT_LIMIT_ATTRIBUTE = "_live2dAtLimit"
SCORE_ATTRIBUTE = "_live2dScore"
REASON_ATTRIBUTE = "_live2dReason"
SELECTED_ATTRIBUTE = "_live2dSelected"
KEPT_ATTRIBUTE = "_live2dKept"


# ------------------------------------------------------------------------ import: store -> set
def acquisition_from_warp(settings: warp.WarpSettings) -> Acquisition:
    acquisition = Acquisition()
    acquisition.setVoltage(settings.voltage)
    acquisition.setSphericalAberration(settings.cs)
    acquisition.setAmplitudeContrast(settings.amplitude_contrast)
    acquisition.setMagnification(10000.0)  # Warp has no magnification; pwem wants one
    return acquisition


def particles_from_store_rows(rows: pd.DataFrame, locations: list[tuple[int, Path]],
                              pixel_size: float, acquisition: Acquisition,
                              contrast: str = "white"):
    """A ``Particle`` per store row at its location (1-based index, stack: see
    :meth:`live2d.store.ParticleStore.image_locations`), with its CTF from Warp's star and how
    protein looks in its image (``contrast``, see :func:`particle_contrast`)."""
    for row, (index, stack) in zip(rows.itertuples(index=False), locations, strict=True):
        values = row._asdict()
        particle = Particle(location=(index, str(stack)))
        particle.setSamplingRate(pixel_size)
        particle.setAcquisition(acquisition)
        ctf = CTFModel()
        ctf.setStandardDefocus(float(values["DF1"]), float(values["DF2"]),
                               float(values["ANGAST"]))
        phase_shift = float(values["PSHIFT"])
        if phase_shift:
            ctf.setPhaseShift(math.degrees(phase_shift))  # cisTEM stores radians
        particle.setCTF(ctf)
        # Where Warp wrote it: N@particles/<movie>.mrcs, relative to the Warp folder.
        particle._warpImageName = String(str(values["ORIGNAME"]))
        # Its micrograph (EPU's name: foil hole and time) and position on it, where Scipion
        # keeps them; every particle gets a coordinate, as a flat sqlite wants every column.
        coordinate = Coordinate(x=round(_number(values.get("ORIGX"))),
                                y=round(_number(values.get("ORIGY"))))
        micrograph = values.get("MICROGRAPH")
        coordinate.setMicName("" if micrograph is None or pd.isna(micrograph)
                              else str(micrograph))
        particle.setCoordinate(coordinate)
        setattr(particle, CONTRAST_ATTRIBUTE, String(contrast))
        yield particle


def _number(value) -> float:
    return 0.0 if value is None or pd.isna(value) else float(value)


def particle_contrast(particle: Particle | None) -> str:
    """``"white"`` or ``"black"``: how protein looks in the particle's image, as the import
    recorded it; white (Scipion's convention) for particles from elsewhere."""
    value = getattr(particle, CONTRAST_ATTRIBUTE, None)
    return "black" if value is not None and value.get() == "black" else "white"


# ------------------------------------------------------------------- classify: set -> store rows
def particle_rows(particles: list[Particle], image_names: list[str]) -> pd.DataFrame:
    """RELION-like rows of ``particles`` for the core's import
    (:meth:`live2d.sources.ParticleIntake.import_rows`): each one's image name, micrograph
    (where its coordinate names one: the yield per micrograph, foil hole and grid square), CTF
    and microscope as text (checked and made numbers on import), and its Scipion id."""
    rows = pd.DataFrame([_ctf_values(particle) for particle in particles],
                        columns=list(CTF_LABELS), dtype=object)
    rows.insert(0, "rlnImageName", image_names)
    rows.insert(1, "rlnMicrographName", [micrograph_name(particle) for particle in particles])
    rows[SOURCE_ID] = [int(particle.getObjId()) for particle in particles]
    return rows


def micrograph_name(particle: Particle) -> str:
    """The name of the micrograph a particle was picked on, as its coordinate has it ("")."""
    coordinate = particle.getCoordinate() if particle.hasCoordinate() else None
    return (coordinate.getMicName() or "") if coordinate is not None else ""


def _ctf_values(particle: Particle) -> list[str]:
    ctf = particle.getCTF() if particle.hasCTF() else None
    acquisition = particle.getAcquisition()
    if ctf is None:
        raise ValueError(f"particle {particle.getObjId()} has no CTF: Live2D classifies "
                         "CTF-corrected averages, so its input needs particles with a CTF")
    phase_shift = ctf.getPhaseShift() or 0.0
    return [f"{ctf.getDefocusU():.2f}", f"{ctf.getDefocusV():.2f}",
            f"{ctf.getDefocusAngle():.2f}", f"{phase_shift:.3f}",
            f"{acquisition.getVoltage():.2f}", f"{acquisition.getSphericalAberration():.3f}",
            f"{acquisition.getAmplitudeContrast():.4f}"]


def mrc_box(filename: str) -> int | None:
    """The image size of an MRC file from its header alone, or None for other formats."""
    if Path(filename).suffix.lower() not in MRC_SUFFIXES:
        return None
    with mrcfile.mmap(filename, mode="r", permissive=True) as mrc:
        return int(mrc.header.nx)


# ------------------------------------------------------------------------- classes: star -> set
def scipion_stack(classes_mrc: str | os.PathLike) -> str:
    """The name Scipion registers a cycle's class averages under: ``cycle_NNN.mrcs``, a relative
    symbolic link to ``cycle_NNN.mrc`` in the same folder (made here if missing).

    pwem tells a stack of 2D images from a volume by the file name alone (``.mrcs``, or the
    ``:mrcs`` suffix), whatever the header says. The suffix breaks Scipion 3.8's metadata viewer
    (pwem 3.11 takes the file's modification time with ``:mrcs`` still attached), so the
    averages get a ``.mrcs`` name; ``.mrc`` stays the name the core, the page and merge2d use.
    """
    target = Path(classes_mrc)
    link = target.with_suffix(".mrcs")
    if not (link.is_symlink() and os.readlink(link) == target.name):
        scratch = link.with_name(f".{link.name}.{os.getpid()}")
        scratch.unlink(missing_ok=True)
        os.symlink(target.name, scratch)
        os.replace(scratch, link)
    return str(link)


def alignment_matrices(psi, shift_x, shift_y, pixel_size: float) -> np.ndarray:
    """The 4x4 matrices (n, 4, 4) that map particles onto their class averages.

    Live2D's (and cisTEM's) convention is ``average ≈ rotate(shift(particle, (SHX, SHY)), PSI)``
    with shifts in Å and PSI counter-clockwise, turning +x towards +y. As a matrix acting on pixel
    positions: ``x' = R(PSI) (x + s)``, i.e. rotation R and translation R·s in pixels.
    """
    theta = np.radians(np.atleast_1d(np.asarray(psi, dtype=float)))
    cos, sin = np.cos(theta), np.sin(theta)
    sx = np.atleast_1d(np.asarray(shift_x, dtype=float)) / pixel_size
    sy = np.atleast_1d(np.asarray(shift_y, dtype=float)) / pixel_size
    matrices = np.tile(np.eye(4), (len(theta), 1, 1))
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
    matrices[:, 0, 3] = cos * sx - sin * sy
    matrices[:, 1, 3] = sin * sx + cos * sy
    return matrices


def alignment_2d(psi: float, shift_x: float, shift_y: float, pixel_size: float) -> Transform:
    """The ``Transform`` of one particle (see :func:`alignment_matrices`)."""
    transform = Transform()
    transform.setMatrix(alignment_matrices(psi, shift_x, shift_y, pixel_size)[0])
    return transform


def set_class_quality(class_item, row: dict | None, selected: bool,
                      kept: int | None = None) -> None:
    """Give a ``Class2D`` its resolution estimate, score, reason, selection and the particles
    the curation keeps of it (``kept``; None: not curated). Every class gets every attribute
    (None where the table has no value): a flat sqlite takes its columns from the first class
    it stores."""
    row = row or {}
    resolution = row.get("resolution")
    score = row.get("score")
    setattr(class_item, RESOLUTION_ATTRIBUTE,
            Float(None if resolution is None else float(resolution)))
    setattr(class_item, AT_LIMIT_ATTRIBUTE, Boolean(bool(row.get("at_limit", False))))
    setattr(class_item, SCORE_ATTRIBUTE, Float(None if score is None else float(score)))
    setattr(class_item, REASON_ATTRIBUTE, String(str(row.get("reason", ""))))
    setattr(class_item, SELECTED_ATTRIBUTE, Boolean(bool(selected)))
    setattr(class_item, KEPT_ATTRIBUTE, Integer(None if kept is None else int(kept)))


def cycle_assignments(star: pd.DataFrame, store_table: pd.DataFrame,
                      kept: np.ndarray | None = None) -> pd.DataFrame:
    """Per Scipion particle id (the store's SRCID: the cycle's rows are the store's first
    rows, in order): class, PSI, SHX, SHY of the particles a cycle classified (2DCLS > 0;
    negative means not used in that cycle, 0 never classified), and whether the particle
    curation keeps it (``kept``: per row of ``star``, live2d.curation; None: every one)."""
    n = len(star)
    frame = pd.DataFrame({
        "id": store_table["SRCID"].iloc[:n].to_numpy(dtype=np.int64),
        "cls": star["2DCLS"].to_numpy(dtype=np.int64),
        "psi": star["PSI"].to_numpy(dtype=float),
        "shx": star["SHX"].to_numpy(dtype=float),
        "shy": star["SHY"].to_numpy(dtype=float),
        "kept": np.ones(n, dtype=bool) if kept is None else np.asarray(kept, dtype=bool),
    })
    return frame[(frame["cls"] > 0) & (frame["id"] > 0)].set_index("id")
