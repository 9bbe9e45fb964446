"""Classification quality on a continuum of views of a real protein, for either engine, with
the per-particle alignment error (issue 30).

Simulates a Warp session of an atomic model (6MSM, human CFTR, from bench/fetch_model.sh)
projected at uniformly random orientations, with a per-micrograph CTF and noise
(``live2d simulate --model``), runs one ab initio job on it with each engine asked for, on the
same particles, and prints for the last cycle (``--every-cycle``: each): homogeneity, view
coherence (median angle between members' viewing directions and their class's mean; lower is
better, about 86° at random), fidelity, the in-plane angle and shift error of each particle
against its class's consensus (median and 90th percentile; live2d/evaluate.py), and with junk
the precision and recall of true particles of the best selection and of the one Live2D proposes
(classes scored 0.5 or more, live2d/class_quality.py):

    nice python bench/continuum.py --engines builtin cistem --cistem-bin ../shared/cistem/bin
    nice python bench/continuum.py --junk 0.3 --off-centre 10 --seed 2
    nice python bench/continuum.py --snr 0.02 --engines builtin

Diagnosis: ``--set MODULE.NAME=VALUE`` overrides a module constant of the built-in engine
for the run (e.g. ``--set search.COARSE_CANDIDATE_FRACTION=1.0`` scores every frame at full
resolution), ``--setting NAME=VALUE`` a live2d.schedule.Settings value (e.g.
``--setting angular_step=5``). Defaults: 3,000 particles of 64 px at 3 Å/px (the model is about
147 Å across), K = 12, SNR 0.05, 8 startup cycles 40 -> 8 Å then 2 refinement cycles.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import tempfile
import time
from pathlib import Path

from live2d.evaluate import score_cycle
from live2d.history import read_history
from live2d.schedule import Settings
from live2d.selection import proposed
from live2d.session import Session
from live2d.simulate import simulate, truth_dir_for
from live2d.warp import read_settings

FETCH_MODEL = Path(__file__).with_name("fetch_model.sh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", choices=("builtin", "cistem"),
                        default=["builtin"])
    parser.add_argument("--cistem-bin", help="folder holding refine2d and merge2d")
    parser.add_argument("--model", type=Path, help="atomic model (default: 6MSM, fetched "
                                                   "by bench/fetch_model.sh into its cache)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1, help="of the simulated particles")
    parser.add_argument("--junk", type=float, default=0.0, help="fraction of junk picks")
    parser.add_argument("--off-centre", type=float, default=0.0,
                        help="picks up to this many pixels off centre (0: a good picker)")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--startup-cycles", type=int, default=8)
    parser.add_argument("--refinement-cycles", type=int, default=2)
    parser.add_argument("--high-res-initial", type=float, default=40.0)
    parser.add_argument("--high-res-final", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every-cycle", action="store_true", help="score every cycle")
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="override a constant of live2d.engines.builtin.MODULE")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="override a live2d.schedule.Settings value")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    parser.add_argument("--data", type=Path, metavar="KEPT",
                        help="classify the session simulated into KEPT by an earlier --keep run "
                             "(its simulation options win) instead of simulating one; the "
                             "classification goes to KEPT/classification-ENGINE-LABEL")
    parser.add_argument("--label", default="", help="with --data: names the classification")
    parser.add_argument("--rescore", action="store_true",
                        help="with --data: score the classifications already there, no job")
    args = parser.parse_args()
    for override in args.set:
        override_constant(override)
    if args.data:
        print(f"the session of {args.data}; K = {args.classes}; "
              f"{' '.join(args.set + args.setting)}")
        print_header()
        if not (args.label or args.rescore):
            raise SystemExit("--data needs a --label for the new classification, or --rescore")
        for engine in args.engines:
            output = args.data / "-".join(filter(None, ("classification", engine, args.label)))
            if args.rescore:
                print_scores(args, engine, read_history(output), output, args.data / "warp",
                             float("nan"))
            else:
                run(args, engine, args.data / "warp", output)
        return
    model = args.model or Path(subprocess.run([str(FETCH_MODEL)], check=True, text=True,
                                              capture_output=True).stdout.strip())
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        warp = root / "warp"
        began = time.monotonic()
        simulate(warp, particles=args.particles, per_micrograph=200, box=args.box,
                 pixel_size=args.pixel_size, snr=args.snr, seed=args.seed, junk=args.junk,
                 off_centre=args.off_centre, model=model)
        print(f"{args.particles} picks of {model.name}, {args.box} px at {args.pixel_size} Å/px, "
              f"SNR {args.snr:g}, junk {args.junk:.0%}, off centre {args.off_centre:g} px, "
              f"seed {args.seed}; K = {args.classes}; {' '.join(args.set + args.setting)} "
              f"(simulated in {time.monotonic() - began:.0f} s)")
        print_header()
        for engine in args.engines:
            run(args, engine, warp, root / f"classification-{engine}")


def print_header() -> None:
    print(f"{'engine':<9s} cycle  high-res  homogeneity  coherence  fidelity  "
          "psi-err median/p90  shift-err median/p90 (Å)  the same within 15° of the class's "
          "view  best-precision  best-recall  proposed-precision  proposed-recall  seconds",
          flush=True)


def run(args: argparse.Namespace, engine: str, warp: Path, output: Path) -> None:
    values: dict[str, object] = {
        "classes": args.classes, "startup_cycles": args.startup_cycles,
        "refinement_cycles": args.refinement_cycles, "high_res_initial": args.high_res_initial,
        "high_res_final": args.high_res_final,
        "particles_per_class": max(1, args.particles // args.classes), "first_job_at": 1,
        "mode": "abinit", "threads": args.threads}
    for setting in args.setting:
        name, _, text = setting.partition("=")
        values[name] = type(getattr(Settings(), name))(text) if getattr(Settings(), name) \
            is not None else float(text)
    session = Session(warp, output, engine=engine, device=args.device,
                      cistem_bin=args.cistem_bin, settings=Settings(**values))
    began = time.monotonic()
    try:
        session.run_job()
        history = session.history
    finally:
        session.close()
    print_scores(args, engine, history, output, warp, time.monotonic() - began)


def print_scores(args: argparse.Namespace, engine: str, history: list, output: Path,
                 warp: Path, wall: float) -> None:
    scored = [r for r in history if r.block != "start"]
    for record in scored if args.every_cycle else scored[-1:]:
        scores, best, chosen = score_cycle(output, record.number, truth_dir_for(warp),
                                           0.6 * read_settings(warp).diameter,
                                           proposed=proposed(record))
        print(f"{engine:<9s} {record.number:5d}  {record.high_res:6.1f} Å  "
              f"{scores.homogeneity:11.3f}  {scores.coherence:8.1f}°  {scores.fidelity:8.3f}  "
              f"{scores.psi_error.median:8.1f}° / {scores.psi_error.p90:5.1f}°  "
              f"{scores.shift_error.median:11.2f} / {scores.shift_error.p90:5.2f}  "
              f"{scores.psi_error_near.median:6.1f}° / {scores.psi_error_near.p90:5.1f}°  "
              f"{scores.shift_error_near.median:5.2f} / {scores.shift_error_near.p90:5.2f} Å"
              f"{best.precision:22.3f}  {best.recall:11.3f}  {chosen.precision:18.3f}  "
              f"{chosen.recall:15.3f}  {wall:7.0f}", flush=True)


def override_constant(override: str) -> None:
    """``MODULE.NAME=VALUE``: set a constant of live2d.engines.builtin.MODULE, of its type."""
    target, _, text = override.partition("=")
    module_name, _, name = target.rpartition(".")
    module = importlib.import_module(f"live2d.engines.builtin.{module_name}")
    if not hasattr(module, name):
        raise SystemExit(f"live2d.engines.builtin.{module_name} has no {name}")
    setattr(module, name, type(getattr(module, name))(text))


if __name__ == "__main__":
    main()
