"""Small Warp folders written the way Warp writes them, numpy only (fast, no phantom/torch).

UTF-16 ``previous.settings`` with a byte-order mark and sections, one MRC stack per micrograph
written before the star files, and ``allparticles_/goodparticles_<model>.star`` rewritten whole
after every micrograph with the earlier rows first (see ../shared/warp-formats.md).
Particle ``j`` of micrograph ``m`` is filled from a generator seeded with ``(seed, m)``, so the
expected pixels of any particle can be recomputed.
"""

from __future__ import annotations

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
