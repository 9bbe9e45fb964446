"""Built-in engine throughput: particle-passes per second at the settings of issue 3.

128-px particles at 1.5 Å/px, K = 20 and 50, 15° steps, 48 Å search range, high-resolution limit
40 Å and 8 Å. Prints particle-passes/s (particles × cycles / wall time), time per stage, peak
memory and the device. With --job, a whole ab initio job instead, as the session plans it (the
start, the startup cycles on the subset along the resolution ramp, the refinement cycles): every
step's throughput and the job's wall time.

    python bench/engine_bench.py                    # 2,000 particles, CPU or the GPU if any
    python bench/engine_bench.py --particles 20000 --device cuda
    python bench/engine_bench.py --classes 20 --resolutions 40 35.4 30.9 26.3 21.7 17.1 12.6 8
    python bench/engine_bench.py --classes 20 --job 8 2 --angular-steps 15 0
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import mrcfile
import numpy as np
import torch

from live2d import cistem_star
from live2d.engines.base import CycleParams, CycleRequest, Progress
from live2d.engines.builtin import BuiltinEngine
from live2d.phantom import Phantom
from live2d.schedule import Settings, plan_job

BOX, PIXEL = 128, 1.5


def write_particles(folder: Path, n: int) -> tuple[Path, Path, float]:
    phantom = Phantom(BOX, PIXEL, n_views=12, seed=0)
    rng = np.random.default_rng(0)
    table = cistem_star.new_table(n)
    with mrcfile.new_mmap(folder / "particles.mrcs", shape=(n, BOX, BOX), mrc_mode=2) as mrc:
        for start in range(0, n, 200):
            count = min(200, n - start)
            defocus = rng.uniform(8000, 25000)
            batch = phantom.particles(count, rng, snr=0.1, defocus_u=defocus,
                                      defocus_v=defocus - 300, defocus_angle=30.0,
                                      max_shift=10.0)
            mrc.data[start:start + count] = batch.images
            table.loc[start:start + count - 1, ["DF1", "DF2", "ANGAST"]] = (
                defocus, defocus - 300, 30.0)
        mrc.voxel_size = PIXEL
    table["PSIZE"], table["VOLT"], table["Cs"], table["AmpC"] = PIXEL, 300.0, 2.7, 0.07
    cistem_star.write_star(folder / "particles.star", table)
    return folder / "particles.mrcs", folder / "particles.star", phantom.diameter


def warm_up(engine: BuiltinEngine, folder: Path, stack: Path, star: Path, diameter: float,
            threads: int) -> None:
    """One untimed small cycle: PyTorch's one-off start-up costs are not the engine's."""
    subset = folder / "warm_up.star"
    cistem_star.write_star(subset, cistem_star.read_star(star).iloc[:64])
    params = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * diameter, high_res=8.0,
                         angular_step=15.0, search_range=48.0)
    request = CycleRequest(stack, subset, folder / "warm_up_out.star", folder / "warm_up.mrc",
                           params, 2, threads=threads)
    engine.start_classes(request, lambda _: None, threading.Event())
    request = CycleRequest(stack, subset, folder / "warm_up_out.star",
                           folder / "warm_up_out.mrc", params, 2, classes_in=request.classes_out,
                           threads=threads)
    engine.run_cycle(request, lambda _: None, threading.Event())


def timed_cycle(engine: BuiltinEngine, request: CycleRequest) -> tuple[float, float, str]:
    """(particle-passes/s, wall seconds, time per stage) of one cycle."""
    stages: dict[str, float] = defaultdict(float)
    last = [time.perf_counter(), ""]

    def on_progress(p: Progress) -> None:
        now = time.perf_counter()
        if last[1]:
            stages[last[1]] += now - last[0]
        last[0], last[1] = now, p.stage

    started = time.perf_counter()
    result = engine.run_cycle(request, on_progress, threading.Event())
    wall = time.perf_counter() - started
    stages[last[1]] += time.perf_counter() - last[0]
    timing = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
    return result.particles_processed / wall, wall, timing


def peak_memory(engine: BuiltinEngine) -> str:
    if engine.device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (cuda)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (cpu)"


def single_cycles(engine: BuiltinEngine, folder: Path, stack: Path, star: Path,
                  diameter: float, args: argparse.Namespace, k: int, step: float) -> None:
    """One cycle from random classes at each resolution: throughput without a job around it."""
    for high_res in args.resolutions:
        params = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * diameter, high_res=high_res,
                             angular_step=step, search_range=48.0)
        classes = folder / f"start_{k}.mrc"
        request = CycleRequest(stack, star, folder / "out.star", classes, params, k,
                               threads=args.threads)
        engine.start_classes(request, lambda _: None, threading.Event())
        request = CycleRequest(stack, star, folder / "out.star", folder / "out.mrc", params, k,
                               classes_in=classes, threads=args.threads)
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rate, wall, timing = timed_cycle(engine, request)
        print(f"K={k:3d} {step:4g}° {high_res:5.1f} Å: {rate:8.1f} particle-passes/s "
              f"({wall:.1f} s: {timing}); peak memory {peak_memory(engine)}")


def ab_initio_job(engine: BuiltinEngine, folder: Path, stack: Path, star: Path,
                  diameter: float, args: argparse.Namespace, k: int, step: float) -> None:
    """A whole ab initio job as the session plans it, each cycle from the one before: every step
    of the resolution ramp, then the job's wall time."""
    settings = Settings(classes=k, startup_cycles=args.job[0], refinement_cycles=args.job[1],
                        high_res_initial=args.ramp[0], high_res_final=args.ramp[1])
    plan = plan_job("abinit", settings, args.particles)
    classes, star_in, total = folder / "job_000.mrc", star, 0.0
    for spec in plan:
        params = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * diameter,
                             high_res=spec.high_res, angular_step=step, search_range=48.0,
                             fraction=spec.fraction)
        out_star, out_classes = folder / f"job_{spec.index:03d}.star", \
            folder / f"job_{spec.index:03d}.mrc"
        request = CycleRequest(stack, star_in, out_star, out_classes, params, k,
                               classes_in=None if spec.kind == "start" else classes,
                               threads=args.threads, seed=spec.index)
        if spec.kind == "start":
            started = time.perf_counter()
            engine.start_classes(request, lambda _: None, threading.Event())
            total += time.perf_counter() - started
            classes = out_classes
            continue
        rate, wall, _ = timed_cycle(engine, request)
        total += wall
        classes, star_in = out_classes, out_star
        print(f"K={k:3d} {step:4g}° {spec.block:>10s} {spec.high_res:5.1f} Å "
              f"{spec.fraction:4.0%}: {rate:8.1f} particle-passes/s ({wall:.1f} s)")
    print(f"K={k:3d} {step:4g}°: ab initio job of {len(plan)} cycles on {args.particles} "
          f"particles in {total:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[40.0, 8.0],
                        help="high-resolution limits of the single cycles (Å)")
    parser.add_argument("--angular-steps", type=float, nargs="+", default=[15.0],
                        help="in-plane steps (°); 0 is the automatic step")
    parser.add_argument("--job", type=int, nargs=2, metavar=("STARTUP", "REFINEMENT"),
                        help="time a whole ab initio job of these cycles instead of single "
                             "cycles, e.g. --job 8 2")
    parser.add_argument("--ramp", type=float, nargs=2, default=[40.0, 8.0],
                        metavar=("INITIAL", "FINAL"), help="the job's resolution ramp (Å)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=None,
                        help="particles per batch (default: 32 on the CPU, 256 on a GPU)")
    args = parser.parse_args()
    engine = BuiltinEngine(args.device, batch_size=args.batch_size)
    print(f"engine: {engine.describe()}; {args.particles} particles of {BOX} px, "
          f"{PIXEL} Å/px, 48 Å search range")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        stack, star, diameter = write_particles(folder, args.particles)
        warm_up(engine, folder, stack, star, diameter, args.threads)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory before the cycles (torch, data written): {baseline:.0f} MiB")
        run = ab_initio_job if args.job else single_cycles
        for k in args.classes:
            for step in args.angular_steps:
                run(engine, folder, stack, star, diameter, args, k, step)


if __name__ == "__main__":
    main()
