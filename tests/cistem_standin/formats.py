"""The files the stand-ins read and write, implemented from the interface notes on their own
(not with live2d.cistem_star), so that the engine's files are checked against cisTEM's rules.

* Star files read the way cisTEMStarFileReader reads them: columns by label order, a label
  recognised only as ``_cisTEMName `` (trailing space), data up to the first empty line,
  defocus columns required, phase shift read in degrees and kept in radians.
* Star files written the way refine2d writes them: fixed columns, printf formats, a trailing
  space after every field.
* MRC stacks with the header pixel size left unset (mrcfile reads 1/64).
* Dump files in Refine2DApp::DumpArrays' layout.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cistem_standin.userinput import crash

# short name: (label, default when the column is absent; None = required)
READ_COLUMNS: dict[str, tuple[str, float | None]] = {
    "POS": ("_cisTEMPositionInStack", -1),
    "PSI": ("_cisTEMAnglePsi", 0.0),
    "SHX": ("_cisTEMXShift", 0.0),
    "SHY": ("_cisTEMYShift", 0.0),
    "DF1": ("_cisTEMDefocus1", None),
    "DF2": ("_cisTEMDefocus2", None),
    "ANGAST": ("_cisTEMDefocusAngle", None),
    "PSHIFT": ("_cisTEMPhaseShift", 0.0),
    "OCC": ("_cisTEMOccupancy", 100.0),
    "LogP": ("_cisTEMLogP", 100.0),
    "SIGMA": ("_cisTEMSigma", 10.0),
    "SCORE": ("_cisTEMScore", 0.0),
    "CHANGE": ("_cisTEMScoreChange", 0.0),
    "PSIZE": ("_cisTEMPixelSize", 0.0),
    "VOLT": ("_cisTEMMicroscopeVoltagekV", 0.0),
    "Cs": ("_cisTEMMicroscopeCsMM", 2.7),
    "AmpC": ("_cisTEMAmplitudeContrast", 0.07),
    "BTILTX": ("_cisTEMBeamTiltX", 0.0),
    "BTILTY": ("_cisTEMBeamTiltY", 0.0),
    "ISHFTX": ("_cisTEMImageShiftX", 0.0),
    "ISHFTY": ("_cisTEMImageShiftY", 0.0),
    "2DCLS": ("_cisTEMBest2DClass", 0.0),
}
# refine2d's output columns in the writer's order, with its printf formats.
WRITE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("POS", "%8u"),
    ("PSI", "%7.2f"),
    ("SHX", "%9.2f"),
    ("SHY", "%9.2f"),
    ("DF1", "%8.1f"),
    ("DF2", "%8.1f"),
    ("ANGAST", "%7.2f"),
    ("PSHIFT", "%7.2f"),
    ("OCC", "%7.2f"),
    ("LogP", "%9i"),
    ("SIGMA", "%10.4f"),
    ("SCORE", "%7.2f"),
    ("CHANGE", "%7.2f"),
    ("PSIZE", "%8.5f"),
    ("VOLT", "%7.2f"),
    ("Cs", "%7.2f"),
    ("AmpC", "%7.4f"),
    ("BTILTX", "%7.3f"),
    ("BTILTY", "%7.3f"),
    ("ISHFTX", "%7.3f"),
    ("ISHFTY", "%7.3f"),
    ("2DCLS", "%5i"),
)
NAME_LINE = (
    "#    POS     PSI       SHX       SHY      DF1      DF2  ANGAST  PSHIFT     OCC      LogP"
    "      SIGMA   SCORE  CHANGE    PSIZE    VOLT      Cs    AmpC  BTILTX  BTILTY  ISHFTX"
    "  ISHFTY 2DCLS "
)
INTEGER_COLUMNS = ("POS", "LogP", "2DCLS")
UNSET_PIXEL_SIZE = 1.0 / 64.0  # what mrcfile reports for cisTEM's class stacks
DUMP_HEADER = np.dtype(
    [
        ("box", "=i4"),
        ("classes", "=i4"),
        ("nonzero", "=i4"),
        ("images", "=i4"),
        ("sum_logp_total", "=f4"),
        ("sum_snr", "=f4"),
        ("pixel_size", "=f4"),
        ("mask_radius", "=f4"),
        ("mask_falloff", "=f4"),
        ("log_range", "=f4"),
    ]
)


def read_star(path: str) -> list[dict[str, float]]:
    """The particle lines of a cisTEM text star file, each as {short name: value}."""
    lines = Path(path).read_text().split("\n")
    at = _index(lines, 0, "data_", path)
    at = _index(lines, at + 1, "loop_", path) + 1
    labels: list[str] = []
    while at < len(lines):
        stripped = lines[at].strip()
        if stripped and stripped[0] not in "#;":
            if not stripped.startswith("_"):
                break
            labels.append(stripped)
        at += 1
    columns = {}
    for name, (label, default) in READ_COLUMNS.items():
        index = next((i for i, text in enumerate(labels) if text.startswith(label + " ")), None)
        if index is None and default is None:
            crash(f"Error: star file {path} has no {label} column")
        columns[name] = index
    rows = []
    for line in lines[at:]:
        if not line.strip():
            break  # the data block ends at the first empty line
        if line.lstrip()[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < len(labels):
            crash(f"Error: star file {path}: line with {len(fields)} of {len(labels)} fields")
        row = {}
        for name, index in columns.items():
            row[name] = float(fields[index]) if index is not None else READ_COLUMNS[name][1]
        row["PSHIFT"] = math.radians(row["PSHIFT"])  # read in degrees, kept in radians
        rows.append(row)
    return rows


def write_star(path: str, rows: list[dict[str, float]], comments: list[str]) -> None:
    """refine2d's star file: its header comments, the labels, and one formatted line a row."""
    text = [f"# Written by cisTEM Version 2.0.0-alpha-standin on {time.strftime('%Y-%m-%d')}"]
    text += [*comments, " ", "data_", " ", "loop_"]
    text += [f"{READ_COLUMNS[name][0]} #{i}" for i, (name, _) in enumerate(WRITE_COLUMNS, 1)]
    text.append(NAME_LINE)
    line_format = "".join(f"{fmt} " for _, fmt in WRITE_COLUMNS)
    for row in rows:
        values = tuple(
            round(row[name]) if name in INTEGER_COLUMNS else row[name] for name, _ in WRITE_COLUMNS
        )
        text.append(line_format % values)
    Path(path).write_text("\n".join(text) + "\n")


def read_stack(path: str) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    return data[np.newaxis] if data.ndim == 2 else data


def write_stack(path: str, images: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.voxel_size = UNSET_PIXEL_SIZE


@dataclass
class Dump:
    box: int
    n_classes: int
    nonzero: list[int]  # 0-based class numbers with data, in order
    images: int
    sum_logp_total: float
    sum_snr: float
    pixel_size: float
    mask_radius: float
    class_logp: np.ndarray  # (nonzero,)
    sums: np.ndarray  # (nonzero, box, box//2+1) complex: Fourier-space class sums
    ctf_sums: np.ndarray  # same shape: CTF² weight sums


def dump_size(box: int, n_classes: int, nonzero: int) -> int:
    return (
        DUMP_HEADER.itemsize
        + 4 * n_classes
        + 4 * nonzero
        + nonzero * 2 * 4 * ((box // 2 + 1) * 2 * box)
    )


def write_dump(path: str, dump: Dump) -> None:
    header = np.array(
        [
            (
                dump.box,
                dump.n_classes,
                len(dump.nonzero),
                dump.images,
                dump.sum_logp_total,
                dump.sum_snr,
                dump.pixel_size,
                dump.mask_radius,
                20.0,
                20.0,
            )
        ],
        dtype=DUMP_HEADER,
    )
    listed = np.full(dump.n_classes, -1, dtype="=i4")
    listed[: len(dump.nonzero)] = dump.nonzero
    parts = [header.tobytes(), listed.tobytes(), dump.class_logp.astype("=f4").tobytes()]
    for class_sum, ctf_sum in zip(dump.sums, dump.ctf_sums, strict=True):
        # FFTW r2c layout: box rows of box/2+1 interleaved (re, im) float32 pairs
        parts.append(class_sum.astype(np.complex64).tobytes())
        parts.append(ctf_sum.astype(np.complex64).tobytes())
    Path(path).write_bytes(b"".join(parts))


def read_dump(path: str) -> Dump:
    data = Path(path).read_bytes()
    if len(data) < DUMP_HEADER.itemsize:
        crash(f"Error: Dump file {path} is truncated")
    header = np.frombuffer(data[: DUMP_HEADER.itemsize], dtype=DUMP_HEADER)[0]
    box, n_classes, nonzero = int(header["box"]), int(header["classes"]), int(header["nonzero"])
    if len(data) != dump_size(box, n_classes, nonzero):
        crash(f"Error: Dump file {path} has {len(data)} bytes, not the layout's size")
    at = DUMP_HEADER.itemsize
    listed = np.frombuffer(data, dtype="=i4", count=n_classes, offset=at)
    at += 4 * n_classes
    class_logp = np.frombuffer(data, dtype="=f4", count=nonzero, offset=at).copy()
    at += 4 * nonzero
    arrays = np.frombuffer(data, dtype=np.complex64, offset=at)
    arrays = arrays.reshape(nonzero, 2, box, box // 2 + 1)
    return Dump(
        box=box,
        n_classes=n_classes,
        nonzero=[int(k) for k in listed[:nonzero]],
        images=int(header["images"]),
        sum_logp_total=float(header["sum_logp_total"]),
        sum_snr=float(header["sum_snr"]),
        pixel_size=float(header["pixel_size"]),
        mask_radius=float(header["mask_radius"]),
        class_logp=class_logp,
        sums=arrays[:, 0].copy(),
        ctf_sums=arrays[:, 1].copy(),
    )


def _index(lines: list[str], start: int, token: str, path: str) -> int:
    for i in range(start, len(lines)):
        if token in lines[i]:
            return i
    crash(f"Error: star file {path} has no {token}")
    raise AssertionError  # crash exits
