"""Watch a Warp folder, import particles as Warp picks them and classify them in scheduled jobs.

Without --once it runs automatic jobs until Ctrl-C or SIGTERM; a stop abandons the running cycle
and a restart resumes the job at that cycle. It may start before Warp does: on a folder without
Warp's previous.settings it says so once and waits for it. With --once it imports what is there,
runs one job (finishing an unfinished one first) and exits: 0 on success, 1 with a one-line reason
on failure, including when there is nothing to classify yet (or, for a streaming update, no
classes yet).

One process classifies into an output folder at a time: a folder another Live2D process holds
(live2d run or serve, a Scipion run) is refused at once, naming that process and changing
nothing; live2d serve on it watches it read-only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from live2d.engines import ENGINE_NAMES
from live2d.errors import CycleCancelled, EngineError, SettingsError
from live2d.schedule import Settings

# Settings field -> command-line option; type, choices and help come from Settings.
SETTING_OPTIONS = {
    "mode": "--mode",
    "classes": "--classes",
    "startup_cycles": "--startup-cycles",
    "refinement_cycles": "--refinement-cycles",
    "high_res_initial": "--high-res-initial",
    "high_res_final": "--high-res-final",
    "particles_per_class": "--particles-per-class",
    "mask_radius": "--mask-radius",
    "search_range": "--search-range",
    "angular_step": "--angular-step",
    "first_job_at": "--first-job-at",
    "update_every": "--update-every",
    "stream_every": "--stream-every",
    "stream_interval": "--stream-interval",
    "stream_revisit": "--stream-revisit",
    "catch_up_after": "--catch-up-after",
    "target_good_particles": "--target-good-particles",
    "curation_cut": "--curation-cut",
    "bad_square_fraction": "--bad-square-fraction",
    "bad_square_micrographs": "--bad-square-micrographs",
    "yield_drop_fraction": "--yield-drop-fraction",
    "warp_stalled_after": "--warp-stalled-after",
    "poll_seconds": "--poll-seconds",
    "particle_file": "--particle-file",
    "contrast": "--contrast",
    "threads": "--threads",
    "seed": "--seed",
}
OPTION_TYPES = {"int": int, "float": float, "str": str, "choice": str}
ENGINE_HELP = ("classification engine: builtin (Live2D's own, PyTorch), cistem (cisTEM's "
               "refine2d and merge2d) or auto (default: cisTEM when both programs are "
               "found, else builtin)")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("warp_dir", type=Path, metavar="WARP_DIR",
                        help="the folder Warp processes (it holds previous.settings, or will "
                             "once Warp's session starts: Live2D waits for it)")
    parser.add_argument("--output", type=Path, help="output folder (WARP_DIR/classification)")
    parser.add_argument("--star", type=Path, metavar="STAR",
                        help="classify the particles of this RELION 3.0/3.1 particle star "
                             "(WarpTools 2's fs_export_particles, RELION's Extract, a cryoSPARC "
                             "export), relative to WARP_DIR; it may grow or be rewritten while "
                             "Live2D runs. Default: Warp 1.x's own star files, or the one "
                             "particle star of a WarpTools 2 project")
    add_epu_arg(parser)
    add_notify_args(parser)
    parser.add_argument("--engine", choices=ENGINE_NAMES, default="auto", help=ENGINE_HELP)
    parser.add_argument("--device", default="auto", help="built-in engine: auto, cpu or cuda")
    parser.add_argument("--cistem-bin", help="folder holding cisTEM's refine2d and merge2d")
    parser.add_argument("--once", action="store_true",
                        help="run one job now and exit (status 1, saying why, when there is "
                             "nothing to classify yet)")
    add_cluster_args(parser)
    add_setting_args(parser)


def add_epu_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epu", type=Path, metavar="EPU_DIR",
                        help="the EPU session folder (holding Images-Disc1/GridSquare_*): the "
                             "yield tables and alerts then name each foil hole's grid square. "
                             "Kept in the session: a restart, live2d yield and live2d status "
                             "use it without being told again")


def notify_target(text: str) -> str:
    """An argparse type: a notification target, refused at once with what to give instead."""
    from live2d.notify import NotifyError, check_target

    try:
        return check_target(text)
    except NotifyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_notify_args(parser: argparse.ArgumentParser, kept: bool = True) -> None:
    """--notify, --smtp, --smtp-from (``kept``: and --no-notify, for commands whose session
    keeps them)."""
    group = parser.add_argument_group(
        "notifications", "Each alert that fires or clears is sent to every --notify target "
        "(kept in the session: a restart keeps sending; live2d notify-test DIR tries them)."
        if kept else None)
    group.add_argument("--notify", action="append", type=notify_target, metavar="URL",
                       help="an http(s) URL to POST each alert to as JSON {text, kind, time, "
                            "session, details} (a Slack, Mattermost or Teams incoming webhook "
                            "shows the text), or mailto:ADDRESS (needs --smtp); repeat it for "
                            "several. Given, it replaces the targets the session kept")
    group.add_argument("--smtp", metavar="HOST[:PORT]",
                       help="the mail server for mailto: targets (port 25 by default; plain "
                            "SMTP, as a facility's relay takes it)")
    group.add_argument("--smtp-from", metavar="ADDRESS",
                       help="the sender of the e-mails (default live2d@ this machine's name)")
    if kept:
        group.add_argument("--no-notify", action="store_true",
                           help="stop sending alerts: forget the targets the session kept")


def notify_options(args: argparse.Namespace) -> dict:
    """The Session keyword arguments of the notification options given (those not given keep
    the session's)."""
    notify = [] if args.no_notify else args.notify
    return {"notify": notify, "smtp": args.smtp, "smtp_from": args.smtp_from}


def add_setting_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "A new session starts from the defaults below; a session that exists "
        "keeps its saved value of every setting not given.")
    specs = {spec["name"]: spec for spec in Settings.specs()}
    for name, flag in SETTING_OPTIONS.items():
        spec = specs[name]
        # argparse expands % in help texts.
        group.add_argument(flag, dest=name, type=OPTION_TYPES[spec["type"]], default=None,
                           choices=spec["choices"], help=spec["full_help"].replace("%", "%%"))


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group(
        "cluster (needs pip install 'dask[distributed]', OUTPUT on a filesystem the workers "
        "share and, for cisTEM, its programs at the same path on every worker)")
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run cycles on an existing Dask scheduler, e.g. tcp://head:8786")
    cluster.add_argument("--cluster", choices=("local", "slurm", "pbs", "sge"),
                         help="start Dask workers: local processes, or batch jobs through "
                              "dask-jobqueue")
    cluster.add_argument("--cluster-config", type=Path, metavar="FILE",
                         help="YAML/JSON options of the cluster (dask-jobqueue's, e.g. cores, "
                              "memory, queue, walltime; jobs: how many; local: n_workers)")


def setting_overrides(args: argparse.Namespace) -> dict:
    values = {name: getattr(args, name) for name in SETTING_OPTIONS}
    return {name: value for name, value in values.items() if value is not None}


def main(args: argparse.Namespace) -> int:
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("live2d").addHandler(console)
    try:
        return _run(args)
    finally:
        # Also after a refusal: the handler would outlive the stream it writes to where the
        # command runs in a longer-lived process (the tests, a notebook).
        logging.getLogger("live2d").removeHandler(console)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `live2d --help` and the light commands start fast.
    from live2d.errors import SessionError
    from live2d.executors import make_executor
    from live2d.session import Session
    from live2d.warp import WarpFolderError

    try:
        executor = make_executor(args.scheduler, args.cluster, args.cluster_config)
    except EngineError as exc:
        print(f"live2d run: {exc}", file=sys.stderr)
        return 1
    try:
        session = Session(args.warp_dir, args.output, engine=args.engine, device=args.device,
                          cistem_bin=args.cistem_bin, executor=executor, star=args.star,
                          epu_dir=args.epu, **notify_options(args))
        session.update_settings(setting_overrides(args))
        session.check_workers()
    except (EngineError, SessionError, SettingsError, WarpFolderError, OSError) as exc:
        print(f"live2d run: {exc}", file=sys.stderr)
        executor.close()
        return 1

    def stop(signum: int, _frame) -> None:
        logging.getLogger("live2d").warning(
            "%s: stopping; an unfinished cycle is redone on restart", signal.Signals(signum).name)
        session.request_stop(hard=True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if args.once:
            if session.job is None and session.settings.mode == "stream" and \
                    session.latest_cycle() is None:
                print("live2d run: a streaming update needs classes and there are none yet: "
                      "run an ab initio job first (live2d run --once --mode abinit)",
                      file=sys.stderr)
                return 1
            finished = session.run_job()
            return 0 if finished else 130
        session.run_automatic()
        return 0
    except CycleCancelled:
        return 130
    except (EngineError, SessionError, SettingsError, WarpFolderError, OSError) as exc:
        waits = " (without --once, live2d run waits for it)" if session.missing else ""
        print(f"live2d run: {exc}{waits}", file=sys.stderr)
        return 1
    finally:
        session.close()
        executor.close()
