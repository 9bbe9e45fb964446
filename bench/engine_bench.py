"""Built-in engine throughput: particle-passes per second at the settings of issue 3.

128-px particles at 1.5 Å/px, K = 20 and 50, 15° steps, 48 Å search range, high-resolution limit
40 Å and 8 Å. Prints particle-passes/s (particles × cycles / wall time), time per stage, peak
memory and the device.

    python bench/engine_bench.py                    # 2,000 particles, CPU or the GPU if any
    python bench/engine_bench.py --particles 20000 --device cuda
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[40.0, 8.0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=None,
                        help="particles per batch (default: 32 on the CPU, 256 on a GPU)")
    args = parser.parse_args()
    engine = BuiltinEngine(args.device, batch_size=args.batch_size)
    print(f"engine: {engine.describe()}; {args.particles} particles of {BOX} px, "
          f"{PIXEL} Å/px, 15° steps, 48 Å search range")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        stack, star, diameter = write_particles(folder, args.particles)
        warm_up(engine, folder, stack, star, diameter, args.threads)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory before the cycles (torch, data written): {baseline:.0f} MiB")
        for k in args.classes:
            for high_res in args.resolutions:
                params = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * diameter,
                                     high_res=high_res, angular_step=15.0, search_range=48.0)
                classes = folder / f"start_{k}.mrc"
                request = CycleRequest(stack, star, folder / "out.star", classes, params, k,
                                       threads=args.threads)
                engine.start_classes(request, lambda _: None, threading.Event())
                request = CycleRequest(stack, star, folder / "out.star", folder / "out.mrc",
                                       params, k, classes_in=classes, threads=args.threads)
                stages: dict[str, float] = defaultdict(float)
                last = [time.perf_counter(), ""]

                def on_progress(p: Progress, stages=stages, last=last) -> None:
                    now = time.perf_counter()
                    if last[1]:
                        stages[last[1]] += now - last[0]
                    last[0], last[1] = now, p.stage

                if engine.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                result = engine.run_cycle(request, on_progress, threading.Event())
                wall = time.perf_counter() - started
                stages[last[1]] += time.perf_counter() - last[0]
                peak = (torch.cuda.max_memory_allocated() / 2**20 if engine.device.type ==
                        "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                timing = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in
                                   stages.items())
                print(f"K={k:3d} {high_res:4.0f} Å: {result.particles_processed / wall:8.1f} "
                      f"particle-passes/s ({wall:.1f} s: {timing}); peak memory "
                      f"{peak:.0f} MiB ({engine.device.type})")


if __name__ == "__main__":
    main()
