"""An engine's fair share of a busy workstation: one job alone, then beside busy processes.

Live2D rarely has the machine to itself (Warp on the same workstation, a Scipion GUI, another
job). This runs the same ab initio job (engine_bench's particles and schedule: 128-px particles
at 1.5 Å/px, 48 Å search range, the session's plan of startup and refinement cycles) twice in one
run: alone, and beside ``--busy`` CPU-bound processes (Python spinning in a loop, started and
stopped here), and prints both wall times and their ratio. With T threads beside one busy process
on T cores a fair share is (T + 1) / T of the machine: 1.5x on 2 cores.

    nice python bench/contention.py                     # built-in engine, 2 threads, 2,000
    python bench/contention.py --particles 500 --job 2 1            # a quick check
    python bench/contention.py --engine cistem --cistem-bin DIR     # refine2d, 2 processes

Run it on an otherwise idle machine of ``--threads`` cores (or pin it with ``taskset -c 0,1``):
other load makes both times, and the ratio, meaningless.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import PIXEL, warm_up, write_particles

from live2d.engines import make_engine
from live2d.engines.base import CycleParams, CycleRequest, Engine
from live2d.schedule import Settings, plan_job

# A Python loop on one core, ending with this process (even when it is killed, not stopped)
SPIN = """import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def job(engine: Engine, folder: Path, stack: Path, star: Path, diameter: float,
        args: argparse.Namespace, name: str) -> float:
    """Wall seconds of one ab initio job as the session plans it, each cycle from the last."""
    settings = Settings(classes=args.classes, startup_cycles=args.job[0],
                        refinement_cycles=args.job[1], high_res_initial=args.ramp[0],
                        high_res_final=args.ramp[1])
    classes, star_in = folder / f"{name}_start.mrc", star
    started = time.perf_counter()
    for spec in plan_job("abinit", settings, args.particles):
        params = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * diameter,
                             high_res=spec.high_res, angular_step=15.0, search_range=48.0,
                             fraction=spec.fraction)
        out_star = folder / f"{name}_{spec.index:03d}.star"
        out_classes = folder / f"{name}_{spec.index:03d}.mrc"
        request = CycleRequest(stack, star_in, out_star, out_classes, params, args.classes,
                               classes_in=None if spec.kind == "start" else classes,
                               threads=args.threads, seed=spec.index)
        if spec.kind == "start":
            engine.start_classes(request, lambda _: None, threading.Event())
        else:
            engine.run_cycle(request, lambda _: None, threading.Event())
            star_in = out_star
        classes = out_classes
    return time.perf_counter() - started


def busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes, each a Python loop on one core."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    time.sleep(0.5)  # running before the job starts
    return spinners


def stop(spinners: list[subprocess.Popen]) -> None:
    for spinner in spinners:
        spinner.terminate()
    for spinner in spinners:
        spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("builtin", "cistem"), default="builtin")
    parser.add_argument("--cistem-bin", help="folder holding refine2d and merge2d")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--job", type=int, nargs=2, default=[8, 2],
                        metavar=("STARTUP", "REFINEMENT"), help="the job's cycles")
    parser.add_argument("--ramp", type=float, nargs=2, default=[40.0, 8.0],
                        metavar=("INITIAL", "FINAL"), help="the job's resolution ramp (Å)")
    parser.add_argument("--threads", type=int, default=2,
                        help="the engine's threads (built-in) or refine2d processes (cisTEM)")
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside it")
    args = parser.parse_args()
    if args.particles < args.classes or args.threads < 1 or args.busy < 0:
        parser.error("need --particles >= --classes, --threads >= 1 and --busy >= 0")
    engine = make_engine(args.engine, device=args.device, cistem_bin=args.cistem_bin)
    print(f"engine: {engine.describe()}; {args.particles} particles, {args.classes} classes, "
          f"job {args.job[0]}+{args.job[1]} cycles {args.ramp[0]:g}->{args.ramp[1]:g} Å, "
          f"{args.threads} threads; {os.cpu_count()} CPUs here, load average "
          f"{os.getloadavg()[0]:.1f} before")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        stack, star, diameter = write_particles(folder, args.particles)
        if args.engine == "builtin":  # cisTEM's programs have no start-up cost to hide
            warm_up(engine, folder, stack, star, diameter, args.threads)
        alone = job(engine, folder, stack, star, diameter, args, "alone")
        print(f"alone: {alone:.1f} s")
        spinners = busy_processes(args.busy)
        try:
            beside = job(engine, folder, stack, star, diameter, args, "busy")
        finally:
            stop(spinners)
        print(f"beside {args.busy} busy process(es): {beside:.1f} s")
    fair = (args.threads + args.busy) / args.threads
    print(f"ratio {beside / alone:.2f}x (a fair share of {args.threads} cores beside "
          f"{args.busy}: {fair:.2f}x)")


if __name__ == "__main__":
    main()
