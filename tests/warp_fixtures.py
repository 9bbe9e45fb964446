"""Small Warp folders written the way Warp writes them, numpy only (fast, no phantom/torch).

UTF-16 ``previous.settings`` with a byte-order mark and sections, one MRC stack per micrograph
written before the star files, and ``allparticles_/goodparticles_<model>.star`` rewritten whole
after every micrograph with the earlier rows first (see ../shared/warp-formats.md).
Particle ``j`` of micrograph ``m`` is filled from a generator seeded with ``(seed, m)``, so the
expected pixels of any particle can be recomputed.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import mrcfile
import numpy as np

MODEL = "BoxNet2Mask_20180918"
STAR_LABELS = ["rlnCoordinateX", "rlnCoordinateY", "rlnMagnification", "rlnDetectorPixelSize",
               "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift",
               "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution",
               "rlnImageName", "rlnMicrographName"]


def settings_values(box: int = 32, pixel_size: float = 2.0, bin_times: int = 1,
                    model: str = MODEL) -> dict[str | None, dict[str, object]]:
    """Warp's settings by section (None = top level); PixelSizeX is the raw movie pixel size."""
    raw = pixel_size / 2**bin_times
    return {
        None: {"DataStyle": "Frames", "PixelSizeX": raw, "PixelSizeY": raw,
               "PixelSizeAngle": 0},
        "Import": {"Folder": "D:\\frames", "Extension": "*.tif", "BinTimes": bin_times},
        "CTF": {"Window": 512, "Voltage": 300, "Cs": 2.7, "Amplitude": 0.07},
        "Picking": {"ModelPath": f"C:\\Warp\\boxnet2models\\{model}", "Diameter": 40,
                    "MinimumScore": 0.95, "DoExport": True, "BoxSize": box, "Invert": True,
                    "Normalize": True},
    }


def settings_xml(values: dict[str | None, dict[str, object]]) -> bytes:
    """``previous.settings`` as Warp writes it: UTF-16 with a byte-order mark."""
    def param(name: str, value: object) -> str:
        text = str(value) if not isinstance(value, bool) else ("True" if value else "False")
        return f"<Param Name={quoteattr(name)} Value={quoteattr(text)} />"

    lines = ['<?xml version="1.0" encoding="utf-16"?>', "<Settings>"]
    lines += [f"  {param(k, v)}" for k, v in values[None].items()]
    for section, params in values.items():
        if section is not None:
            lines += [f"  <{section}>", *(f"    {param(k, v)}" for k, v in params.items()),
                      f"  </{section}>"]
    lines.append("</Settings>")
    return "\r\n".join(lines).encode("utf-16")  # Python writes the BOM for "utf-16"


def particle_image(seed: int, micrograph: int, box: int, count: int) -> np.ndarray:
    rng = np.random.default_rng([seed, micrograph])
    return rng.standard_normal((count, box, box), dtype=np.float32)


class WarpFolder:
    """A Warp folder that grows one micrograph at a time."""

    def __init__(self, folder: Path, box: int = 32, pixel_size: float = 2.0,
                 per_micrograph: int = 20, seed: int = 0, **settings: object) -> None:
        self.folder = Path(folder)
        self.box, self.pixel_size, self.per, self.seed = box, pixel_size, per_micrograph, seed
        (self.folder / "particles").mkdir(parents=True, exist_ok=True)
        self.values = settings_values(box, pixel_size)
        self.write_settings(**settings)
        self.micrographs = 0
        self.rows: list[str] = []
        self.good: list[bool] = []  # per row: does it pass Warp's quality filters

    # ------------------------------------------------------------------ settings
    def write_settings(self, **changes: object) -> None:
        """Rewrite previous.settings with parameters changed by name (``BoxSize=64``)."""
        for name, value in changes.items():
            section = next(s for s, params in self.values.items() if name in params)
            self.values[section][name] = value
        (self.folder / "previous.settings").write_bytes(settings_xml(self.values))

    @property
    def model(self) -> str:
        return str(self.values["Picking"]["ModelPath"]).rsplit("\\", 1)[-1]

    # ------------------------------------------------------------------ particles
    def star_path(self, which: str = "allparticles") -> Path:
        return self.folder / f"{which}_{self.model}.star"

    def stack_name(self, micrograph: int) -> str:
        return f"particles/FoilHole_{micrograph:05d}_Data_{self.model}.mrcs"

    def stack_path(self, micrograph: int) -> Path:
        return self.folder / self.stack_name(micrograph)

    def images(self, micrograph: int) -> np.ndarray:
        return particle_image(self.seed, micrograph, self.box, self.per)

    def add_micrographs(self, count: int = 1, good: bool = True) -> None:
        for _ in range(count):
            m = self.micrographs
            with mrcfile.new(self.stack_path(m), overwrite=True) as mrc:
                mrc.set_data(self.images(m))
                mrc.voxel_size = self.pixel_size
            self.rows += [self.row(m, j) for j in range(self.per)]
            self.good += [good] * self.per
            self.micrographs += 1
        self.write_stars()

    def row(self, micrograph: int, j: int) -> str:
        defocus = 15000.0 + 100.0 * micrograph
        return (f"{100 + j:.1f} {200 + j:.1f} 10000.0 {self.pixel_size:.4f} 300.0 2.7 0.07 0.0 "
                f"{defocus:.1f} {defocus - 300:.1f} 30.0 4.0 "
                f"{j + 1:06d}@{self.stack_name(micrograph)} FoilHole_{micrograph:05d}_Data.tif\n")

    def header(self) -> str:
        return "\ndata_\n\nloop_\n" + "".join(
            f"_{label} #{i}\n" for i, label in enumerate(STAR_LABELS, 1))

    def star_text(self, which: str = "allparticles") -> str:
        rows = self.rows if which == "allparticles" else [
            r for r, ok in zip(self.rows, self.good, strict=True) if ok]
        return self.header() + "".join(rows)

    def write_stars(self) -> None:
        """Both star files rewritten whole, in place, as Warp does after every movie."""
        for which in ("allparticles", "goodparticles"):
            self.star_path(which).write_text(self.star_text(which))


class WarpToolsProject:
    """A WarpTools 2 project as ``create_settings`` and ``fs_export_particles`` leave it: a
    ``warp_frameseries.settings`` beside its processing folder, one stack per movie in
    ``warp_frameseries/particles/`` and one RELION 3.1 star (optics table, 7-digit indices).
    Every export rewrites the whole star, rows in a new order (WarpTools reads the pick files in
    parallel), and the stacks of movies exported before, with the same content."""

    def __init__(self, folder: Path, box: int = 32, pixel_size: float = 2.0,
                 per_movie: int = 10, seed: int = 0, star: str = "particles.star",
                 relative_to_star: bool = False) -> None:
        self.folder = Path(folder)
        self.box, self.pixel_size, self.per, self.seed = box, pixel_size, per_movie, seed
        self.star_path = self.folder / star
        self.star_path.parent.mkdir(parents=True, exist_ok=True)
        self.relative_to_star = relative_to_star
        (self.folder / "warp_frameseries" / "particles").mkdir(parents=True, exist_ok=True)
        values = settings_values(box, pixel_size)
        del values["Picking"]  # WarpTools' settings have no picking or export section
        (self.folder / "warp_frameseries.settings").write_bytes(settings_xml(values))
        self.movies = 0
        self.order_seed = 0

    def stack_path(self, movie: int) -> Path:
        return self.folder / "warp_frameseries" / "particles" / f"movie_{movie:04d}_1.50A.mrcs"

    def image_name(self, movie: int, j: int) -> str:
        stack = self.stack_path(movie)
        base = self.star_path.parent if self.relative_to_star else self.folder
        return f"{j + 1:07d}@{Path(os.path.relpath(stack, base)).as_posix()}"

    def images(self, movie: int) -> np.ndarray:
        return particle_image(self.seed, movie, self.box, self.per)

    def export(self, new_movies: int = 1, cut_at: int | None = None) -> None:
        """Export again with ``new_movies`` more: every stack rewritten, the star rewritten whole
        with the rows shuffled; ``cut_at``: the star is left cut after that many bytes, as a
        reader can catch it mid-write."""
        self.movies += new_movies
        for movie in range(self.movies):
            with mrcfile.new(self.stack_path(movie), overwrite=True) as mrc:
                mrc.set_data(self.images(movie))
                mrc.voxel_size = self.pixel_size
        rows = [(movie, j) for movie in range(self.movies) for j in range(self.per)]
        order = np.random.default_rng(self.order_seed).permutation(len(rows))
        self.order_seed += 1
        text = self.star_text([rows[i] for i in order])
        self.star_path.write_text(text[:cut_at] if cut_at is not None else text)

    def star_text(self, rows: list[tuple[int, int]]) -> str:
        lines = ["", "# version 30001", "", "data_optics", "", "loop_",
                 "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2",
                 "_rlnMicrographOriginalPixelSize #3",
                 "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
                 "_rlnImagePixelSize #7", "_rlnImageSize #8", "_rlnImageDimensionality #9",
                 f"opticsGroup1 1 0.7500 300.000000 2.700000 0.070000 {self.pixel_size:.6f} "
                 f"{self.box} 2", "", "", "# version 30001", "", "data_particles", "", "loop_",
                 "_rlnCoordinateX #1", "_rlnCoordinateY #2", "_rlnAngleRot #3",
                 "_rlnAngleTilt #4", "_rlnAnglePsi #5", "_rlnMicrographName #6",
                 "_rlnOpticsGroup #7", "_rlnDefocusU #8", "_rlnDefocusV #9",
                 "_rlnDefocusAngle #10", "_rlnPhaseShift #11", "_rlnCtfBfactor #12",
                 "_rlnCtfScalefactor #13", "_rlnImageName #14"]
        for movie, j in rows:
            defocus = 15000.0 + 100.0 * movie
            lines.append(f"{300.0 + j:.6f} {400.0 + j:.6f} 0.000000 0.000000 0.000000 "
                         f"movie_{movie:04d}.tif 1 {defocus:.6f} {defocus - 300:.6f} "
                         f"30.000000 0.000000 0.000000 1.000000 {self.image_name(movie, j)}")
        return "\n".join(lines) + "\n\n"
