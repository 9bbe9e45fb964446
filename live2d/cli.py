"""The ``live2d`` command: one module per subcommand under live2d.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from live2d import __version__

COMMANDS = {
    "run": "watch a Warp folder and classify its particles as they arrive",
    "status": "print the history of a session's cycles",
    "simulate": "write a simulated Warp session (optionally live)",
    "serve": "serve the live web page for a Warp folder",
    "demo": "simulate a live session and serve the page on it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="live2d", description=__doc__)
    parser.add_argument("--version", action="version", version=f"live2d {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"live2d.commands.{name}")
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_args(sub)
        sub.set_defaults(main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
