"""Send one test notification to each target a session sends its alerts to, and say whether it
arrived, so that the set-up is checked before an alert needs it (DIR: the output folder or the
Warp folder). --notify, --smtp and --smtp-from try other targets without changing the session's
(then DIR need not hold a session yet). Exits 1 when any target fails, saying why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from live2d.commands.run import add_notify_args


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="output or Warp folder")
    add_notify_args(parser, kept=False)


def main(args: argparse.Namespace) -> int:
    from live2d.errors import NotifyError
    from live2d.notify import DeliveryError, check_message, check_targets, deliver, shown
    from live2d.output_folder import DEFAULT_OUTPUT, OutputFolder, find_output_folder
    from live2d.session_state import read_state

    folder = find_output_folder(args.dir)
    state = read_state(OutputFolder(folder)) if folder is not None else None
    targets = args.notify or (state.notify if state else [])
    smtp = args.smtp if args.smtp is not None else (state.smtp if state else "")
    sender = args.smtp_from if args.smtp_from is not None else (state.smtp_from if state else "")
    if not targets:
        where = f"the session in {folder}" if state else f"{args.dir} holds no session and"
        print(f"live2d notify-test: {where} has no notification targets: give --notify URL or "
              f"--notify mailto:ADDRESS (with live2d run or serve to keep them)", file=sys.stderr)
        return 1
    try:
        targets = check_targets(targets, smtp)
    except NotifyError as exc:
        print(f"live2d notify-test: {exc}", file=sys.stderr)
        return 1
    warp_dir = state.warp_dir if state else str(args.dir.resolve())
    message = check_message(folder or args.dir.resolve() / DEFAULT_OUTPUT, warp_dir)
    failed = 0
    for target in targets:
        try:  # once, at once: whoever runs this is waiting for the answer
            deliver(target, message, smtp, sender)
        except DeliveryError as exc:
            failed += 1
            print(f"failed: {shown(target)}: {exc}")
        else:
            print(f"sent: {shown(target)}")
    return 1 if failed else 0
