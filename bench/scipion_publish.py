"""What publishing one cycle to Scipion costs at session sizes: the cycle's SetOfClasses2D and
the particles added to outputParticles, written as the classification protocol writes them
(pwem writes one template member per class, SQL the rest: live2d_plugin.set_rows), against
pwem's classifyItems writing every member (how the protocol published before).

    python bench/scipion_publish.py --particles 100000 1000000 [--pwem-up-to 100000]

Prints seconds per step and particles per second. The input set is written once per size by
pwem (20,000 particles) and grown by SQL copies of those rows under new ids.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pwem.objects import Acquisition, CTFModel, Particle, SetOfClasses2D, SetOfParticles
from pyworkflow.object import String

from live2d_plugin.convert import alignment_2d, alignment_matrices
from live2d_plugin.set_rows import (
    copy_class_members,
    copy_members,
    disabled_ids,
    matrix_texts,
    template_members,
)

PIXEL_SIZE = 1.0
CLASSES = 50
SEED_PARTICLES = 20_000


def input_set(path: Path, count: int) -> str:
    particles = SetOfParticles(filename=str(path))
    particles.setSamplingRate(PIXEL_SIZE)
    particles.setHasCTF(True)
    acquisition = Acquisition(voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.07,
                              magnification=10000.0)
    particles.setAcquisition(acquisition)
    for i in range(min(count, SEED_PARTICLES)):
        particle = Particle(location=(i % 300 + 1, f"particles/movie_{i // 300:05d}.mrcs"))
        particle.setSamplingRate(PIXEL_SIZE)
        particle.setAcquisition(acquisition)
        particle.setCTF(CTFModel(defocusU=10000.0 + i, defocusV=9000.0, defocusAngle=3.0))
        particle._warpImageName = String(f"{i % 300 + 1}@particles/movie_{i // 300:05d}.mrcs")
        particles.append(particle)
    particles.write()
    particles.close()
    with sqlite3.connect(path) as connection:
        columns = [d[0] for d in connection.execute("SELECT * FROM Objects LIMIT 0").description]
        rest = ", ".join(columns[1:])
        copies = 1
        while copies * SEED_PARTICLES < count:
            connection.execute(
                f"INSERT INTO Objects (id, {rest}) SELECT id + ?, {rest} FROM Objects "
                "WHERE id <= ? AND id + ? <= ?",
                (copies * SEED_PARTICLES, SEED_PARTICLES, copies * SEED_PARTICLES, count))
            copies += 1
        connection.execute("UPDATE Properties SET value = ? WHERE key = '_size'", (str(count),))
    return str(path)


def assignments(count: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"cls": rng.integers(1, CLASSES + 1, count),
                          "psi": rng.uniform(0, 360, count), "shx": rng.normal(0, 3, count),
                          "shy": rng.normal(0, 3, count)},
                         index=pd.Index(np.arange(1, count + 1), name="id"))
    return frame


def classes_by_pwem(folder: Path, particles: SetOfParticles, members: pd.DataFrame,
                    where: str | None = None) -> SetOfClasses2D:
    classes = SetOfClasses2D(filename=str(folder / f"classes_{time.monotonic_ns()}.sqlite"))
    classes.setImages(particles)

    def update_item(item, _row) -> None:
        values = members.loc[item.getObjId()]
        item.setClassId(int(values["cls"]))
        item.setTransform(alignment_2d(values["psi"], values["shx"], values["shy"],
                                       PIXEL_SIZE))

    classes.classifyItems(updateItemCallback=update_item,
                          iterParams={"where": where} if where else {})
    classes.write()
    classes.close()
    return classes


def run(count: int, with_pwem: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        input_file = input_set(folder / "input.sqlite", count)
        particles = SetOfParticles(filename=input_file)
        particles.loadAllProperties()
        print(f"{count:>9,} particles: input set written in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        members = assignments(count)

        started = time.perf_counter()
        members["matrix"] = matrix_texts(alignment_matrices(members["psi"], members["shx"],
                                                            members["shy"], PIXEL_SIZE))
        templates = template_members(members, disabled_ids(input_file))
        ids = ",".join(str(i) for i in templates.index)
        classes = classes_by_pwem(folder, particles, templates, f"id IN ({ids})")
        sizes = copy_class_members(classes.getFileName(), input_file, members, templates)
        seconds = time.perf_counter() - started
        assert sum(sizes.values()) == count
        print(f"{'':>9}  classes by SQL: {seconds:.1f} s ({count / seconds:,.0f} "
              "particles/s)", flush=True)

        grown = SetOfParticles(filename=str(folder / "grown.sqlite"))
        grown.copyInfo(particles)
        grown.append(particles[1].clone())
        grown.write()
        grown.close()
        step = 10_000
        started = time.perf_counter()
        added = copy_members(grown.getFileName(), "", input_file,
                             members.iloc[count - step:], 1)
        seconds = time.perf_counter() - started
        print(f"{'':>9}  outputParticles grown by {added:,} (an update's new particles): "
              f"{seconds:.2f} s", flush=True)

        if with_pwem:
            started = time.perf_counter()
            classes_by_pwem(folder, particles, members)
            seconds = time.perf_counter() - started
            print(f"{'':>9}  classes by pwem's classifyItems: {seconds:.1f} s "
                  f"({count / seconds:,.0f} particles/s)", flush=True)
        particles.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pwem-up-to", type=int, default=100_000,
                        help="also time pwem's item-by-item writing up to this many particles")
    args = parser.parse_args()
    for count in args.particles:
        run(count, count <= args.pwem_up_to)


if __name__ == "__main__":
    main()
