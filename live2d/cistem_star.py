"""cisTEM text star files: the per-particle parameter format every engine reads and writes.

Written byte-for-byte the way cisTEM 2's ``refine2d`` writes them (column order, ``%`` formats,
trailing space), so that any cycle's output can be handed to the real programs, and read the way
cisTEM reads them (labels by order, data up to the first empty line).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.atomic import atomic_write_text


@dataclass(frozen=True)
class Column:
    """One column of a cisTEM star file: its short name, its label and how cisTEM prints it."""
    short: str  # the name cisTEM prints in its "#    POS     PSI ..." comment line
    label: str
    fmt: str
    default: float | str


# refine2d's output mask, in cisTEM's fixed writer order, then the provenance columns of the
# particle store: where each particle came from (refine2d ignores them).
COLUMNS: tuple[Column, ...] = (
    Column("POS", "_cisTEMPositionInStack", "%8u", 0),
    Column("PSI", "_cisTEMAnglePsi", "%7.2f", 0.0),
    Column("SHX", "_cisTEMXShift", "%9.2f", 0.0),
    Column("SHY", "_cisTEMYShift", "%9.2f", 0.0),
    Column("DF1", "_cisTEMDefocus1", "%8.1f", 0.0),
    Column("DF2", "_cisTEMDefocus2", "%8.1f", 0.0),
    Column("ANGAST", "_cisTEMDefocusAngle", "%7.2f", 0.0),
    Column("PSHIFT", "_cisTEMPhaseShift", "%7.2f", 0.0),
    Column("OCC", "_cisTEMOccupancy", "%7.2f", 100.0),
    Column("LogP", "_cisTEMLogP", "%9i", 100),
    Column("SIGMA", "_cisTEMSigma", "%10.4f", 10.0),
    Column("SCORE", "_cisTEMScore", "%7.2f", 0.0),
    Column("CHANGE", "_cisTEMScoreChange", "%7.2f", 0.0),
    Column("PSIZE", "_cisTEMPixelSize", "%8.5f", 0.0),
    Column("VOLT", "_cisTEMMicroscopeVoltagekV", "%7.2f", 0.0),
    Column("Cs", "_cisTEMMicroscopeCsMM", "%7.2f", 2.7),
    Column("AmpC", "_cisTEMAmplitudeContrast", "%7.4f", 0.07),
    Column("BTILTX", "_cisTEMBeamTiltX", "%7.3f", 0.0),
    Column("BTILTY", "_cisTEMBeamTiltY", "%7.3f", 0.0),
    Column("ISHFTX", "_cisTEMImageShiftX", "%7.3f", 0.0),
    Column("ISHFTY", "_cisTEMImageShiftY", "%7.3f", 0.0),
    Column("2DCLS", "_cisTEMBest2DClass", "%5i", 0),
    Column("ORIGX", "_cisTEMOriginalXPosition", "%9.2f", 0.0),  # pixels of the micrograph
    Column("ORIGY", "_cisTEMOriginalYPosition", "%9.2f", 0.0),
    Column("MICROGRAPH", "_live2dMicrographName", "'%s'", ""),
    # size:mtime of the source stack when imported (stores that read the stacks in place)
    Column("SRCSTAMP", "_live2dSourceStackStamp", "'%s'", ""),
    # the particle's id in the source that numbers them (a Scipion set's item id; 0: none)
    Column("SRCID", "_live2dSourceId", "%10i", 0),
    Column("ORIGNAME", "_cisTEMOriginalImageFilename", "'%s'", ""),
)
BY_SHORT = {c.short: c for c in COLUMNS}
BY_LABEL = {c.label: c for c in COLUMNS}
# Only in the particle store's star: the source's micrograph, coordinates, id and image name.
PROVENANCE_COLUMNS = ("ORIGX", "ORIGY", "MICROGRAPH", "SRCSTAMP", "SRCID", "ORIGNAME")
STRING_COLUMNS = ("MICROGRAPH", "SRCSTAMP", "ORIGNAME")
# What refine2d writes.
REFINE2D_COLUMNS = tuple(c.short for c in COLUMNS if c.short not in PROVENANCE_COLUMNS)
INTEGER_COLUMNS = ("POS", "LogP", "2DCLS", "SRCID")
# cisTEM reads these with no absent-column fallback (DF*) or uses 0 where it needs a real value.
REQUIRED_COLUMNS = ("POS", "DF1", "DF2", "ANGAST", "PSIZE", "VOLT")


class StarFormatError(ValueError):
    """A star file that cannot be used; the message says which file and what is wrong."""


def new_table(n: int) -> pd.DataFrame:
    """A table of ``n`` particles with cisTEM's defaults and POS = 1..n."""
    table = pd.DataFrame({c: np.full(n, BY_SHORT[c].default) for c in REFINE2D_COLUMNS})
    table["POS"] = np.arange(1, n + 1, dtype=np.int64)
    for name in INTEGER_COLUMNS:
        if name in table:  # not the provenance columns: refine2d's only
            table[name] = table[name].astype(np.int64)
    return table


def format_rows(table: pd.DataFrame, columns: Iterable[str]) -> str:
    """Data lines of ``table`` for ``columns``, each field followed by a space as cisTEM does."""
    columns = list(columns)
    fmt = " ".join(BY_SHORT[c].fmt for c in columns) + " \n"
    values = []
    for name in columns:
        col = table[name].to_numpy()
        if name in INTEGER_COLUMNS:
            col = np.rint(col.astype(np.float64)).astype(np.int64)
        values.append(col.tolist())
    return "".join(fmt % row for row in zip(*values, strict=True))


def header(columns: Iterable[str], comments: Iterable[str] = ()) -> str:
    """Comment lines, the data block, the labels and cisTEM's column-name comment line."""
    columns = list(columns)
    lines = [f"# {c}" for c in comments]
    lines += [" ", "data_", " ", "loop_"]
    lines += [f"{BY_SHORT[c].label} #{i}" for i, c in enumerate(columns, start=1)]
    widths = [len(BY_SHORT[c].fmt % ("" if c in STRING_COLUMNS else 0)) for c in columns]
    lines.append("#" + " ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))[1:] + " ")
    return "\n".join(lines) + "\n"


def columns_of(table: pd.DataFrame) -> list[str]:
    """The known columns present in ``table``, in cisTEM's writer order."""
    return [c.short for c in COLUMNS if c.short in table.columns]


def write_star(path: str | os.PathLike, table: pd.DataFrame, comments: Iterable[str] = ()) -> None:
    """Write ``table`` atomically as a cisTEM star file (temp file, fsync, rename)."""
    columns = columns_of(table)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        missing_text = ", ".join(missing)
        raise StarFormatError(f"cannot write {path}: required columns missing: {missing_text}")
    atomic_write_text(path, header(columns, comments) + format_rows(table, columns))


def read_star(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cisTEM text star file into a table whose columns are cisTEM's short names.

    Unknown labels are kept under their label. Raises StarFormatError naming the file and the
    problem when the file is not a complete star file (for instance cut off mid-write).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise StarFormatError(f"star file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise StarFormatError(f"{path} is not a text star file ({exc})") from None
    return parse_star(text, str(path))


@dataclass
class _Parsed:
    identity: tuple[object, ...]  # the caller's version, device and inode: else read whole
    length: int  # bytes parsed, up to the end of a line
    header: str  # up to the first data line
    table: pd.DataFrame


_GROWING: dict[Path, _Parsed] = {}
GROWING_KEPT = 4  # stars kept parsed: a server that moves between folders keeps the latest


def read_growing_star(path: str | os.PathLike, length: int | None = None,
                      version: str = "") -> pd.DataFrame:
    """:func:`read_star` for a star that only grows by whole rows appended (the particle
    store's): the first read parses it whole, later ones only the rows added since, so that a
    cycle of a million-particle session does not parse a million rows again. ``length``: the
    bytes known to be complete (the store's commit), else the file up to its last newline.
    ``version``: changes whenever the file is started again in place (the store's id and
    generation). The table is the caller's to change."""
    path = Path(path).resolve()
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            identity = (version, status.st_dev, status.st_ino)
            length = status.st_size if length is None else length
            known = _GROWING.get(path)
            if known is None or known.identity != identity or known.length > length:
                known = None
            start = known.length if known else 0
            handle.seek(start)
            data = handle.read(max(0, length - start))
    except FileNotFoundError:
        raise StarFormatError(f"star file not found: {path}") from None
    data = data[: data.rfind(b"\n") + 1]  # a row being appended waits for the next read
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StarFormatError(f"{path} is not a text star file ({exc})") from None
    if known is None:
        table = parse_star(text, str(path))
        _, first_row = _labels(text, str(path))
        known = _Parsed(identity, len(data), text[:first_row], table)
    elif text:
        rows = parse_star(known.header + text, str(path))
        known = _Parsed(identity, known.length + len(data), known.header,
                        pd.concat([known.table, rows], ignore_index=True))
    _GROWING.pop(path, None)
    _GROWING[path] = known  # the newest last
    while len(_GROWING) > GROWING_KEPT:
        del _GROWING[next(iter(_GROWING))]
    return known.table.copy()


def parse_star(text: str, name: str = "<star>") -> pd.DataFrame:
    labels, first_row = _labels(text, name)
    data_lines = []
    for line in text[first_row:].split("\n"):
        if not line.strip():
            break  # cisTEM ends the data block at the first empty line
        if line.lstrip()[:1] not in ("#", ";"):
            data_lines.append(line)
    names = [BY_LABEL[label].short if label in BY_LABEL else label for label in labels]
    if not data_lines:
        return pd.DataFrame({n: pd.Series(dtype=np.float64) for n in names})
    try:
        table = pd.read_csv(
            io.StringIO("\n".join(data_lines)),
            sep=r"\s+",
            header=None,
            names=names,
            quotechar="'",
            dtype={n: str for n in names if n in STRING_COLUMNS or n.endswith("Filename")},
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise StarFormatError(f"{name}: malformed data line ({exc})") from None
    if not table[names[-1]].isna().any():
        for column in ("MICROGRAPH", "SRCSTAMP"):  # written '': not known
            if column in table:
                table[column] = table[column].fillna("")
    if table.isna().to_numpy().any():
        bad = int(np.flatnonzero(table.isna().to_numpy().any(axis=1))[0])
        if len(data_lines[bad].split()) >= len(names):  # all there, one written as nan
            column = table.columns[int(np.flatnonzero(table.iloc[bad].isna().to_numpy())[0])]
            raise StarFormatError(f"{name}: data line {bad + 1} has {column} "
                                  f"{data_lines[bad].split()[names.index(column)]!r}, not a "
                                  "number")
        raise StarFormatError(f"{name}: data line {bad + 1} has fewer than {len(names)} fields")
    for column in table.columns:
        if column in INTEGER_COLUMNS:
            table[column] = table[column].astype(np.int64)
        elif column not in STRING_COLUMNS and table[column].dtype == object:
            raise StarFormatError(f"{name}: column {column} holds non-numeric values")
    return table


def _labels(text: str, name: str) -> tuple[list[str], int]:
    """The column labels after ``data_`` and ``loop_``, and where the first data line starts
    (read line by line from the start: the data, maybe a million rows, are not split here)."""
    position = 0
    found_data = found_loop = False
    labels: list[str] = []
    while position < len(text):
        newline = text.find("\n", position)
        end = len(text) if newline < 0 else newline
        stripped = text[position:end].strip()
        if not found_data:
            found_data = "data_" in stripped
        elif not found_loop:
            found_loop = "loop_" in stripped
        elif stripped and stripped[0] not in "#;":
            if not stripped.startswith("_"):
                break
            labels.append(stripped.split()[0])
        position = end + 1
    if not found_data:
        raise StarFormatError(f"{name}: no data_ block")
    if not found_loop:
        raise StarFormatError(f"{name}: no loop_ in the data block")
    if not labels:
        raise StarFormatError(f"{name}: no column labels after loop_")
    return labels, min(position, len(text))
