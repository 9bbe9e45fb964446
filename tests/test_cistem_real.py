"""The cisTEM engine with the real refine2d and merge2d, when they are on PATH.

cisTEM cannot be installed on the development machines, so this runs only where it is; the
stand-in tests (test_cistem_engine.py) cover the same contract everywhere else.
"""

from __future__ import annotations

import shutil
import threading

import mrcfile
import numpy as np
import pytest
from cistem_standin.particles import make_particles

from live2d import cistem_star
from live2d.engines.base import CycleParams, CycleRequest, Progress
from live2d.engines.cistem import CistemEngine, find_programs

if not (shutil.which("refine2d") and shutil.which("merge2d")):
    pytest.skip(
        "cisTEM's refine2d and merge2d are not on PATH: real-program tests not run",
        allow_module_level=True,
    )

N, BOX, K = 60, 64, 3
PARAMS = CycleParams(pixel_size=2.0, mask_radius=50.0, high_res=8.0, angular_step=15.0)


def test_random_start_and_a_cycle_in_two_slices_with_real_cistem(tmp_path):
    engine = CistemEngine(find_programs(None, required=True))
    stack, star = make_particles(tmp_path, n=N, box=BOX, pixel_size=PARAMS.pixel_size)
    progress: list[Progress] = []

    def request(name: str, **changes) -> CycleRequest:
        fields = dict(
            stack=stack,
            star_in=star,
            star_out=tmp_path / f"{name}.star",
            classes_out=tmp_path / f"{name}.mrc",
            params=PARAMS,
            n_classes=K,
            workdir=tmp_path / "work",
            threads=2,
        )
        return CycleRequest(**{**fields, **changes})

    start = request("c0")
    engine.start_classes(start, progress.append, threading.Event())
    cycle = request("c1", classes_in=start.classes_out)
    result = engine.run_cycle(cycle, progress.append, threading.Event())

    table = cistem_star.read_star(cycle.star_out)
    assert table["POS"].tolist() == list(range(1, N + 1))
    assert table["2DCLS"].abs().between(1, K).all()
    assert sum(result.class_counts) == (table["2DCLS"] > 0).sum()
    for path in (start.classes_out, cycle.classes_out):
        with mrcfile.open(path) as mrc:
            assert mrc.data.shape == (K, BOX, BOX)
            assert mrc.voxel_size.x == pytest.approx(PARAMS.pixel_size)
            assert np.isfinite(mrc.data).all()
    assert any("Merge2D: Normal termination" in line for line in result.log)
    assert progress[-1].fraction == 1.0
    assert list((tmp_path / "work").iterdir()) == []
