"""Moving data between Scipion objects and Live2D's files; no classification here.

* Store rows -> ``Particle`` objects (the import protocol).
* ``Particle`` objects -> a folder laid out as Warp writes one (``previous.settings`` and an
  ``allparticles_<model>.star`` that only ever grows), so the classification protocol feeds its
  input to an unmodified :class:`live2d.session.Session` through the core's own importer.
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
from pwem.objects import Acquisition, CTFModel, Particle, Transform
from pyworkflow.object import Boolean, Float, String

from live2d import simulate, warp
from live2d.atomic import cut_torn_line

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".map")
# Column of the exported star that carries each particle's Scipion id; the core's Warp reader
# keeps unknown columns and its importer ignores them.
ID_LABEL = "rlnLive2DParticleId"
EXPORT_STAR_LABELS = (
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", ID_LABEL,
)
# Attribute of the imported particles: "white" or "black" protein (the import's contrast).
CONTRAST_ATTRIBUTE = "_live2dContrast"
# Attributes of every class of outputClasses, from the cycle's class table
# (live2d.class_quality): the half-set resolution estimate in Å (at or better than it when
# _live2dAtLimit; None for a class of fewer than 2 particles), the good/junk score (0..1), the
# reason for it, and whether the class is in the selection that outputParticles holds.
RESOLUTION_ATTRIBUTE = "_live2dResolution"
AT_LIMIT_ATTRIBUTE = "_live2dAtLimit"
SCORE_ATTRIBUTE = "_live2dScore"
REASON_ATTRIBUTE = "_live2dReason"
SELECTED_ATTRIBUTE = "_live2dSelected"


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
        setattr(particle, CONTRAST_ATTRIBUTE, String(contrast))
        yield particle


def particle_contrast(particle: Particle | None) -> str:
    """``"white"`` or ``"black"``: how protein looks in the particle's image, as the import
    recorded it; white (Scipion's convention) for particles from elsewhere."""
    value = getattr(particle, CONTRAST_ATTRIBUTE, None)
    return "black" if value is not None and value.get() == "black" else "white"


# ------------------------------------------------------------------- classify: set -> Warp layout
class WarpExport:
    """A folder that looks like Warp's to the core: the classification protocol appends its
    input particles here and the session imports them as it would Warp's. MRC stacks are named
    by absolute path, to be read in place; only other formats are converted (``stacks/``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.star_path = self.folder / f"allparticles_{simulate.MODEL}.star"
        self.stacks = self.folder / "stacks"
        self._ids: set[int] | None = None

    @property
    def exists(self) -> bool:
        return (self.folder / warp.SETTINGS_FILE).exists()

    def create(self, box: int, pixel_size: float, diameter: float,
               contrast: str = "white") -> None:
        """``previous.settings`` for particles of ``box`` px at ``pixel_size`` Å; Invert is on
        for white protein (Scipion's particles, like Warp's exports, have it unless the import
        said black)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        simulate.write_settings(self.folder, simulate.default_settings(box, pixel_size, diameter),
                                Invert=contrast != "black")

    def exported_ids(self) -> set[int]:
        if self._ids is None:
            # A kill mid-append can leave half a row; cut it so the next append starts a line.
            cut_torn_line(self.star_path)
            self._ids = set()
            if self.star_path.exists():
                table, _ = warp.read_new_rows(self.star_path, warp.StarProgress())
                if ID_LABEL in table:
                    self._ids = set(table[ID_LABEL].astype(int).tolist())
        return self._ids

    @property
    def last_id(self) -> int:
        ids = self.exported_ids()
        return max(ids) if ids else 0

    def append(self, particles: list[Particle], box: int) -> int:
        """Append rows for the particles not exported yet; returns how many were added."""
        ids = self.exported_ids()
        fresh = [p for p in particles if p.getObjId() not in ids]
        if not fresh:
            return 0
        names = self._image_names(fresh, box)
        rows = []
        for particle, name in zip(fresh, names, strict=True):
            rows.append([name, *_ctf_values(particle), str(particle.getObjId())])
        text = "".join("  ".join(row) + "\n" for row in rows)
        header = not self.star_path.exists()
        with open(self.star_path, "a", encoding="utf-8") as handle:
            if header:
                handle.write("\ndata_\n\nloop_\n")
                handle.write("".join(f"_{label} #{i}\n"
                                     for i, label in enumerate(EXPORT_STAR_LABELS, start=1)))
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        ids.update(p.getObjId() for p in fresh)
        return len(fresh)

    def _image_names(self, particles: list[Particle], box: int) -> list[str]:
        """``N@/absolute/stack.mrcs`` for every particle. MRC stacks are read where they are;
        other formats are converted, batch by batch, into MRC stacks under ``stacks/``."""
        names: list[str | None] = []
        convert: list[int] = []
        for position, particle in enumerate(particles):
            index, filename = particle.getLocation()
            path = Path(filename)
            if path.suffix.lower() in MRC_SUFFIXES:
                names.append(f"{max(int(index or 1), 1):06d}@{path.resolve()}")
            else:
                names.append(None)
                convert.append(position)
        if convert:
            stack = self._convert_batch([particles[i] for i in convert], box)
            for number, position in enumerate(convert, start=1):
                names[position] = f"{number:06d}@{stack}"
        return [name for name in names if name is not None]

    def _convert_batch(self, particles: list[Particle], box: int) -> Path:
        from pwem.emlib.image import ImageHandler

        handler = ImageHandler()
        images = np.empty((len(particles), box, box), dtype=np.float32)
        for i, particle in enumerate(particles):
            images[i] = handler.read(particle.getLocation()).getData()
        self.stacks.mkdir(parents=True, exist_ok=True)
        path = self.stacks / f"batch_{particles[0].getObjId():09d}.mrcs"
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(images)
            mrc.voxel_size = particles[0].getSamplingRate()
        return path.resolve()


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


def alignment_2d(psi: float, shift_x: float, shift_y: float, pixel_size: float) -> Transform:
    """The transform that maps a particle onto its class average.

    Live2D's (and cisTEM's) convention is ``average ≈ rotate(shift(particle, (SHX, SHY)), PSI)``
    with shifts in Å and PSI counter-clockwise, turning +x towards +y. As a matrix acting on pixel
    positions: ``x' = R(PSI) (x + s)``, i.e. rotation R and translation R·s in pixels.
    """
    theta = math.radians(psi)
    cos, sin = math.cos(theta), math.sin(theta)
    shift = np.array([shift_x, shift_y]) / pixel_size
    matrix = np.eye(4)
    matrix[:2, :2] = [[cos, -sin], [sin, cos]]
    matrix[:2, 3] = matrix[:2, :2] @ shift
    transform = Transform()
    transform.setMatrix(matrix)
    return transform


def set_class_quality(class_item, row: dict | None, selected: bool) -> None:
    """Give a ``Class2D`` its resolution estimate, score, reason and selection. Every class gets
    every attribute (None where the table has no value): a flat sqlite takes its columns from
    the first class it stores."""
    row = row or {}
    resolution = row.get("resolution")
    score = row.get("score")
    setattr(class_item, RESOLUTION_ATTRIBUTE,
            Float(None if resolution is None else float(resolution)))
    setattr(class_item, AT_LIMIT_ATTRIBUTE, Boolean(bool(row.get("at_limit", False))))
    setattr(class_item, SCORE_ATTRIBUTE, Float(None if score is None else float(score)))
    setattr(class_item, REASON_ATTRIBUTE, String(str(row.get("reason", ""))))
    setattr(class_item, SELECTED_ATTRIBUTE, Boolean(bool(selected)))


def cycle_assignments(star: pd.DataFrame, store_table: pd.DataFrame,
                      export_table: pd.DataFrame) -> pd.DataFrame:
    """Per Scipion particle id: class, PSI, SHX, SHY of the particles a cycle classified
    (2DCLS > 0; negative means not used in that cycle, 0 never classified)."""
    n = len(star)
    origin = store_table["ORIGNAME"].iloc[:n].to_numpy()
    ids = dict(zip(export_table["rlnImageName"], export_table[ID_LABEL].astype(int),
                   strict=True))
    frame = pd.DataFrame({
        "id": [ids.get(name, -1) for name in origin],
        "cls": star["2DCLS"].to_numpy(dtype=np.int64),
        "psi": star["PSI"].to_numpy(dtype=float),
        "shx": star["SHX"].to_numpy(dtype=float),
        "shy": star["SHY"].to_numpy(dtype=float),
    })
    return frame[(frame["cls"] > 0) & (frame["id"] > 0)].set_index("id")
