"""Built-in engine on Dask: particle-passes per second against the number of worker processes.

Runs the same refinement cycle in this process (no Dask) and on a loopback LocalCluster of 1, 2, …
single-threaded worker processes; prints particle-passes/s (particles × cycles / wall time), the
speed-up over one worker and the time the client spends outside the workers (references, noise,
merge of partial sums, averages, writing). Each run's class averages are checked to be identical
to the in-process run's.

    python bench/scaling.py      # 1 and 2 workers, 2,048 particles of 128 px (4 chunks)
    python bench/scaling.py --workers 1 2 4 8 --particles 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import mrcfile
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import write_particles

from live2d.engines.base import CycleParams, CycleRequest, Progress
from live2d.engines.builtin import BuiltinEngine
from live2d.executors import DaskExecutor


def run(folder: Path, stack: Path, star: Path, params: CycleParams, k: int, name: str,
        engine: BuiltinEngine, cycles: int) -> tuple[float, float, np.ndarray]:
    """Seconds per cycle (mean), seconds of it in the classifying stage, final classes."""
    stages: dict[str, float] = defaultdict(float)
    classes = folder / "start.mrc"
    total = 0.0
    for cycle in range(cycles):
        request = CycleRequest(stack, star, folder / f"{name}{cycle}.star",
                               folder / f"{name}{cycle}.mrc", params, k, classes_in=classes,
                               threads=1, seed=cycle)
        last = [time.monotonic(), ""]

        def progress(step: Progress, last=last) -> None:
            now = time.monotonic()
            stages[last[1]] += now - last[0]
            last[:] = [now, step.stage]

        started = time.monotonic()
        engine.run_cycle(request, progress, threading.Event())
        total += time.monotonic() - started
        stages[last[1]] += time.monotonic() - last[0]
    with mrcfile.open(request.classes_out) as mrc:
        out = np.array(mrc.data)
    return total / cycles, stages["classifying"] / cycles, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--high-res", type=float, default=30.0)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import distributed

    with tempfile.TemporaryDirectory(prefix="live2d-scaling-") as scratch:
        folder = Path(scratch)
        stack, star, diameter = write_particles(folder, args.particles)
        params = CycleParams(pixel_size=1.5, mask_radius=0.6 * diameter, high_res=args.high_res,
                             angular_step=15.0, search_range=48.0)
        start = CycleRequest(stack, star, folder / "start.star", folder / "start.mrc", params,
                             args.classes, seed=0)
        BuiltinEngine("cpu").start_classes(start, lambda _: None, threading.Event())
        passes = args.particles
        print(f"{args.particles} particles of 128 px, K = {args.classes}, {args.high_res:g} Å, "
              f"{args.cycles} cycles each; torch threads 1 everywhere")
        seconds, classify, reference = run(folder, stack, star, params, args.classes, "local",
                                           BuiltinEngine("cpu"), args.cycles)
        print(f"  in-process     {passes / seconds:8.1f} particle-passes/s  "
              f"({seconds:.1f} s/cycle, {seconds - classify:.1f} s outside classifying)")
        one = None
        for workers in args.workers:
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                               processes=True, host="127.0.0.1",
                                               dashboard_address=None)
            executor = DaskExecutor(cluster=cluster)
            executor.wait_for_workers(workers)
            try:
                executor.check_shared_folder(folder)
                engine = BuiltinEngine("cpu", executor=executor)
                run(folder, stack, star, params, args.classes, "warm", engine, 1)  # imports
                seconds, classify, classes = run(folder, stack, star, params, args.classes,
                                                 f"dask{workers}_", engine, args.cycles)
            finally:
                executor.close()
            rate = passes / seconds
            one = one or rate
            same = "identical" if np.array_equal(classes, reference) else "DIFFERENT"
            print(f"  {workers} worker(s)    {rate:8.1f} particle-passes/s  "
                  f"(x{rate / one:.2f}; {seconds:.1f} s/cycle, {seconds - classify:.1f} s "
                  f"outside classifying; classes {same})")


if __name__ == "__main__":
    main()
