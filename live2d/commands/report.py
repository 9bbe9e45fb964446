"""Write a session's report for the facility's records: one self-contained HTML file (images
and styles inside it, no link out) with the session's summary, the good particles over time,
the yield per grid square, the forecast, the alerts, the latest classes, the settings and the
versions. DIR is the output folder or the Warp folder; it is only read, so a report may be made
while the session is still classifying."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from live2d.commands.status import find_state


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the session's output folder, or the Warp folder it classifies")
    parser.add_argument("--to", type=Path, metavar="FILE",
                        help="the HTML file to write (default: live2d_report_<Warp folder>_"
                             "<time>.html in the current folder)")
    parser.add_argument("--epu", type=Path, metavar="EPU_DIR",
                        help="the EPU session folder, for the grid square of each foil hole "
                             "(default: the one the session was started with)")


def main(args: argparse.Namespace) -> int:
    from live2d.atomic import atomic_write_text
    from live2d.report import ReportError, report_name, session_report

    state = find_state(args.dir, "report")
    if state is None:
        print(f"live2d report: {args.dir} is not a Live2D session (give the output folder of "
              "live2d run, serve or demo, or the Warp folder it classifies)", file=sys.stderr)
        return 1
    if args.epu is not None and not args.epu.is_dir():
        print(f"live2d report: --epu {args.epu} is not a folder", file=sys.stderr)
        return 1
    try:
        page = session_report(state.parent, args.epu)
    except ReportError as exc:
        print(f"live2d report: {exc}", file=sys.stderr)
        return 1
    to = args.to or Path(report_name(state.parent, time.time()))
    try:
        atomic_write_text(to, page)
    except OSError as exc:
        print(f"live2d report: cannot write {to}: {exc}", file=sys.stderr)
        return 1
    print(f"report of {state.parent} written to {to}")
    return 0
