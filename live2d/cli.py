"""Live 2D classification of cryo-EM particles while the microscope is still collecting.

Live2D watches the folder Warp processes, imports the particles Warp picks and exports as
they arrive, and keeps re-running 2D classification on the growing set (its built-in engine or
cisTEM's refine2d), so that class averages improve as data arrive. Every cycle's class averages
(MRC) and star file are kept, ready for cisTEM, RELION or cryoSPARC.

Try it without Warp:  live2d demo                  (a simulated session, on the web page)
At the microscope:    live2d serve --warp-root DIR (the web page, for any number of browsers:
                                                    choose the Warp folder there)
                      live2d run WARP_DIR          (the command line, no page)
Both may start before Warp does: they wait for the folder's previous.settings.

Run "live2d COMMAND --help" for each command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from live2d import __version__

COMMANDS = {
    "run": "watch a Warp folder and classify its particles as they arrive",
    "status": "print the history of a session's cycles and its latest classes",
    "export": "write the particles of the good classes as a RELION star",
    "yield": "print the good particles per grid square, hole or micrograph",
    "report": "write a session's report as one self-contained HTML file",
    "simulate": "write a simulated Warp session (optionally live)",
    "serve": "serve the live web page for a Warp folder",
    "demo": "simulate a live session and serve the page on it",
    "notify-test": "send a test notification to where a session sends its alerts",
}


def build_parser() -> argparse.ArgumentParser:
    # Subcommands: one module each under live2d.commands (add_args, main).
    parser = argparse.ArgumentParser(prog="live2d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"live2d {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"live2d.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_args(sub)
        sub.set_defaults(main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
