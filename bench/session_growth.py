"""How the costs around the engine grow over a long session: per particle, per cycle, per poll.

A Warp 1.x folder grows by ``--step`` particles (micrographs of 200, 32-px boxes) between
refinement cycles; a stand-in engine (random assignments, written in cisTEM's formats) takes
the place of real classification, since the point is what surrounds it. After each step it
prints: particles, bytes on disk per particle (output folder), import time per micrograph,
time outside the engine per cycle (reading the input star, writing results, class quality,
thumbnails, session.json and the history), the size of session.json, what the pages are sent
per cycle (the cycle and the update after it) and the process's memory. bench/many_cycles.py
measures the same over hundreds of cycles, with a real page open.

    python bench/session_growth.py                       # 5 steps of 20,000 (100,000 in all)
    python bench/session_growth.py --steps 10 --step 100000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np

from live2d import cistem_star
from live2d.engines.base import CycleRequest, CycleResult, Engine, ProgressCallback, class_counts
from live2d.schedule import Settings
from live2d.session import Session
from live2d.simulate import MODEL, default_settings, write_settings

BOX, PIXEL, PER_MICROGRAPH = 32, 4.0, 200
_LABELS = ["rlnCoordinateX", "rlnCoordinateY", "rlnMagnification", "rlnDetectorPixelSize",
           "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift",
           "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution",
           "rlnImageName", "rlnMicrographName"]


class StandInEngine(Engine):
    """Random classes and assignments, written as the real engines write them."""

    name = "stand-in"
    needs_particle_stack = False

    def __init__(self) -> None:
        self.seconds = 0.0

    def start_classes(self, request: CycleRequest, progress: ProgressCallback,
                      cancel: threading.Event) -> CycleResult:
        return self._write(request, start=True)

    def run_cycle(self, request: CycleRequest, progress: ProgressCallback,
                  cancel: threading.Event) -> CycleResult:
        return self._write(request, start=False)

    def _write(self, request: CycleRequest, start: bool) -> CycleResult:
        began = time.monotonic()
        rng = np.random.default_rng(request.seed)
        k = request.n_classes
        with mrcfile.new(request.classes_out, overwrite=True) as mrc:
            mrc.set_data(rng.standard_normal((k, BOX, BOX)).astype(np.float32))
            mrc.voxel_size = PIXEL
        counts = [0] * k
        if not start:
            table = cistem_star.read_star(request.star_in)
            table["2DCLS"] = rng.integers(1, k + 1, len(table))
            table["PSI"] = rng.uniform(0, 360, len(table))
            cistem_star.write_star(request.star_out, table)
            counts = class_counts(table["2DCLS"], k)
        seconds = time.monotonic() - began
        self.seconds += seconds
        return CycleResult(request.classes_out, None if start else request.star_out, counts,
                           0, seconds, [])


def grow(warp: Path, micrographs: int, total: list[str]) -> None:
    """Add micrographs (stacks written first), then rewrite the star whole, as Warp does."""
    rng = np.random.default_rng(len(total))
    start = len(total) // PER_MICROGRAPH
    for m in range(start, start + micrographs):
        stack = f"particles/FoilHole_{m:07d}_Data_{MODEL}.mrcs"
        with mrcfile.new(warp / stack, overwrite=True) as mrc:
            mrc.set_data(rng.standard_normal((PER_MICROGRAPH, BOX, BOX)).astype(np.float32))
            mrc.voxel_size = PIXEL
        total += [f"{100 + j:.1f} {200 + j:.1f} 10000.0 {PIXEL:.4f} 300.0 2.7 0.07 0.0 "
                  f"{15000 + m:.1f} {14700 + m:.1f} 30.0 4.0 {j + 1:06d}@{stack} "
                  f"FoilHole_{m:07d}_Data.tif" for j in range(PER_MICROGRAPH)]
    header = "\ndata_\n\nloop_\n" + "".join(f"_{label} #{i}\n"
                                             for i, label in enumerate(_LABELS, 1))
    (warp / f"allparticles_{MODEL}.star").write_text(header + "\n".join(total) + "\n")


def new_warp_folder(root: Path) -> Path:
    """An empty Warp 1.x folder for particles of BOX px (grow adds micrographs)."""
    warp = root / "warp"
    (warp / "particles").mkdir(parents=True, exist_ok=True)
    write_settings(warp, default_settings(BOX, PIXEL, 0.6 * BOX * PIXEL))
    return warp


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step", type=int, default=20_000, help="particles added per step")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--dir", type=Path, help="work here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        warp = new_warp_folder(root)
        engine = StandInEngine()
        settings = Settings(classes=args.classes, startup_cycles=1, refinement_cycles=1,
                            particles_per_class=10**6, first_job_at=1, high_res_initial=20.0,
                            high_res_final=12.0, threads=1)
        session = Session(warp, root / "out", engine=engine, settings=settings)
        rows: list[str] = []
        print(f"stand-in engine, {BOX}-px particles in micrographs of {PER_MICROGRAPH}, "
              f"K = {args.classes}")
        print("particles  cycles  bytes/particle  import ms/micrograph  outside-engine s/cycle"
              "  session.json KB  per-cycle msgs KB  RSS MB")
        try:
            for step in range(args.steps):
                micrographs = args.step // PER_MICROGRAPH
                grow(warp, micrographs, rows)
                began = time.monotonic()
                session.import_new()
                per_micrograph = (time.monotonic() - began) / micrographs * 1000
                engine.seconds = 0.0
                began = time.monotonic()
                cycles_before = len(session.history)
                session.run_job("abinit" if step == 0 else "refine")
                cycles = len(session.history) - cycles_before
                outside = (time.monotonic() - began - engine.seconds) / max(cycles, 1)
                out = root / "out"
                last = dataclasses.asdict(session.history[-1])
                sent = json.dumps({"type": "cycle", "cycle": last}) + json.dumps(
                    {**session.snapshot(with_history=False),
                     "selection": session.selection.summary(whole_history=False)})
                print(f"{session.store.count:9d}  {len(session.history):6d}  "
                      f"{folder_bytes(out) / session.store.count:14.0f}  "
                      f"{per_micrograph:20.1f}  {outside:22.2f}  "
                      f"{(out / 'session.json').stat().st_size / 1024:15.1f}  "
                      f"{len(sent) / 1024:17.1f}  {rss_mb():6.0f}", flush=True)
        finally:
            session.close()


if __name__ == "__main__":
    main()
