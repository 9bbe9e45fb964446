"""A simulated Warp session, laid out exactly as Warp writes one (see ../shared/warp-formats.md).

Projections of an asymmetric phantom with a per-micrograph CTF, random in-plane rotations, shifts
and noise go to one stack per micrograph under ``particles/``; ``allparticles_<model>.star`` and
``goodparticles_<model>.star`` are rewritten whole after every micrograph, as Warp does. The truth
(view, angle, shift of every particle, and the clean views) goes to a folder beside the Warp
folder so that it cannot be mistaken for Warp output.

Micrographs are named as EPU names its movies (``FoilHole_<hole>_Data_..._<date>_<time>``,
:func:`epu_movie_name`), so the yield per foil hole (live2d.collection_yield) has holes to count;
foil holes lie on grid squares in collection order, and one square can be made mostly empty
ice (``bad_square``), as a square of too thick or thin ice gives, for the bad-square alert.
Micrograph ``i`` is generated from the seed and ``i`` alone, so simulating 240 particles into a
folder that holds 120 of the same simulation appends micrographs and leaves the first ones
byte-identical: this is how tests mimic a session that keeps collecting.
"""

from __future__ import annotations

import csv
import io
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import mrcfile
import numpy as np

from live2d.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from live2d.junk import JUNK_KINDS
from live2d.model_projection import ModelPhantom
from live2d.phantom import Phantom

MODEL = "BoxNet2Mask_20180918"
BIN_TIMES = 1  # settings store the raw pixel size; particles are binned by 2**BinTimes
MICROGRAPH_PIXELS = 4096

# Section (None = top level) -> parameter -> value, in the order Warp writes them.
_SETTINGS_LAYOUT: dict[str | None, list[str]] = {
    None: ["DataStyle", "PixelSizeX", "PixelSizeY", "PixelSizeAngle"],
    "Import": ["Folder", "Extension", "BinTimes", "GainPath"],
    "CTF": ["Window", "Range", "Voltage", "Cs", "Amplitude", "DoPhase"],
    "Picking": ["ModelPath", "Diameter", "MinimumScore", "MinimumMaskDistance", "DoExport",
                "BoxSize", "Invert", "Normalize", "RunningWindowLength"],
}

_STAR_COLUMNS = [
    "rlnCoordinateX", "rlnCoordinateY", "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift", "rlnDefocusU",
    "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution", "rlnImageName", "rlnMicrographName",
]
_TRUTH_COLUMNS = ["image_name", "kind", "view", "psi", "shift_x", "shift_y", "defocus_u",
                  "defocus_v", "defocus_angle"]
# An atomic model's picks also carry their orientation: ZYZ Euler angles (rot, tilt, psi) in
# degrees, psi being the column above (live2d.model_projection).
MODEL_TRUTH_COLUMNS = ["rot", "tilt"]
VOLTAGE, CS, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.07
# EPU's movie names: fixed, not the clock's, so that a simulation extended later keeps them.
MICROGRAPHS_PER_HOLE = 4
HOLES_PER_SQUARE = 4
# A bad square's share of junk picks: far from the others', as the bad-square alert needs
# (below half the median square's good share), yet not all junk, so that its micrographs keep
# the particles' noise level (live2d.phantom sets it from them).
BAD_SQUARE_JUNK = 0.9
# Empty ice only, as picked on a square of too thick or too thin ice: the other kinds of junk
# (aggregates above all) fall into good classes too often for a square to stand out.
BAD_SQUARE_KINDS = ("empty",)
_FIRST_SQUARE = 24668021
# Where EPU's stage puts the simulated squares: a raster of SQUARES_PER_ROW, SQUARE_PITCH_M
# apart (a 300-mesh grid's pitch is about 85 µm), so that the map has a grid to show.
SQUARES_PER_ROW, SQUARE_PITCH_M = 4, 80e-6
# The namespaces of EPU's MicroscopeImage files (.NET DataContract serialisation).
_EPU_NAMESPACE = "http://schemas.datacontract.org/2004/07/Fei.SharedObjects"
_XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
SECONDS_PER_MICROGRAPH = 20
_FIRST_HOLE, _FIRST_TEMPLATE, _FIRST_ACQUISITION = 24697853, 24671885, 24671887
_FIRST_MOVIE_TIME = datetime(2023, 11, 4, 8, 40, 15)


def epu_movie_name(index: int) -> str:
    """The name EPU gives micrograph ``index`` of the simulation (live2d.epu), without extension:
    :data:`MICROGRAPHS_PER_HOLE` to a foil hole, one every :data:`SECONDS_PER_MICROGRAPH`."""
    template = _FIRST_TEMPLATE + index % MICROGRAPHS_PER_HOLE
    taken = _FIRST_MOVIE_TIME + timedelta(seconds=SECONDS_PER_MICROGRAPH * index)
    return (f"FoilHole_{_FIRST_HOLE + index // MICROGRAPHS_PER_HOLE}_Data_{template}_"
            f"{_FIRST_ACQUISITION + index}_{taken:%Y%m%d_%H%M%S}_fractions")


def square_of(index: int, holes_per_square: int = HOLES_PER_SQUARE) -> int:
    """The grid square (0 for the first one collected) of micrograph ``index``: EPU collects a
    square's foil holes before it moves on, ``holes_per_square`` of them. Fixed by ``index``
    alone, so a session that grows keeps every micrograph on its square."""
    return index // MICROGRAPHS_PER_HOLE // holes_per_square


def write_epu_acquisition(epu_dir: Path, index: int,
                          holes_per_square: int = HOLES_PER_SQUARE) -> None:
    """The file EPU writes into its session folder ``epu_dir`` for micrograph ``index`` of the
    simulation, under its grid square (:func:`square_of`): what live2d.epu reads is its name
    and folder, so it holds only a stub."""
    square = _FIRST_SQUARE + square_of(index, holes_per_square)
    data = epu_dir / "Images-Disc1" / f"GridSquare_{square}" / "Data"
    acquisition = data / f"{epu_movie_name(index).removesuffix('_fractions')}.xml"
    if not acquisition.exists():
        data.mkdir(parents=True, exist_ok=True)
        acquisition.write_text("<MicroscopeImage/>\n", encoding="utf-8")
    write_epu_square_image(epu_dir, square_of(index, holes_per_square), holes_per_square)


def write_epu_square_image(epu_dir: Path, number: int,
                           holes_per_square: int = HOLES_PER_SQUARE) -> None:
    """The image EPU takes of grid square ``number`` (0 for the first collected) before its
    holes, ``GridSquare_<date>_<time>.xml`` with the stage position live2d.epu reads: squares
    on a raster, row after row, the first at the stage's origin. Written once: a session that
    grows leaves it as it is."""
    first = number * holes_per_square * MICROGRAPHS_PER_HOLE  # its first micrograph
    taken = (_FIRST_MOVIE_TIME + timedelta(seconds=SECONDS_PER_MICROGRAPH * first)
             - timedelta(seconds=SECONDS_PER_MICROGRAPH))
    folder = epu_dir / "Images-Disc1" / f"GridSquare_{_FIRST_SQUARE + number}"
    image = folder / f"GridSquare_{taken:%Y%m%d_%H%M%S}.xml"
    if image.exists():
        return
    row, column = divmod(number, SQUARES_PER_ROW)
    # Rows go down the atlas, as EPU shows it: stage y decreasing.
    position = {"A": 0.0, "B": 0.0, "X": column * SQUARE_PITCH_M, "Y": -row * SQUARE_PITCH_M,
                "Z": 0.0}
    coordinates = "".join(f"<{name}>{value!r}</{name}>" for name, value in position.items())
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(image, '<?xml version="1.0" encoding="utf-8"?>\n'
                      f'<MicroscopeImage xmlns="{_EPU_NAMESPACE}" xmlns:i="{_XSI_NAMESPACE}">'
                      f"<microscopeData><stage><Position>{coordinates}</Position></stage>"
                      "</microscopeData></MicroscopeImage>\n")


def truth_dir_for(warp_dir: Path) -> Path:
    warp_dir = Path(warp_dir)
    return warp_dir.parent / f"{warp_dir.name}_truth"


def default_settings(box: int, pixel_size: float, diameter: float) -> dict[str | None, dict]:
    raw = pixel_size / 2**BIN_TIMES
    return {
        None: {"DataStyle": "Frames", "PixelSizeX": raw, "PixelSizeY": raw, "PixelSizeAngle": 0},
        "Import": {"Folder": "D:\\session\\frames", "Extension": "*.tif", "BinTimes": BIN_TIMES,
                   "GainPath": ""},
        "CTF": {"Window": 512, "Range": 0.1, "Voltage": VOLTAGE, "Cs": CS,
                "Amplitude": AMPLITUDE_CONTRAST, "DoPhase": False},
        "Picking": {"ModelPath": f"C:\\Warp\\boxnet2models\\{MODEL}", "Diameter": round(diameter),
                    "MinimumScore": 0.95, "MinimumMaskDistance": 0, "DoExport": True,
                    "BoxSize": box, "Invert": True, "Normalize": True,
                    "RunningWindowLength": 10000},
    }


def read_settings_values(warp_dir: Path) -> dict[str | None, dict]:
    """The parameters of an existing ``previous.settings``, by section, as strings."""
    root = ET.fromstring((Path(warp_dir) / "previous.settings").read_bytes())
    values: dict[str | None, dict] = {None: {}}
    for param in root.findall("Param"):
        values[None][param.get("Name")] = param.get("Value")
    for section in root:
        if section.tag != "Param":
            values[section.tag] = {p.get("Name"): p.get("Value") for p in section.findall("Param")}
    return values


def write_settings(warp_dir: Path, values: dict[str | None, dict] | None = None,
                   **overrides: object) -> None:
    """Write ``previous.settings`` as Warp does (UTF-16 with a byte-order mark). Without
    ``values`` the folder's current settings are kept; ``overrides`` replace parameters by name
    wherever they sit, e.g. ``write_settings(folder, DoExport=False, BoxSize=96)``."""
    values = values if values is not None else read_settings_values(warp_dir)
    values = {section: dict(params) for section, params in values.items()}
    for name, value in overrides.items():
        section = next((s for s, params in values.items() if name in params), "Picking")
        values.setdefault(section, {})[name] = value
    root = ET.Element("Settings")
    for section, params in values.items():
        parent = root if section is None else ET.SubElement(root, section)
        for name, value in params.items():
            ET.SubElement(parent, "Param", Name=name, Value=_setting_text(value))
    ET.indent(root)
    text = '<?xml version="1.0" encoding="utf-16"?>\n' + ET.tostring(root, encoding="unicode")
    atomic_write_bytes(Path(warp_dir) / "previous.settings", text.encode("utf-16"))


def _setting_text(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def simulate(
    warp_dir: Path,
    *,
    particles: int = 2000,
    per_micrograph: int = 200,
    interval: float = 0.0,
    box: int = 128,
    pixel_size: float = 1.5,
    snr: float = 0.1,
    views: int = 12,
    seed: int = 0,
    junk: float = 0.0,
    off_centre: float = 0.0,
    truth_dir: Path | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    epu_dir: Path | None = None,
    holes_per_square: int = HOLES_PER_SQUARE,
    bad_square: int = 0,
    model: Path | None = None,
) -> int:
    """Write (or extend) a simulated Warp session of ``particles`` picks; returns how many
    micrographs were written. With ``interval`` > 0 a micrograph appears every ``interval``
    seconds, as on a microscope; ``keep_going`` lets a caller end such a run early.

    ``junk``: the fraction of picks that are junk (empty ice, contamination, carbon edges,
    aggregates; :mod:`live2d.junk`). ``off_centre``: picks land up to this many pixels from the
    particle's centre (0: up to 8% of its diameter, a good picker). The truth records each
    pick's kind. ``epu_dir``: also write the EPU session folder's acquisition files there, one
    per micrograph under its grid square, as EPU does before Warp sees the movie.
    ``holes_per_square``: foil holes EPU collects on a grid square before the next
    (:data:`MICROGRAPHS_PER_HOLE` micrographs to a hole). ``bad_square``: the grid square,
    counted from 1 in collection order, whose picks are mostly empty ice
    (:data:`BAD_SQUARE_JUNK`, :data:`BAD_SQUARE_KINDS`); 0 for none. ``model``: an atomic
    model (PDB or mmCIF) projected at uniformly random orientations, a continuum of views
    (:class:`live2d.model_projection.ModelPhantom`), instead of the phantom's ``views``
    discrete ones; the truth then records each particle's orientation (:data:`MODEL_TRUTH_COLUMNS`),
    ``views.mrc`` holds ``views`` projections of it (the aggregates' material)."""
    if particles < 0 or per_micrograph < 1:
        raise ValueError("particles must be >= 0 and per_micrograph >= 1")
    if holes_per_square < 1 or bad_square < 0:
        raise ValueError("holes_per_square must be >= 1 and bad_square >= 0 (0: none)")
    if not 0.0 <= junk < 1.0 or off_centre < 0:
        raise ValueError("junk must be a fraction in [0, 1) and off_centre >= 0 pixels")
    warp_dir = Path(warp_dir)
    truth_dir = Path(truth_dir) if truth_dir else truth_dir_for(warp_dir)
    (warp_dir / "particles").mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    phantom = (ModelPhantom(Path(model), box, pixel_size, n_views=views, seed=seed) if model
               else Phantom(box, pixel_size, n_views=views, seed=seed))

    signature = {"box": box, "pixel_size": pixel_size, "views": views, "seed": seed, "snr": snr,
                 "per_micrograph": per_micrograph}
    if junk or off_centre:  # absent otherwise, so folders simulated before them still extend
        signature |= {"junk": junk, "off_centre": off_centre}
    if bad_square:  # only a bad square changes images: without one, older folders still extend
        signature |= {"holes_per_square": holes_per_square, "bad_square": bad_square}
    if model:  # the truth of such a session is rendered from it again when scoring
        signature["model"] = str(Path(model).resolve())
    record_path = truth_dir / "simulation.json"
    previous = json.loads(record_path.read_text()) if record_path.exists() else None
    reuse = previous is not None and previous["signature"] == signature
    if not reuse or not (warp_dir / "previous.settings").exists():
        write_settings(warp_dir, default_settings(box, pixel_size, phantom.diameter))
    _write_mrc(truth_dir / "views.mrc", phantom.views, pixel_size)

    sizes = [per_micrograph] * (particles // per_micrograph)
    if particles % per_micrograph:
        sizes.append(particles % per_micrograph)
    star_rows: list[list[str]] = []
    truth_rows: list[list[object]] = []
    written = 0
    for index, size in enumerate(sizes):
        if not keep_going():
            break
        movie = epu_movie_name(index)
        if epu_dir is not None:
            write_epu_acquisition(Path(epu_dir), index, holes_per_square)
        on_bad_square = square_of(index, holes_per_square) == bad_square - 1
        stack_name = f"particles/{movie}_{MODEL}.mrcs"
        rng = np.random.default_rng([seed, index])
        defocus_u = rng.uniform(8000.0, 25000.0)
        defocus_v = defocus_u - rng.uniform(0.0, 600.0)
        defocus_angle = rng.uniform(-90.0, 90.0)
        batch = phantom.particles(size, rng, snr=snr, defocus_u=defocus_u, defocus_v=defocus_v,
                                  defocus_angle=defocus_angle, voltage=VOLTAGE, cs=CS,
                                  amplitude_contrast=AMPLITUDE_CONTRAST,
                                  max_shift=off_centre * pixel_size if off_centre
                                  else 0.08 * phantom.diameter,
                                  junk=max(junk, BAD_SQUARE_JUNK) if on_bad_square else junk,
                                  junk_kinds=BAD_SQUARE_KINDS if on_bad_square else JUNK_KINDS)
        coordinates = rng.uniform(box, MICROGRAPH_PIXELS - box, size=(size, 2))
        recorded = previous["sizes"] if reuse else []
        stack_path = warp_dir / stack_name
        if index >= len(recorded) or recorded[index] != size or not stack_path.exists():
            _write_mrc(stack_path, batch.images, pixel_size)
            written += 1
        for i in range(size):
            image_name = f"{i + 1:06d}@{stack_name}"
            star_rows.append([
                f"{coordinates[i, 0]:.2f}", f"{coordinates[i, 1]:.2f}", "10000.0",
                f"{pixel_size:.4f}", f"{VOLTAGE:.1f}", f"{CS:.2f}", f"{AMPLITUDE_CONTRAST:.3f}",
                "0.0", f"{defocus_u:.2f}", f"{defocus_v:.2f}", f"{defocus_angle:.2f}", "3.8",
                image_name, f"{movie}.tif",
            ])
            truth_rows.append([image_name, batch.kind[i], int(batch.view[i]),
                               round(float(batch.psi[i]), 4),
                               round(float(batch.shift[i, 0]), 4),
                               round(float(batch.shift[i, 1]), 4), round(defocus_u, 2),
                               round(defocus_v, 2), round(defocus_angle, 2)])
            if batch.euler is not None:
                truth_rows[-1] += [round(float(batch.euler[i, 0]), 4),
                                   round(float(batch.euler[i, 1]), 4)]
        if interval > 0 or index == len(sizes) - 1:
            _write_truth(truth_dir, truth_rows,
                         _TRUTH_COLUMNS + (MODEL_TRUTH_COLUMNS if model else []))
            atomic_write_json(record_path, {"signature": signature, "sizes": sizes[: index + 1]})
            _write_warp_stars(warp_dir, star_rows)
        if interval > 0 and index < len(sizes) - 1:
            time.sleep(interval)
    return written


def _write_mrc(path: Path, data: np.ndarray, pixel_size: float) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        mrc.voxel_size = pixel_size


def _write_warp_stars(warp_dir: Path, rows: list[list[str]]) -> None:
    """Rewrite both particle star files whole and in place: Warp does not write them atomically,
    and readers must cope with that."""
    lines = ["", "data_", "", "loop_"]
    lines += [f"_{name} #{i}" for i, name in enumerate(_STAR_COLUMNS, start=1)]
    lines += ["  ".join(row) for row in rows]
    text = "\n".join(lines) + "\n\n"
    for kind in ("allparticles", "goodparticles"):
        (warp_dir / f"{kind}_{MODEL}.star").write_text(text, encoding="utf-8")


def _write_truth(truth_dir: Path, rows: list[list[object]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(truth_dir / "particles.csv", buffer.getvalue())
