"""Import speed, and proof that one poll costs O(new particles), not O(all).

Writes a Warp-like folder of N particles in micrographs of M (noise images: content does not
matter here), imports it micrograph by micrograph as Warp would deliver them, and prints
particles/s and MB/s, then the cost of importing one more micrograph with 1,000 and with N
particles already imported (medians of alternating polls: wall time, CPU time, and the number of
Python function calls, which measures the work done whatever else runs on the machine).

    python bench/import_bench.py                      # 100,000 × 128 px (6.5 GB on disk)
    python bench/import_bench.py --particles 20000    # quicker
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np

from live2d.importer import Importer
from live2d.simulate import MODEL, default_settings, write_settings
from live2d.store import ParticleStore

LABELS = ["rlnCoordinateX", "rlnCoordinateY", "rlnMagnification", "rlnDetectorPixelSize",
          "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift",
          "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution", "rlnImageName",
          "rlnMicrographName"]


class FakeWarp:
    """Adds micrographs to a Warp folder the way Warp does: stack first, then the star rewritten
    whole with the new rows appended."""

    def __init__(self, folder: Path, box: int, pixel_size: float, per_micrograph: int) -> None:
        self.folder, self.box, self.per = folder, box, per_micrograph
        (folder / "particles").mkdir(parents=True)
        write_settings(folder, default_settings(box, pixel_size, 0.6 * box * pixel_size))
        self.pixel_size = pixel_size
        self.images = np.random.default_rng(0).standard_normal(
            (per_micrograph, box, box), dtype=np.float32)
        self.rows: list[str] = []
        self.header = "\ndata_\n\nloop_\n" + "".join(
            f"_{label} #{i}\n" for i, label in enumerate(LABELS, 1))
        self.micrographs = 0

    def add_micrographs(self, count: int) -> None:
        for _ in range(count):
            name = f"particles/mic{self.micrographs:06d}_{MODEL}.mrcs"
            with mrcfile.new(self.folder / name, overwrite=True) as mrc:
                mrc.set_data(self.images)
                mrc.voxel_size = self.pixel_size
            self.rows += [
                f"100.0 200.0 10000.0 {self.pixel_size:.4f} 300.0 2.7 0.07 0.0 15000.0 14500.0 "
                f"30.0 4.0 {i + 1:06d}@{name} mic{self.micrographs:06d}.tif\n"
                for i in range(self.per)]
            self.micrographs += 1
        (self.folder / f"allparticles_{MODEL}.star").write_text(self.header + "".join(self.rows))


@dataclass
class PollCost:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    calls: int = 0  # Python function calls in one poll: the work done, whatever the load

    def line(self, label: str) -> str:
        return (f"{label}: {np.median(self.wall) * 1e3:.1f} ms wall, "
                f"{np.median(self.cpu) * 1e3:.1f} ms CPU, {self.calls} function calls")


def measure_one_micrograph(warp: FakeWarp, importer: Importer, cost: PollCost) -> None:
    warp.add_micrographs(1)
    os.sync()  # time the importer, not the flushing of what the fake Warp just wrote
    wall, cpu = time.perf_counter(), time.process_time()
    report = importer.poll()
    cost.wall.append(time.perf_counter() - wall)
    cost.cpu.append(time.process_time() - cpu)
    assert report.new_particles == warp.per, report


def count_calls(warp: FakeWarp, importer: Importer) -> int:
    warp.add_micrographs(1)
    profile = cProfile.Profile()
    profile.runcall(importer.poll)
    return sum(stat[1] for stat in pstats.Stats(profile).stats.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=100_000)
    parser.add_argument("--per-micrograph", type=int, default=200)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7,
                        help="single-micrograph polls timed at each size (medians printed)")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        small_count = max(1, 1000 // args.per_micrograph)
        small = FakeWarp(scratch / "warp_small", args.box, 1.5, args.per_micrograph)
        small_importer = Importer(small.folder, ParticleStore(scratch / "out_small"))
        small.add_micrographs(small_count)
        small_importer.poll()

        warp = FakeWarp(scratch / "warp", args.box, 1.5, args.per_micrograph)
        importer = Importer(warp.folder, ParticleStore(scratch / "out"))
        elapsed, imported = 0.0, 0
        remaining = max(1, args.particles // args.per_micrograph)
        step = max(1, remaining // 50)
        while remaining > 0:  # Warp delivers a few micrographs between polls
            count = min(step, remaining)
            warp.add_micrographs(count)
            os.sync()
            start = time.perf_counter()
            imported += importer.poll().new_particles
            elapsed += time.perf_counter() - start
            remaining -= count
        megabytes = imported * args.box * args.box * 4 / 2**20
        print(f"imported {imported} particles of {args.box} px in {elapsed:.1f} s: "
              f"{imported / elapsed:.0f} particles/s, {megabytes / elapsed:.0f} MB/s")

        # Alternate between the two so that a change of machine load hits both alike.
        costs = {"small": PollCost(), "large": PollCost()}
        for _ in range(args.repeats):
            measure_one_micrograph(small, small_importer, costs["small"])
            measure_one_micrograph(warp, importer, costs["large"])
        costs["small"].calls = count_calls(small, small_importer)
        costs["large"].calls = count_calls(warp, importer)
        print(costs["small"].line(f"one micrograph of {args.per_micrograph} with "
                                  f"~{small_count * args.per_micrograph} already imported"))
        print(costs["large"].line(f"one micrograph of {args.per_micrograph} with "
                                  f"~{importer.store.count} already imported"))
        ratio = np.median(costs["large"].wall) / np.median(costs["small"].wall)
        print(f"ratio large/small: {ratio:.2f} wall, "
              f"{np.median(costs['large'].cpu) / np.median(costs['small'].cpu):.2f} CPU, "
              f"{costs['large'].calls / costs['small'].calls:.2f} function calls")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
