"""The cisTEM engine with the real refine2d and merge2d.

The programs come from ``$LIVE2D_TEST_CISTEM_BIN``, else the project's ``../shared/cistem/bin``
(real cisTEM 2 builds kept beside the checkout as test tooling), else PATH. They are handed to
these tests only: on PATH for the whole suite, ``--engine auto`` would pick cisTEM everywhere and
stop testing the built-in engine. Where none is found the module skips, saying so; the stand-in
tests (test_cistem_engine.py) cover the same contract everywhere.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cistem_standin.particles import make_particles

from live2d import cistem_star
from live2d.engines.base import CycleParams, CycleRequest, Progress
from live2d.engines.cistem import CistemEngine, find_programs
from live2d.mrc import mark_image_stack

SHARED_BIN = Path(__file__).resolve().parents[2] / "shared" / "cistem" / "bin"


def _real_cistem_bin() -> str | None:
    for folder in (os.environ.get("LIVE2D_TEST_CISTEM_BIN"), SHARED_BIN):
        if folder and all((Path(folder) / name).is_file() for name in ("refine2d", "merge2d")):
            return str(folder)
    found = shutil.which("refine2d")
    return str(Path(found).parent) if found and shutil.which("merge2d") else None


CISTEM_BIN = _real_cistem_bin()
if CISTEM_BIN is None:
    pytest.skip(
        f"cisTEM's refine2d and merge2d are in neither $LIVE2D_TEST_CISTEM_BIN, {SHARED_BIN} "
        "nor PATH: real-program tests not run",
        allow_module_level=True,
    )

N, BOX, K = 60, 64, 3
PARAMS = CycleParams(pixel_size=2.0, mask_radius=50.0, high_res=8.0, angular_step=15.0)


def test_random_start_and_a_cycle_in_two_slices_with_real_cistem(tmp_path):
    engine = CistemEngine(find_programs(CISTEM_BIN, required=True))
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
    mark_image_stack(start.classes_out)  # as the session labels every cycle's averages
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

    # A job classifies the particles imported when it started: the stack has grown since, so
    # the star lists its first particles only, and only those are classified.
    first = N * 2 // 3
    cistem_star.write_star(tmp_path / "first.star", cistem_star.read_star(star).iloc[:first])
    later = request("c2", star_in=tmp_path / "first.star", classes_in=cycle.classes_out)
    result = engine.run_cycle(later, progress.append, threading.Event())
    assert cistem_star.read_star(later.star_out)["POS"].tolist() == list(range(1, first + 1))
    assert 0 < sum(result.class_counts) <= first
