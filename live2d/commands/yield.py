"""Print how many good particles each grid square, foil hole or micrograph gave, by the latest
cycle with class scores and the selection (the classes proposed good, with the page's marks over
them): where the grid is worth collecting. DIR is the output folder or the Warp folder. Foil
holes and times come from EPU's movie names; grid squares from an EPU session folder (--epu, or
the one the session keeps from live2d run --epu) or from the movies' paths. The session writes
the same tables as yield_*.csv after every cycle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from live2d.commands.status import find_state


def add_args(parser: argparse.ArgumentParser) -> None:
    from live2d.collection_yield import LEVELS

    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the session's output folder, or the Warp folder it classifies")
    parser.add_argument("--by", choices=LEVELS, default="square",
                        help="one row per grid square (default), foil hole or micrograph")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="an aligned table to read (default), CSV or JSON")
    parser.add_argument("--epu", type=Path, metavar="EPU_DIR",
                        help="the EPU session folder (holding Images-Disc1/GridSquare_*), for "
                             "the grid square of each foil hole (default: the one the session "
                             "was started with, live2d run --epu)")


def main(args: argparse.Namespace) -> int:
    from live2d.collection_yield import (
        YieldError,
        latest_scored_cycle,
        score_particles,
        table_csv,
        table_json,
        yield_tables,
    )
    from live2d.epu import read_hole_squares
    from live2d.errors import SelectionError
    from live2d.store import read_committed_table

    state = find_state(args.dir, "yield")
    if state is None:
        return 1
    if args.epu is not None and not args.epu.is_dir():
        print(f"live2d yield: --epu {args.epu} is not a folder", file=sys.stderr)
        return 1
    epu = args.epu or session_epu_folder(state.parent)
    try:
        record = latest_scored_cycle(state.parent)  # before the store: there may be none
        particles = score_particles(state.parent, read_committed_table(state.parent), record)
    except (YieldError, SelectionError, OSError, ValueError) as exc:
        print(f"live2d yield: {exc}", file=sys.stderr)
        return 1
    rows = yield_tables(particles, read_hole_squares(epu) if epu else None)[args.by]
    if args.format == "csv":
        sys.stdout.write(table_csv(rows, args.by))
    elif args.format == "json":
        sys.stdout.write(table_json(rows, args.by))
    else:
        print_table(rows, args.by, particles.cycle, particles.counted)
    return 0


def session_epu_folder(folder: Path) -> Path | None:
    """The EPU session folder the session in ``folder`` keeps (``live2d run --epu``), where it
    can be read; where it cannot, a line on stderr says so and the squares come from the movie
    paths only."""
    from live2d.epu import epu_folder_problem
    from live2d.output_folder import OutputFolder
    from live2d.session_state import read_state

    state = read_state(OutputFolder(folder))
    if state is None or not state.epu_dir:
        return None
    problem = epu_folder_problem(state.epu_dir)
    if problem:
        print(f"live2d yield: {problem}: grid squares come from the movie paths only",
              file=sys.stderr)
        return None
    return Path(state.epu_dir)


def print_table(rows: list[dict], level: str, cycle: int, counted: str) -> None:
    from live2d.collection_yield import COLUMNS

    print(f"yield by {level}, by the classes selected in cycle {cycle} "
          f"({len(rows)} {level}{'s' if len(rows) != 1 else ''}; good particles: {counted})")
    columns = COLUMNS[level]
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    if not rows and level != "micrograph":
        print("no grid square is known for any micrograph: name the EPU session folder "
              "(--epu)" if level == "square" else "no micrograph names a foil hole (names that "
              "are not EPU's count per micrograph only: --by micrograph)")
        return
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.0%}"
    return str(value) if value != "" else "-"
