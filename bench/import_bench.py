"""Import speed, and proof that one poll costs O(new particles), not O(all).

Writes a Warp-like folder of N particles in micrographs of M (noise images: content does not
matter here), imports it micrograph by micrograph as Warp would deliver them, and prints
particles/s and MB/s, then the cost of importing one more micrograph with 1,000 and with N
particles already imported.

    python bench/import_bench.py                      # 100,000 × 128 px (6.5 GB on disk)
    python bench/import_bench.py --particles 20000    # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
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


def one_micrograph_cost(warp: FakeWarp, importer: Importer, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        warp.add_micrographs(1)
        os.sync()  # time the importer, not the flushing of what the fake Warp just wrote
        start = time.perf_counter()
        importer.poll()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=100_000)
    parser.add_argument("--per-micrograph", type=int, default=200)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        warp = FakeWarp(scratch / "warp", args.box, 1.5, args.per_micrograph)
        importer = Importer(warp.folder, ParticleStore(scratch / "out"))
        micrographs = args.particles // args.per_micrograph
        small = max(1, 1000 // args.per_micrograph)

        warp.add_micrographs(small)
        importer.poll()
        cost_small = one_micrograph_cost(warp, importer)

        elapsed, imported = 0.0, 0
        remaining = micrographs - warp.micrographs
        step = max(1, remaining // 50)
        while remaining > 0:  # Warp delivers a few micrographs between polls
            count = min(step, remaining)
            warp.add_micrographs(count)
            os.sync()
            start = time.perf_counter()
            imported += importer.poll().new_particles
            elapsed += time.perf_counter() - start
            remaining -= count
        cost_large = one_micrograph_cost(warp, importer)

        megabytes = imported * args.box * args.box * 4 / 2**20
        print(f"imported {imported} particles of {args.box} px in {elapsed:.1f} s: "
              f"{imported / elapsed:.0f} particles/s, {megabytes / elapsed:.0f} MB/s")
        print(f"one micrograph of {args.per_micrograph} with {small * args.per_micrograph} "
              f"already imported: {cost_small * 1e3:.1f} ms")
        print(f"one micrograph of {args.per_micrograph} with {importer.store.count} already "
              f"imported: {cost_large * 1e3:.1f} ms  (ratio {cost_large / cost_small:.2f})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
