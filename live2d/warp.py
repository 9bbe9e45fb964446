"""Reading what Warp writes: ``previous.settings``, the particle star files and the stacks.

Warp rewrites its star files whole, in place, after every movie (see ../shared/warp-formats.md),
so a reader can catch one truncated or mid-write. :func:`read_new_rows` reads only the bytes past
what it read last time, checks that the bytes just before that point are unchanged (a cheap test
that earlier rows were not rewritten differently), and leaves an unfinished last line for the next
poll: importing stays O(new particles) however long the session runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from live2d.mrc import MrcStack, NotAStack, StackIncomplete, open_regular, read_exactly
from live2d.output_folder import STORE_STACK, STORE_STATE

SETTINGS_FILE = "previous.settings"
TAIL_CHECK_BYTES = 64 * 1024
REQUIRED_STAR_COLUMNS = (
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast",
)
# What a particle's CTF and microscope values can be, generously: outside these a value is a typo,
# an overflow or a failed fit, and one such particle turns every class average into NaN.
# (column: lowest, highest, unit)
_RANGES: dict[str, tuple[float, float, str]] = {
    "rlnDefocusU": (-200_000.0, 200_000.0, "Å"),  # ±20 µm
    "rlnDefocusV": (-200_000.0, 200_000.0, "Å"),
    "rlnDefocusAngle": (-360.0, 360.0, "°"),
    "rlnPhaseShift": (-360.0, 360.0, "°"),
    "rlnVoltage": (10.0, 1000.0, "kV"),
    "rlnSphericalAberration": (-20.0, 20.0, "mm"),
    "rlnAmplitudeContrast": (0.0, 1.0, ""),
    "rlnImagePixelSize": (1e-3, 100.0, "Å"),
    "rlnDetectorPixelSize": (1e-3, 1e4, "µm"),
    "rlnMagnification": (1.0, 1e9, ""),
    "rlnCoordinateX": (-1e7, 1e7, "px"),
    "rlnCoordinateY": (-1e7, 1e7, "px"),
}
MAX_ASTIGMATISM = 50_000.0  # Å, |DefocusU - DefocusV|
# A Warp or RELION particle star has tens of columns and rows of a few hundred bytes: beyond
# these it is not a particle star, and parsing it on every poll would take gigabytes.
MAX_STAR_COLUMNS = 1000
MAX_LINE_BYTES = 1 << 20
PARTICLE_FILES = ("allparticles", "goodparticles")
_PARTICLE_FILE_ALIASES = {"all": "allparticles", "good": "goodparticles"}
# A Live2D particle store's stack and its commit record beside it (live2d.store), and the
# prefix of the stamps of such stacks (stack_stamp).
STORE_STAMP = "store:"
# A stack's fingerprint (stack_fingerprint): this many samples of this many bytes.
FINGERPRINT_SAMPLES = 8
FINGERPRINT_BLOCK = 4096
MAX_VERDICTS = 100_000  # fingerprint checks remembered (per stack, size and time)
_VERDICTS: dict[tuple[str, int, int, int, str], bool] = {}


class WarpFolderError(Exception):
    """The folder cannot be used as a Warp folder; the message says what to fix."""


class WarpSettingsMissing(WarpFolderError):
    """The folder exists but holds no ``previous.settings`` (yet): Warp writes it once its
    session has started, so a caller that starts first may wait for it."""


class WarpSettingsUnreadable(WarpFolderError):
    """``previous.settings`` does not parse (Warp may be writing it): try again later."""


class WarpSettingsInvalid(WarpSettingsUnreadable):
    """A ``previous.settings`` value is not a usable number (NaN, infinite, absurd): the message
    names the setting and its value. Tried again at every poll, as Warp may still correct it."""


class WarpStarError(Exception):
    """A particle star file is malformed in a way waiting will not fix."""


class BrokenStack(WarpStarError):
    """A particle stack that waiting will not make readable (not a regular file, a header that
    contradicts the file's size or is not an MRC header): its particles are skipped."""


class StarRewritten(Exception):
    """The star file changed before the point already read: read it again from the start."""


class StackNotReady(Exception):
    """A particle stack is missing or still being written."""

    def __init__(self, stack: str, reason: str) -> None:
        super().__init__(f"{stack}: {reason}")
        self.stack = stack


@dataclass(frozen=True)
class WarpSettings:
    """The particles' acquisition and picking settings as Warp 1.x's previous.settings gives them
    (or as a particle star's rows do): pixel size, box, diameter, picking model, contrast, CTF."""
    pixel_size: float  # Å per pixel of the exported particles (binned)
    box: int
    diameter: float
    model: str
    min_score: float
    export: bool
    invert: bool
    normalize: bool
    voltage: float
    cs: float
    amplitude_contrast: float

    @property
    def signature(self) -> tuple[int, str, float]:
        """What makes particles already imported stale when it changes."""
        return (self.box, self.model, self.min_score)


def read_settings(warp_dir: str | os.PathLike) -> WarpSettings:
    folder = Path(warp_dir)
    if not folder.is_dir():
        raise WarpFolderError(f"{folder} does not exist or is not a folder")
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise WarpSettingsMissing(
            f"no {SETTINGS_FILE} in {folder} yet: is this the folder Warp processes? "
            "(Warp writes it there once a session has started)")
    try:
        # Parse bytes: the XML declaration says utf-16 and the parser honours it.
        root = ET.fromstring(path.read_bytes())
    except (ET.ParseError, OSError) as exc:
        raise WarpSettingsUnreadable(
            f"{path} cannot be parsed ({exc}); Warp may be writing it") from None
    params = _params(root)
    try:
        pixel_size = _setting(path, params, "PixelSizeX", None, 1e-3, 100.0, "Å") * 2 ** _setting(
            path, params, "Import/BinTimes", 0.0, -4.0, 10.0, "")
        settings = WarpSettings(
            pixel_size=round(pixel_size, 6),
            box=int(_setting(path, params, "Picking/BoxSize", None, 8, 4096, "px")),
            diameter=_setting(path, params, "Picking/Diameter", None, 0.0, 10_000.0, "Å"),
            model=PureWindowsPath(params["Picking/ModelPath"]).name,
            min_score=_setting(path, params, "Picking/MinimumScore", 0.0, -1e6, 1e6, ""),
            export=_bool(params.get("Picking/DoExport", "False")),
            invert=_bool(params.get("Picking/Invert", "True")),
            normalize=_bool(params.get("Picking/Normalize", "True")),
            voltage=_setting(path, params, "CTF/Voltage", 300.0, *_RANGES["rlnVoltage"]),
            cs=_setting(path, params, "CTF/Cs", 2.7, *_RANGES["rlnSphericalAberration"]),
            amplitude_contrast=_setting(path, params, "CTF/Amplitude", 0.07,
                                        *_RANGES["rlnAmplitudeContrast"]),
        )
    except KeyError as exc:
        raise WarpSettingsUnreadable(f"{path} has no {exc.args[0]} setting") from None
    if not settings.model:
        raise WarpFolderError(f"{path}: no BoxNet model set (Picking > model): nothing is picked")
    if not settings.export:
        raise WarpFolderError(
            f"particle export is off in Warp ({path}: Picking > Export particles): "
            "turn it on so that Warp writes particle stacks")
    if settings.pixel_size > 100.0:
        raise WarpSettingsInvalid(f"{path}: the pixel size after binning, {pixel_size:g} Å, is "
                                  "above 100 Å: check PixelSizeX and Import/BinTimes in Warp")
    return settings


def _setting(path: Path, params: dict[str, str], name: str, default: float | None,
             low: float, high: float, unit: str) -> float:
    """Setting ``name`` as a finite number within [low, high]; WarpSettingsInvalid naming the
    setting and its value otherwise (a NaN or infinite box or voltage would poison every cycle
    or overflow, and a traceback tells the user nothing). ``default`` None: it is required."""
    if name not in params:
        if default is None:
            raise KeyError(name)
        return default
    text = params[name]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also False for NaN
        raise WarpSettingsInvalid(
            f"{path}: {name} is {text!r}, not a number between {low:g} and {high:g}"
            f"{' ' + unit if unit else ''}: correct it in Warp's settings")
    return value


def _params(root: ET.Element) -> dict[str, str]:
    values = {p.get("Name", ""): p.get("Value", "") for p in root.findall("Param")}
    for section in root:
        for param in section.findall("Param"):
            values[f"{section.tag}/{param.get('Name', '')}"] = param.get("Value", "")
    return values


def _bool(text: str) -> bool:
    return text.strip().lower() == "true"


def particle_file_kind(which: str) -> str:
    """``"all"``/``"allparticles"`` -> ``"allparticles"``, likewise for good particles."""
    kind = _PARTICLE_FILE_ALIASES.get(which, which)
    if kind not in PARTICLE_FILES:
        raise ValueError(f"particle file must be one of {PARTICLE_FILES}, not {which!r}")
    return kind


def particle_star_path(warp_dir: str | os.PathLike, settings: WarpSettings,
                       which: str = "all") -> Path:
    return Path(warp_dir) / f"{particle_file_kind(which)}_{settings.model}.star"


# ----------------------------------------------------------------------------- star files
@dataclass(frozen=True)
class StarProgress:
    """How far a star file has been read: byte offset after the last complete row."""

    offset: int = 0
    rows: int = 0
    labels: tuple[str, ...] = ()
    tail_hash: str = ""

    def to_dict(self) -> dict:
        return {"offset": self.offset, "rows": self.rows, "labels": list(self.labels),
                "tail_hash": self.tail_hash}

    @classmethod
    def from_dict(cls, values: dict) -> StarProgress:
        return cls(int(values["offset"]), int(values["rows"]), tuple(values["labels"]),
                   str(values["tail_hash"]))


def read_new_rows(path: str | os.PathLike, progress: StarProgress) -> tuple[pd.DataFrame,
                                                                           StarProgress]:
    """Rows added to ``path`` since ``progress``, and the progress after them.

    Hand-written rather than ``starfile``: Warp 1.x's star grows by whole rows, and reading only
    the bytes past ``progress`` is what keeps a poll O(new particles) at millions of rows.
    (Stars that are rewritten in any order are read whole: :mod:`live2d.relion_star`.)

    Raises StarRewritten if what was read before has changed, WarpStarError if the file is
    malformed beyond its unfinished last line, FileNotFoundError if it is gone.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < progress.offset:
            raise StarRewritten(f"{path.name} is shorter than before")
        if progress.offset:
            start = max(0, progress.offset - TAIL_CHECK_BYTES)
            handle.seek(start)
            if _hash(handle.read(progress.offset - start)) != progress.tail_hash:
                raise StarRewritten(f"{path.name} was rewritten with different rows")
        if size - progress.offset > MAX_LINE_BYTES:
            # A line without its newline waits for the next poll, but not one so long that it
            # is no row: read its end first rather than gigabytes on every poll.
            handle.seek(size - MAX_LINE_BYTES)
            if b"\n" not in handle.read(MAX_LINE_BYTES):
                raise WarpStarError(f"{path} ends in a line of more than {MAX_LINE_BYTES} bytes "
                                    "without a newline: it is no particle star row")
        handle.seek(progress.offset)
        new = handle.read(size - progress.offset)
    complete = new[: new.rfind(b"\n") + 1]  # an unfinished last line waits for the next poll
    labels = progress.labels
    lines = complete.decode("utf-8", errors="replace").split("\n")
    rows: list[list[str]] = []
    body_started = bool(labels)
    for line in lines:
        text = line.strip()
        if not body_started:
            if text.startswith("_"):
                labels = (*labels, text.split()[0][1:])
                if len(labels) > MAX_STAR_COLUMNS:
                    raise WarpStarError(f"{path} has more than {MAX_STAR_COLUMNS} columns: it "
                                        "is not a Warp particle star")
                continue
            if not text or text.startswith(("data_", "loop_", "#")):
                continue
            body_started = True
            _check_labels(path, labels)
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != len(labels):
            raise WarpStarError(f"{path}: a row has {len(fields)} values where the header has "
                                f"{len(labels)} columns: {text[:120]!r}")
        rows.append(fields)
    if not body_started:  # header only (or not even that) so far: nothing consumed
        return _frame([], tuple(dict.fromkeys((*REQUIRED_STAR_COLUMNS, *labels)))), progress
    end = progress.offset + len(complete)
    with open(path, "rb") as handle:
        handle.seek(max(0, end - TAIL_CHECK_BYTES))
        tail_hash = _hash(handle.read(end - max(0, end - TAIL_CHECK_BYTES)))
    table = _frame(rows, labels)
    table.index = pd.RangeIndex(progress.rows, progress.rows + len(rows))  # row numbers - 1
    return table, StarProgress(end, progress.rows + len(rows), labels, tail_hash)


def _check_labels(path: Path, labels: Iterable[str]) -> None:
    missing = [c for c in REQUIRED_STAR_COLUMNS if c not in labels]
    if missing:
        raise WarpStarError(f"{path} lacks the column(s) {', '.join(missing)}: "
                            "is it a Warp particle star file?")


def _frame(rows: list[list[str]], labels: tuple[str, ...]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(labels))
    for column in labels:
        if column not in ("rlnImageName", "rlnMicrographName"):
            converted = pd.to_numeric(table[column], errors="coerce")
            if converted.isna().any():
                # A text column of a newer Warp, or a column with a bad value in some rows,
                # which check_particle_values refuses (those rows only): keep it as text.
                continue
            table[column] = converted
    return table


@dataclass(frozen=True)
class Refusal:
    """Rows of a particle star refused for one kind of bad value in one column."""

    column: str
    problem: str  # what is wrong, for the log
    value: str  # the first bad value as written
    row: int  # the first refused row's label in the table checked (Warp's star: line - 1)
    names: tuple[str, ...]  # the refused rows' rlnImageName
    micrograph: str  # the first refused row's rlnMicrographName ("" when none)


def check_particle_values(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[Refusal]]:
    """The rows whose CTF, microscope and pixel values are finite and plausible (those columns
    made numbers), and what was refused, one Refusal per column and kind of fault, so that one
    bad row is left out, not the whole star, and is named once rather than once per row."""
    bad, refusals, numbers = implausible_rows(rows)
    good = rows[~bad] if bad.any() else rows  # (no copy of a clean batch)
    text = {c: n[~bad] for c, n in numbers.items() if rows[c].dtype != np.float64}
    return (good.assign(**text) if text else good), refusals


def implausible_rows(rows: pd.DataFrame) -> tuple[np.ndarray, list[Refusal],
                                                  dict[str, np.ndarray]]:
    """Which rows :func:`check_particle_values` refuses (a mask), why, and the checked columns
    as numbers."""
    bad = np.zeros(len(rows), dtype=bool)
    refusals: list[Refusal] = []

    def refuse(column: str, problem: str, mask: np.ndarray, values: pd.Series) -> None:
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            micrograph = (str(rows["rlnMicrographName"].iloc[first])
                          if "rlnMicrographName" in rows else "")
            names = tuple(rows["rlnImageName"].to_numpy()[mask]) if "rlnImageName" in rows else ()
            value = values.iloc[first]
            value = f"{value:g}" if isinstance(value, float) else str(value)  # as written
            refusals.append(Refusal(column, problem, value,
                                    int(rows.index[first]), names, micrograph))
            bad[mask] = True

    numbers: dict[str, np.ndarray] = {}
    for column, (low, high, unit) in _RANGES.items():
        if column not in rows:
            continue
        values = rows[column]
        number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        numbers[column] = number
        refuse(column, "is not a number", np.isnan(number), values)
        refuse(column, "is infinite", np.isinf(number), values)
        refuse(column, f"is outside {low:g} to {high:g}{' ' + unit if unit else ''}",
               np.isfinite(number) & ((number < low) | (number > high)), values)
    if "rlnDefocusU" in numbers and "rlnDefocusV" in numbers:
        with np.errstate(invalid="ignore"):
            astigmatism = np.abs(numbers["rlnDefocusU"] - numbers["rlnDefocusV"])
        too_much = ~bad & (astigmatism > MAX_ASTIGMATISM)
        if too_much.any():  # (the pairs as text only then: a million rows' worth otherwise)
            pairs = rows["rlnDefocusU"].astype(str) + " and " + rows["rlnDefocusV"].astype(str)
            refuse("rlnDefocusU/rlnDefocusV",
                   f"differ by more than {MAX_ASTIGMATISM:g} Å (astigmatism)", too_much, pairs)
    return bad, refusals, numbers


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- stacks
def split_image_name(name: str) -> tuple[int, str]:
    """``"000012@particles/x.mrcs"`` -> ``(11, "particles/x.mrcs")`` (0-based index). Warp runs
    on Windows: a ``particles\\x.mrcs`` path is read the same way."""
    index, _, stack = name.partition("@")
    if not stack or not index.isdigit() or int(index) < 1:
        raise WarpStarError(f"image name {name!r} is not of the form N@stack.mrcs")
    return int(index) - 1, stack.replace("\\", "/")


def read_particle_images(warp_dir: str | os.PathLike, image_names: list[str],
                         box: int | None = None) -> np.ndarray:
    """The images named ``N@stack`` (Warp's rlnImageName), in order, as float32 (n, box, box).

    ``box`` defaults to the size of the first stack's images. Only the images asked for are read
    (plain reads, :class:`live2d.mrc.MrcStack`). Raises StackNotReady if a stack is missing or
    shorter than its header or the names say (Warp still writing it), BrokenStack if it is not
    a stack that waiting will make one, WarpStarError if its images are not ``box`` pixels."""
    wanted: dict[str, list[tuple[int, int]]] = {}
    for position, name in enumerate(image_names):
        index, stack = split_image_name(name)
        wanted.setdefault(stack, []).append((position, index))
    out: np.ndarray | None = None
    for stack, items in wanted.items():
        path = Path(warp_dir) / stack
        needed = max(index for _, index in items) + 1
        images = _open_complete_stack(path, stack, needed)
        if box is None:
            box = images.header.nx
        if (images.header.nx, images.header.ny) != (box, box):
            raise WarpStarError(f"{stack} has {images.header.nx}×{images.header.ny} images; "
                                f"Warp's box is {box}")
        if out is None:
            out = np.empty((len(image_names), box, box), dtype=np.float32)
        try:
            out[[position for position, _ in items]] = images.read(
                np.array([index for _, index in items], dtype=np.int64))
        except OSError as exc:  # shortened or replaced since its header was read
            raise StackNotReady(stack, f"unreadable ({exc})") from None
    if out is None:
        out = np.empty((0, box or 0, box or 0), dtype=np.float32)
    return out


def check_particle_stack(warp_dir: str | os.PathLike, image_names: list[str], box: int) -> str:
    """For particles that stay in their stack (read in place later): check, as
    :func:`read_particle_images` does, that their one stack is complete and of ``box``-px
    images, without reading the pixels; returns the stack's stamp (:func:`stack_stamp`)."""
    stacks = {split_image_name(name)[1] for name in image_names}
    if len(stacks) != 1:
        raise ValueError("the names must all be of one stack")
    stack = stacks.pop()
    path = Path(warp_dir) / stack
    needed = max(split_image_name(name)[0] for name in image_names) + 1
    header = _open_complete_stack(path, stack, needed).header
    if (header.nx, header.ny) != (box, box):
        raise WarpStarError(f"{stack} has {header.nx}×{header.ny} images; Warp's box is {box}")
    try:
        return stack_stamp(path)
    except (OSError, ValueError) as exc:  # replaced since its header was read
        raise StackNotReady(stack, f"unreadable ({exc})") from None


def stack_stamp(path: str | os.PathLike) -> str:
    """What identifies a stack's content. A stack written once: its size and modification time,
    then a fingerprint of its bytes (:func:`stack_fingerprint`), ``size:mtime:fingerprint``;
    the time is the cheap check, the fingerprint the one that decides when the time changed but
    the bytes may not have (a viewer mapping it ``r+``, a backup, rsync). The stack of a Live2D
    particle store (:mod:`live2d.store`, a ``store.json`` beside it) grows by appends that never
    change the particles already committed, so its size and time change while its content does
    not: its store's id and generation instead (``store:<id>:<generation>``)."""
    path = Path(path)
    state = _store_state(path)
    if state is not None:
        return store_stamp(state)
    fd = open_regular(path)
    try:
        status = os.fstat(fd)
        return f"{status.st_size}:{status.st_mtime_ns}:{_fingerprint(fd, status.st_size, path)}"
    finally:
        os.close(fd)


def stack_fingerprint(path: str | os.PathLike) -> str:
    """A digest of FINGERPRINT_SAMPLES samples of 4 KiB spread evenly from the stack's start
    (its header) to its end (the last image): a few small reads, whatever the stack's size. A
    rewrite by Warp changes every image, so it changes samples; a change that spares all of
    them goes unseen."""
    fd = open_regular(path)
    try:
        return _fingerprint(fd, os.fstat(fd).st_size, path)
    finally:
        os.close(fd)


def _fingerprint(fd: int, size: int, path: str | os.PathLike) -> str:
    block = min(FINGERPRINT_BLOCK, size)
    digest = hashlib.blake2b(digest_size=12)
    for offset in sorted({round(i * (size - block) / (FINGERPRINT_SAMPLES - 1))
                          for i in range(FINGERPRINT_SAMPLES)}):
        digest.update(read_exactly(fd, block, offset, path))
    return digest.hexdigest()


def stamp_holds(path: str | os.PathLike, stamp: str, images: int = 0) -> bool:
    """Whether the stack at ``path`` is still the one ``stamp`` was taken of (False if it is
    gone); for a store's stack, also that its store has committed at least ``images`` images.
    Size and time as stamped: it is. Otherwise the same size and fingerprint: it is, and that
    verdict is kept for this size and time, so a touched stack is read for it once."""
    path = Path(path)
    try:
        if not stamp.startswith(STORE_STAMP):
            return _file_stamp_holds(path, stamp)
        state = _store_state(path)
    except (OSError, ValueError):
        return False
    return state is not None and store_stamp(state) == stamp and int(state["count"]) >= images


def _file_stamp_holds(path: Path, stamp: str) -> bool:
    size, mtime, fingerprint = [*stamp.split(":"), "", ""][:3]
    status = os.stat(path)
    if f"{status.st_size}:{status.st_mtime_ns}" == f"{size}:{mtime}":
        return stat.S_ISREG(status.st_mode)
    if not fingerprint or str(status.st_size) != size:  # a stamp of format 3 has none
        return False
    key = (str(path), status.st_ino, status.st_size, status.st_mtime_ns, fingerprint)
    verdict = _VERDICTS.get(key)
    if verdict is None:
        if len(_VERDICTS) > MAX_VERDICTS:
            _VERDICTS.clear()
        verdict = _VERDICTS[key] = stack_fingerprint(path) == fingerprint
    return verdict


def _store_state(stack: Path) -> dict | None:
    """The commit record of the store whose stack ``stack`` is, if it is one that holds every
    particle's pixels (a store reading its sources in place is stamped as any file)."""
    if stack.name != STORE_STACK:
        return None
    try:
        state = json.loads((stack.parent / STORE_STATE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # no store here (it is replaced atomically)
        return None
    if not isinstance(state, dict) or not state.get("store_id") or \
            state.get("images", "copy") != "copy":
        return None
    return state


def stamp_written(stamp: str) -> float | None:
    """When the stack stamped ``stamp`` (:func:`stack_stamp`) was last written, in seconds
    since the epoch: its modification time. None for a store's stamp (``store:...``), which
    holds no time, and for an empty or malformed one."""
    if stamp.startswith(STORE_STAMP):
        return None
    parts = stamp.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1]) / 1e9


def store_stamp(state: dict) -> str:
    """What identifies a store's content, from its ``store.json`` (``state``): its id and
    generation. Its stack is stamped so, and its growing star is read again whole when this
    changes (live2d.cistem_star.read_growing_star)."""
    return f"{STORE_STAMP}{state.get('store_id', '')}:{int(state['generation'])}"


def stack_box(stack: str, warp_dir: str | os.PathLike = ".") -> int:
    """The image size of a stack (``warp_dir``/``stack``) from its header; StackNotReady if it is
    not there or not readable yet."""
    return _open_complete_stack(Path(warp_dir) / stack, stack, 1).header.nx


def _open_complete_stack(path: Path, stack: str, needed: int) -> MrcStack:
    """The stack, whose header and size say it holds at least ``needed`` images. Its header is
    checked against the file's size before anything is allocated."""
    try:
        images = MrcStack(path)
    except FileNotFoundError:
        raise StackNotReady(stack, "not written yet") from None
    except NotAStack as exc:  # said as other skipped stacks are: "skipping the N particles of"
        raise BrokenStack(f"{stack}: {exc}; waiting will not fix it: to classify them, replace "
                          "it with the stack and import into a new output folder") from None
    except (StackIncomplete, OSError) as exc:
        raise StackNotReady(stack, f"unreadable ({exc})") from None
    header = images.header
    if header.nz < needed:
        raise StackNotReady(stack, f"its header counts {header.nz} images, {needed} needed")
    expected = header.data_offset + header.nz * header.image_bytes
    if header.file_size < expected:
        raise StackNotReady(stack, f"{header.file_size} bytes of the {expected} its header "
                                   "announces")
    return images
