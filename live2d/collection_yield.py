"""How many good particles each micrograph, foil hole and grid square gave: where to collect more.

Every pick in the particle store counts as a particle; it is good when the latest published
cycle with class scores put it in a selected class (:func:`live2d.selection.selected`: the
proposal with the user's marks over it) and, where the session curates particles, the curation
keeps it (:mod:`live2d.curation`: its junk inside good classes is not good; the curation is
measured once per cycle and kept, so this costs a read of its shares). Where the curation
cannot be had (turned off, the cycle's images gone) whole classes count, and
:attr:`ScoredParticles.curated` says which. Picks that cycle did not classify (imported since,
or left out) count as particles, not good ones. Holes and squares come from the micrograph names
and an EPU session folder (:mod:`live2d.epu`); micrographs whose names are not EPU's are counted
per micrograph only.

Each table holds, per row: micrographs, particles, good_particles, good_fraction (0..1) and
first_seen / last_seen (ISO 8601 UTC, from EPU's names; empty where unknown). The session writes
all three as CSV beside the classes after every scored cycle (:func:`write_yield_tables`): one
pass over the store's micrograph column and the cycle's classes, O(particles) like the cycle's
own star, then O(micrographs).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.atomic import atomic_write_text
from live2d.curation import session_cycle_curation
from live2d.epu import micrograph_origin, read_square_positions
from live2d.history import CycleRecord, particle_results_kept, particle_table, read_history
from live2d.output_folder import YIELD_TABLES
from live2d.selection import SelectionState, selected

log = logging.getLogger("live2d")

_FIGURES = ("micrographs", "particles", "good_particles", "good_fraction", "first_seen",
            "last_seen")
# The columns of each table, by what a row is: the grid square, the foil hole, the micrograph.
COLUMNS: dict[str, tuple[str, ...]] = {
    "square": ("grid_square", *_FIGURES),
    "hole": ("grid_square", "foil_hole", *_FIGURES),
    "micrograph": ("grid_square", "foil_hole", "micrograph", *_FIGURES),
}
LEVELS = tuple(COLUMNS)


class YieldError(RuntimeError):
    """No yield to give yet (no scored cycle, its star pruned); the message says why."""


@dataclass(frozen=True)
class ScoredParticles:
    """Every particle of the store, in store order: its micrograph, its class in the cycle
    (0: the cycle did not classify it) and whether it is good; ``curated``: good means kept by
    the particle curation too, not only in a selected class."""

    cycle: int
    micrographs: pd.Series
    good: np.ndarray
    classes: np.ndarray
    curated: bool = False

    @property
    def counted(self) -> str:
        """How good particles were counted, in words for the texts that show them."""
        return ("those the particle curation keeps" if self.curated
                else "whole classes, no particle curation")

    @property
    def classified(self) -> np.ndarray:
        return self.classes > 0

    def only(self, which: np.ndarray) -> ScoredParticles:
        """The particles ``which`` (a mask in store order) selects."""
        return ScoredParticles(self.cycle, self.micrographs[which].reset_index(drop=True),
                               self.good[which], self.classes[which], self.curated)


def latest_scored_cycle(folder: str | os.PathLike) -> CycleRecord:
    """The latest cycle that has class scores and whose per-particle star is still kept.
    Raises YieldError when there is none yet."""
    folder = Path(folder)
    record = next((r for r in reversed(read_history(folder))
                   if r.assessed and particle_results_kept(folder, r)), None)
    if record is None:
        raise YieldError(f"no cycle with class scores in {folder} yet: the yield follows the "
                         "first classification job's second cycle")
    return record


def score_particles(folder: str | os.PathLike, store_table: pd.DataFrame,
                    record: CycleRecord | None = None, curate: bool = True) -> ScoredParticles:
    """Each particle of ``store_table`` (the store's rows) good or not by ``record`` (default:
    :func:`latest_scored_cycle`), the selection and, with ``curate``, the session's particle
    curation where it can be had (it reads every selected particle's image: whole classes
    count without it). Raises YieldError when there is no scored cycle."""
    folder = Path(folder)
    record = record or latest_scored_cycle(folder)
    chosen = selected(record, SelectionState.load(folder))
    classes = particle_table(folder, record)
    curation = session_cycle_curation(folder, record, classes) if curate else None
    in_chosen = classes["2DCLS"].isin(chosen).to_numpy()
    if curation is not None:
        in_chosen = in_chosen & curation.keep
    # POS is the store position (from 1) of the particle each row of the cycle's star is.
    positions = (classes["POS"].to_numpy(dtype=np.int64) - 1 if "POS" in classes
                 else np.arange(len(classes)))
    in_store = (positions >= 0) & (positions < len(store_table))
    good = np.zeros(len(store_table), dtype=bool)
    good[positions[in_store]] = in_chosen[in_store]
    assigned = np.zeros(len(store_table), dtype=np.int64)
    assigned[positions[in_store]] = classes["2DCLS"].to_numpy(dtype=np.int64)[in_store]
    micrographs = (store_table["MICROGRAPH"].fillna("").astype(str) if "MICROGRAPH" in store_table
                   else pd.Series([""] * len(store_table)))
    return ScoredParticles(record.number, micrographs.reset_index(drop=True), good, assigned,
                           curation is not None)


def yield_tables(particles: ScoredParticles,
                 hole_squares: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """The rows of every table (:data:`LEVELS`), in the order collection first met each
    micrograph, hole and square. ``hole_squares``: foil hole -> grid square, from an EPU
    folder; a square in the micrograph's path counts where the map has none."""
    hole_squares = hole_squares or {}
    counts = pd.DataFrame({"micrograph": particles.micrographs, "good": particles.good}) \
        .groupby("micrograph", sort=False)["good"].agg(["size", "sum"])
    origins = [micrograph_origin(str(name)) for name in counts.index]
    # A hole's square, from any of its movies' paths that names one, unless EPU's folder does.
    squares = {o.foil_hole: o.grid_square for o in origins if o.foil_hole and o.grid_square}
    squares |= hole_squares
    per_micrograph: list[dict] = []
    for origin, count, good in zip(origins, counts["size"], counts["sum"], strict=True):
        square = squares.get(origin.foil_hole, "") or origin.grid_square
        per_micrograph.append({"grid_square": square, "foil_hole": origin.foil_hole,
                               "micrograph": origin.micrograph,
                               **_figures([origin.acquired], 1, int(count), int(good))})
    return {"micrograph": per_micrograph,
            "hole": _group(per_micrograph, ("grid_square", "foil_hole"), "foil_hole"),
            "square": _group(per_micrograph, ("grid_square",), "grid_square")}


def _group(rows: list[dict], keys: tuple[str, ...], needed: str) -> list[dict]:
    """``rows`` (per micrograph) added up by ``keys``, leaving out those without ``needed``."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        if row[needed]:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [{**dict(zip(keys, key, strict=True)),
             **_figures([t for r in members for t in (r["first_seen"], r["last_seen"])],
                        len(members), sum(r["particles"] for r in members),
                        sum(r["good_particles"] for r in members))}
            for key, members in groups.items()]


def _figures(times: list[str], micrographs: int, particles: int, good: int) -> dict:
    known = sorted(t for t in times if t)  # ISO 8601 UTC in one form: sorts as time does
    return {"micrographs": micrographs, "particles": particles, "good_particles": good,
            "good_fraction": round(good / particles, 4) if particles else 0.0,
            "first_seen": known[0] if known else "", "last_seen": known[-1] if known else ""}


def table_csv(rows: list[dict], level: str) -> str:
    """``rows`` of the table ``level`` as CSV, with :data:`COLUMNS` as its header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS[level], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def table_json(rows: list[dict], level: str) -> str:
    return json.dumps([{c: row[c] for c in COLUMNS[level]} for row in rows], indent=1) + "\n"


def write_yield_tables(folder: str | os.PathLike, particles: ScoredParticles,
                       hole_squares: dict[str, str] | None = None) -> None:
    """Write the three tables of the scored ``particles`` as CSV into the output folder
    ``folder`` (:data:`live2d.output_folder.YIELD_TABLES`), each replaced atomically."""
    folder = Path(folder)
    tables = yield_tables(particles, hole_squares)
    for level, name in YIELD_TABLES.items():
        atomic_write_text(folder / name, table_csv(tables[level], level))


# Foil holes sent to the page per grid square; a square with more is cut (the page says so, and
# yield_holes.csv has them all): the map goes to every page after every scored cycle.
MAX_MAP_HOLES = 100
_MAP_FIGURES = ("micrographs", "particles", "good_particles", "good_fraction", "first_seen")


def read_table(folder: str | os.PathLike, level: str) -> list[dict]:
    """The table ``level`` as the session last wrote it into the output folder ``folder``
    (:func:`write_yield_tables`), figures as numbers; [] where there is none (no scored cycle
    yet). Raises OSError or ValueError for a file that cannot be read."""
    try:
        text = (Path(folder) / YIELD_TABLES[level]).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        for name in ("micrographs", "particles", "good_particles"):
            row[name] = int(row[name])
        row["good_fraction"] = float(row["good_fraction"])
        rows.append(row)
    return rows


def grid_map(folder: str | os.PathLike,
             positions: dict[str, tuple[float, float]] | None = None) -> dict | None:
    """What the page's map of grid squares shows, from the tables in the output folder
    ``folder``: each square (in collection order, first_seen) with its figures, its stage
    position ``x_um``, ``y_um`` from ``positions`` (square -> µm, from
    :func:`live2d.epu.read_square_positions`; None where unknown) and its foil holes' figures
    (at most :data:`MAX_MAP_HOLES`, ``holes_total`` says how many it has); where no square is
    known, the totals per micrograph only. Small: never a row per micrograph.
    None before the first tables are written."""
    positions = positions or {}
    if not (Path(folder) / YIELD_TABLES["micrograph"]).exists():  # the last one written
        return None
    holes: dict[str, list[dict]] = {}
    for row in read_table(folder, "hole"):
        holes.setdefault(row["grid_square"], []).append(row)
    squares = []
    for row in sorted((r for r in read_table(folder, "square") if r["grid_square"]),
                      key=lambda r: r["first_seen"] or "~"):  # unknown times go last
        its = sorted(holes.get(row["grid_square"], []), key=lambda r: r["first_seen"] or "~")
        x_um, y_um = positions.get(row["grid_square"], (None, None))
        squares.append({"grid_square": row["grid_square"],
                        **{name: row[name] for name in _MAP_FIGURES},
                        # 0.1 µm is finer than any square (tens of µm): short messages
                        "x_um": None if x_um is None else round(x_um, 1),
                        "y_um": None if y_um is None else round(y_um, 1),
                        "holes_total": len(its),
                        "holes": [{"foil_hole": h["foil_hole"],
                                   **{name: h[name] for name in _MAP_FIGURES}}
                                  for h in its[:MAX_MAP_HOLES]]})
    micrographs = read_table(folder, "micrograph")
    particles = sum(r["particles"] for r in micrographs)
    good = sum(r["good_particles"] for r in micrographs)
    return {"squares": squares, "micrographs": len(micrographs), "particles": particles,
            "good_particles": good, "holes": sum(len(h) for h in holes.values()),
            "good_fraction": round(good / particles, 4) if particles else 0.0,
            "max_holes": MAX_MAP_HOLES}


def read_grid_map(folder: str | os.PathLike,
                  epu_dir: str | os.PathLike | None = None) -> dict | None:
    """:func:`grid_map`, with the squares' stage positions from the EPU session folder
    ``epu_dir`` where one is given, or None where the tables cannot be read (said in the log:
    the map is advice, and the next scored cycle writes them again)."""
    try:
        return grid_map(folder, read_square_positions(epu_dir) if epu_dir else None)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("the yield tables in %s cannot be read for the page's map: %s", folder, exc)
        return None
