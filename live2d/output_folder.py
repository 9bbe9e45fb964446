"""The output folder's layout: the name of every file Live2D writes there, in one place.

A session's output folder (``--output``; ``<Warp folder>/classification`` by default) holds::

    session.json                 settings and the job in progress        (live2d.session)
    session.lock                 locked by the process classifying here  (live2d.session_lock)
    history.jsonl                every cycle's record, appended          (live2d.history)
    live2d.log                   the session's log
    selection.json               class marks, carried marks, exports     (live2d.selection)
    particles.star               the particle store's table              (live2d.store)
    particles.mrcs               its images, where it copies them
    particles.sources.json       the stacks it reads in place instead    (live2d.source_images)
    store.json                   the store's commit point
    import.json                  the importer's progress                 (live2d.importer)
    cycle_NNN.mrc                cycle NNN's class averages (an older streaming update's
                                   thinned: live2d.history)
    cycle_NNN.star               its particles' parameters (cisTEM's star)
    cycle_NNN_classes.json       its class table: resolution, score, reasons (live2d.class_quality)
    cycle_NNN_shares.npy         its particles' signal shares, measured when first curated
                                   (live2d.curation), pruned with its star
    thumbnails/cycle_NNN/class_KKK.png   the page's images of its classes (pruned, made again)
    exports/good_cycle_NNN.star  the page's exports of good particles
    stream/batch_S_cycle_NNN.pt  a streaming batch's class sums: particles from S, classified
                                   in cycle NNN                        (live2d.streaming)
    stream/halves_S_cycle_NNN.pt its half-set sums, for the class quality
    stream/rows_S_cycle_NNN.star its particles' parameters (cisTEM's star): a streaming
                                   update's cycle_NNN.star is made from these on demand
    stream/dump_S_cycle_NNN.dat  its class sums as cisTEM's refine2d dumps them, for merge2d
                                   (the cisTEM engine's batches only)
    yield_squares.csv            good particles per grid square, per foil hole, per micrograph
    yield_holes.csv                of the latest scored cycle           (live2d.collection_yield)
    yield_micrographs.csv
    alerts.json                  the alerts in force                      (live2d.alerts)
    forecast.json                the latest scored cycle's forecast, as lines (live2d.forecast)
    work/                        a running cycle's scratch, emptied whenever a session opens

A particle store may also live in a folder of its own (the Scipion import's): the store's names
are then relative to that folder. Everything that names one of these files takes the name from
here: the session, the readers (status, export, the Scipion plugin) and the web server's routes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SESSION_STATE = "session.json"
SESSION_LOCK = "session.lock"  # flock-ed by the one process that writes the folder
HISTORY = "history.jsonl"
LOG = "live2d.log"
SELECTION = "selection.json"
SELECTION_LOCK = ".selection.lock"  # held while the selection is changed
STORE_TABLE = "particles.star"
STORE_STACK = "particles.mrcs"
STORE_SOURCES = "particles.sources.json"
STORE_STATE = "store.json"
IMPORT_STATE = "import.json"
THUMBNAILS = "thumbnails"
EXPORTS = "exports"
WORK = "work"
STREAM_SUMS = "stream"
YIELD_SQUARES = "yield_squares.csv"
YIELD_HOLES = "yield_holes.csv"
YIELD_MICROGRAPHS = "yield_micrographs.csv"
ALERTS = "alerts.json"
FORECAST = "forecast.json"
# Each yield table's file, by what its rows are (live2d.collection_yield.LEVELS).
YIELD_TABLES = {"square": YIELD_SQUARES, "hole": YIELD_HOLES, "micrograph": YIELD_MICROGRAPHS}
# Where a session's output goes by default, inside the Warp folder it watches.
DEFAULT_OUTPUT = "classification"

_NUMBER = r"\d{3,}"  # cycle and class numbers: zero-padded to 3 digits, more past 999
# The files the web server may send: a cycle's results, its thumbnails, the exports.
SERVED_FILES = re.compile(
    rf"^(cycle_{_NUMBER}\.(mrc|star)|cycle_{_NUMBER}_classes\.json|"
    rf"{THUMBNAILS}/cycle_{_NUMBER}/class_{_NUMBER}\.png|"
    rf"{EXPORTS}/good_cycle_{_NUMBER}\.star)$")
THUMBNAIL = re.compile(rf"^{THUMBNAILS}/(cycle_{_NUMBER})/class_{_NUMBER}\.png$")


def cycle_stem(number: int) -> str:
    """``cycle_007``: the name every file of cycle ``number`` starts with."""
    return f"cycle_{number:03d}"


def shares_name(number: int) -> str:
    """The signal share of each particle of cycle ``number`` (live2d.curation), by star row."""
    return f"{cycle_stem(number)}_shares.npy"


def thumbnail_name(class_number: int) -> str:
    """A class's thumbnail inside its cycle's thumbnail folder (classes count from 1)."""
    return f"class_{class_number:03d}.png"


def batch_sums_name(start: int, cycle: int) -> str:
    """The kept class sums of the streaming batch from particle ``start``, classified in
    ``cycle``: one file per classification, so a batch classified again gets a new file and a
    kill never leaves a file that two records mean differently."""
    return f"batch_{start:09d}_{cycle_stem(cycle)}.pt"


def batch_halves_name(start: int, cycle: int) -> str:
    """The kept half-set sums (live2d.class_quality) of the same batch, named the same way."""
    return f"halves_{start:09d}_{cycle_stem(cycle)}.pt"


def batch_rows_name(start: int, cycle: int) -> str:
    """The same batch's particle parameters, a cisTEM star of its rows."""
    return f"rows_{start:09d}_{cycle_stem(cycle)}.star"


def batch_dump_name(start: int, cycle: int) -> str:
    """The same batch's refine2d dump file (the cisTEM engine's partial class sums)."""
    return f"dump_{start:09d}_{cycle_stem(cycle)}.dat"


def export_name(cycle: int) -> str:
    """The star the page exports the good particles of ``cycle`` to, in :data:`EXPORTS`."""
    return f"good_{cycle_stem(cycle)}.star"


def is_export_name(name: str) -> bool:
    """Whether ``name`` is one :func:`export_name` gives."""
    return re.fullmatch(rf"good_cycle_{_NUMBER}\.star", name) is not None


@dataclass(frozen=True)
class CycleFiles:
    """Where one cycle's results go, as paths in the output folder, and its scratch input."""

    classes: Path  # the class averages, an MRC stack
    star: Path  # the particles' parameters after the cycle
    class_table: Path
    thumbnails: Path  # a folder of PNGs
    input_star: Path  # in the work folder: what the engine reads

    def relative(self, path: Path) -> str:
        """``path`` as the cycle's record stores it: relative to the output folder."""
        return str(path.relative_to(self.classes.parent))


class OutputFolder:
    """The paths of one output folder (the names are this module's constants)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.session_state = self.root / SESSION_STATE
        self.lock = self.root / SESSION_LOCK
        self.history = self.root / HISTORY
        self.log = self.root / LOG
        self.selection = self.root / SELECTION
        self.store_table = self.root / STORE_TABLE
        self.store_state = self.root / STORE_STATE
        self.import_state = self.root / IMPORT_STATE
        self.work = self.root / WORK
        self.exports = self.root / EXPORTS
        self.stream_sums = self.root / STREAM_SUMS

    def __truediv__(self, name: str | os.PathLike) -> Path:
        """A file named relative to the folder, as cycle records name theirs."""
        return self.root / name

    def cycle(self, number: int) -> CycleFiles:
        stem = cycle_stem(number)
        return CycleFiles(classes=self.root / f"{stem}.mrc",
                          star=self.root / f"{stem}.star",
                          class_table=self.root / f"{stem}_classes.json",
                          thumbnails=self.root / THUMBNAILS / stem,
                          input_star=self.work / f"{stem}_input.star")

    def thumbnail_folder(self, stem: str) -> Path:
        """The thumbnail folder of the cycle whose files start with ``stem``."""
        return self.root / THUMBNAILS / stem


def find_output_folder(folder: str | os.PathLike) -> Path | None:
    """The output folder a user means by ``folder``: the folder itself, or the default output
    folder inside a Warp folder; None where neither holds a session."""
    folder = Path(folder)
    for candidate in (folder, folder / DEFAULT_OUTPUT):
        if (candidate / SESSION_STATE).is_file():
            return candidate
    return None
