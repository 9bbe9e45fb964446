"""A small particle stack and its cisTEM star file, for tests."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

from live2d import cistem_star


def make_particles(
    folder: Path, n: int = 40, box: int = 32, pixel_size: float = 4.0, views: int = 3, seed: int = 0
) -> tuple[Path, Path]:
    """A stack of ``n`` noisy particles (white Gaussian blobs in ``views`` arrangements, turned by
    multiples of 90°) and its cisTEM star file with CTF columns."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((box, box)) - box / 2
    templates = []
    for view in range(views):
        image = np.zeros((box, box))
        for blob in range(view + 1):
            angle = 2 * np.pi * blob / (view + 1)
            cx, cy = 5 * np.cos(angle) * (view > 0), 5 * np.sin(angle) * (view > 0)
            width = 2.0 + view
            image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))
        templates.append(image)
    particles = np.array(
        [np.rot90(templates[i % views], rng.integers(4)) for i in range(n)]
    ) + rng.normal(0, 0.3, (n, box, box))
    stack = folder / "particles.mrc"
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(particles.astype(np.float32))
        mrc.voxel_size = pixel_size
    table = cistem_star.new_table(n)
    table["DF1"], table["DF2"], table["ANGAST"] = 15000.0, 14500.0, 30.0
    table["PSIZE"], table["VOLT"] = pixel_size, 300.0
    star = folder / "particles.star"
    cistem_star.write_star(star, table, ["test particles"])
    return stack, star
