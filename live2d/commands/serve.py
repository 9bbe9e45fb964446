"""Serve the live web page for a Warp folder: watch classes evolve, change settings, start and
stop jobs from any browser. Without WARP_DIR the page's first step is Update Warp Directory; a
folder Warp has not started in yet is accepted and watched, the page saying what it lacks.
A folder another Live2D process is classifying into (live2d run, a Scipion run) is shown
read-only: the page follows that process's cycles and refuses jobs, settings, marks and exports.
Binds to 127.0.0.1 unless --host says otherwise; any other address requires a token (given with
--token, or generated and printed with a ready-to-open URL)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from live2d.commands.run import (
    ENGINE_HELP,
    add_cluster_args,
    add_epu_arg,
    add_notify_args,
    add_setting_args,
    notify_options,
    setting_overrides,
)
from live2d.engines import ENGINE_NAMES
from live2d.errors import EngineError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("warp_dir", type=Path, metavar="WARP_DIR", nargs="?",
                        help="the folder Warp processes (it holds previous.settings, or will "
                             "once Warp starts); without it, choose it in the page with "
                             "Update Warp Directory")
    parser.add_argument("--output", type=Path,
                        help="output folder of WARP_DIR (default: WARP_DIR/classification; "
                             "folders chosen in the page always use that)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8181,
                        help="port to listen on (default 8181)")
    parser.add_argument("--token", help="access token (generated when --host is not local)")
    parser.add_argument("--warp-root", type=Path,
                        help="the page may open Warp folders under this one only "
                             "(default: WARP_DIR's parent, or the current folder without "
                             "WARP_DIR)")
    add_epu_arg(parser)
    add_notify_args(parser)
    parser.add_argument("--engine", choices=ENGINE_NAMES, default="auto", help=ENGINE_HELP)
    parser.add_argument("--device", default="auto",
                        help="where the built-in engine runs: auto, cpu or cuda[:N]")
    parser.add_argument("--cistem-bin", help="folder holding refine2d and merge2d")
    add_cluster_args(parser)
    add_setting_args(parser)


def main(args: argparse.Namespace) -> int:
    from live2d.errors import SessionError, SettingsError
    from live2d.executors import make_executor
    from live2d.server.control import Controller
    from live2d.server.serving import serve
    from live2d.warp import WarpFolderError

    if args.output and not args.warp_dir:
        print("live2d serve: --output needs WARP_DIR (folders chosen in the page write into "
              "their own classification folder)", file=sys.stderr)
        return 1
    if args.epu and not args.warp_dir:
        print("live2d serve: --epu needs WARP_DIR (the session of that folder keeps it)",
              file=sys.stderr)
        return 1
    notify = notify_options(args)
    if not args.warp_dir and any(value is not None for value in notify.values()):
        print("live2d serve: --notify and --smtp need WARP_DIR (the session of that folder "
              "keeps them)", file=sys.stderr)
        return 1
    try:
        executor = make_executor(args.scheduler, args.cluster, args.cluster_config)
    except EngineError as exc:
        print(f"live2d serve: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            controller = Controller(args.warp_dir, args.output, engine=args.engine,
                                    device=args.device, cistem_bin=args.cistem_bin,
                                    warp_root=args.warp_root, executor=executor,
                                    settings=setting_overrides(args), epu_dir=args.epu,
                                    notify=notify)
        except (EngineError, WarpFolderError, SessionError, SettingsError, OSError) as exc:
            print(f"live2d serve: {exc}", file=sys.stderr)
            return 1
        serve(controller, args.host, args.port, args.token)
        return 0
    finally:
        executor.close()
