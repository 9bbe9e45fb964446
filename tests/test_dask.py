"""The built-in engine's cycles on a real Dask cluster: two worker processes on loopback."""

import functools
import json
import os
import socket
import sys
import threading
import time
from unittest import mock

import mrcfile
import numpy as np
import pytest

from live2d import cistem_star
from live2d.cli import main as cli_main
from live2d.engines import EngineError
from live2d.engines.base import CycleParams, CycleRequest
from live2d.engines.builtin import BuiltinEngine
from live2d.phantom import Phantom
from live2d.simulate import simulate

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from live2d.executors import (  # noqa: E402  (needs dask, skipped above without it)
    DaskExecutor,
    Executor,
    ExecutorError,
    LocalExecutor,
    make_executor,
)

BOX, PIXEL, N, K = 32, 4.0, 240, 3
BATCH, CHUNK_BATCHES = 16, 2  # 8 chunks of 32 particles: work for both workers


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    phantom = Phantom(BOX, PIXEL, n_views=K, seed=5)
    rng = np.random.default_rng(2)
    batch = phantom.particles(N, rng, snr=0.5, defocus_u=15000.0, defocus_v=14600.0,
                              defocus_angle=20.0, max_shift=4.0)
    table = cistem_star.new_table(N)
    table[["DF1", "DF2", "ANGAST"]] = (15000.0, 14600.0, 20.0)
    table["PSIZE"], table["VOLT"], table["Cs"], table["AmpC"] = PIXEL, 300.0, 2.7, 0.07
    with mrcfile.new(folder / "particles.mrcs") as mrc:
        mrc.set_data(batch.images.astype(np.float32))
        mrc.voxel_size = PIXEL
    cistem_star.write_star(folder / "particles.star", table)
    p = CycleParams(pixel_size=PIXEL, mask_radius=0.6 * phantom.diameter, high_res=12.0,
                    angular_step=15.0, search_range=8.0)
    start = CycleRequest(folder / "particles.mrcs", folder / "particles.star",
                         folder / "start.star", folder / "start.mrc", p, K, seed=1)
    BuiltinEngine("cpu", batch_size=BATCH).start_classes(start, lambda _: None,
                                                        threading.Event())
    return folder, p


@pytest.fixture(scope="module")
def executor():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    dask = DaskExecutor(cluster=cluster, timeout=20)
    dask.wait_for_workers(2)
    yield dask
    dask.close()


def cycle(folder, p, name, engine, progress=lambda _: None):
    req = CycleRequest(folder / "particles.mrcs", folder / "particles.star",
                       folder / f"{name}.star", folder / f"{name}.mrc", p, K,
                       classes_in=folder / "start.mrc", threads=1, seed=7)
    result = engine.run_cycle(req, progress, threading.Event())
    with mrcfile.open(result.classes) as mrc:
        classes = np.array(mrc.data)
    return cistem_star.read_star(result.star), classes


@pytest.fixture(scope="module")
def local_result(particles):
    folder, p = particles
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES)
    return cycle(folder, p, "local", engine)


def assert_same(result, expected):
    table, classes = result
    expected_table, expected_classes = expected
    # Same chunks, each computed from the same inputs, added in the same order: bit-identical.
    assert np.array_equal(classes, expected_classes)
    assert table.equals(expected_table)
    assert (table["2DCLS"] > 0).all()


def test_cluster_cycle_equals_the_single_process_cycle(particles, executor, local_result):
    folder, p = particles
    executor.check_shared_folder(folder)
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES,
                           executor=executor)
    assert "dask" in engine.describe()
    assert_same(cycle(folder, p, "dask", engine), local_result)


def test_chunking_does_not_change_the_particles_results(particles, local_result):
    folder, p = particles
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=100)  # one chunk
    table, classes = cycle(folder, p, "one_chunk", engine)
    assert table.equals(local_result[0])  # per particle: the batches are the same
    assert np.allclose(classes, local_result[1], atol=1e-5 * np.abs(classes).max())


def die_once(fn, marker: str, victim: int, shared, task):
    """The worker running the chunk that starts at particle ``victim`` dies there, the first
    time only (the marker file remembers it across processes)."""
    if int(task.chunk[0]) == victim and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return fn(shared, task)


class DyingWorkers(Executor):
    """The cluster's executor, with one worker process killed in the middle of a chunk."""

    distributed = True

    def __init__(self, inner: DaskExecutor, marker: str, victim: int) -> None:
        self.inner, self.marker, self.victim = inner, marker, victim

    def map(self, fn, shared, items, **options):
        return self.inner.map(functools.partial(die_once, fn, self.marker, self.victim), shared,
                              items, **options)

    def describe(self) -> str:
        return self.inner.describe()


def test_a_worker_killed_mid_cycle_loses_nothing(particles, executor, local_result, tmp_path):
    folder, p = particles
    # workers import this module's functions by value: they cannot import the tests
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    before = set(executor.client.scheduler_info()["workers"])
    marker = tmp_path / "killed"
    dying = DyingWorkers(executor, str(marker), victim=3 * BATCH * CHUNK_BATCHES)
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES, executor=dying)
    result = cycle(folder, p, "killed", engine)
    assert marker.exists()  # the chunk killed its worker ...
    assert before - set(executor.client.scheduler_info()["workers"])  # ... which is gone,
    assert_same(result, local_result)  # and its chunk was redone elsewhere: nothing lost


def test_an_unreachable_scheduler_fails_fast_with_advice():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ExecutorError, match=r"cannot reach the Dask scheduler.*--scheduler"):
        make_executor(scheduler=f"tcp://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 30


def test_executor_choice_and_cluster_config_errors(tmp_path):
    assert isinstance(make_executor(), LocalExecutor)
    with pytest.raises(ExecutorError, match="not both"):
        make_executor(scheduler="tcp://127.0.0.1:1", cluster="local")
    bad = tmp_path / "cluster.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ExecutorError, match="mapping of cluster options"):
        make_executor(cluster="slurm", cluster_config=bad)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        bad.write_text("cores: 4\n")
        with pytest.raises(ExecutorError, match="pip install dask-jobqueue"):
            make_executor(cluster="slurm", cluster_config=bad)


def test_local_executor_runs_in_order_and_stops_on_cancel():
    done = []
    assert LocalExecutor().map(lambda s, x: s + x, 10, [1, 2, 3], on_done=done.append) == \
        [11, 12, 13]
    assert done == [1, 2, 3]
    cancel = threading.Event()
    cancel.set()
    from live2d.engines.base import CycleCancelled

    with pytest.raises(CycleCancelled):
        LocalExecutor().map(lambda s, x: x, None, [1], cancel=cancel)


def test_a_chunk_that_keeps_failing_fails_the_cycle_cleanly(particles, executor):
    folder, p = particles
    broken = CycleRequest(folder / "particles.mrcs", folder / "particles.star",
                          folder / "broken.star", folder / "broken.mrc", p, K,
                          classes_in=folder / "start.mrc", threads=1, seed=7)
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES,
                           executor=Failing(executor))
    with pytest.raises(EngineError, match=r"slice of the cycle failed.*retries.*broken disk"):
        engine.run_cycle(broken, lambda _: None, threading.Event())
    assert not broken.star_out.exists() and not broken.classes_out.exists()


def always_fail(shared, task):
    raise OSError("broken disk")


class Failing(Executor):
    distributed = True

    def __init__(self, inner: DaskExecutor) -> None:
        self.inner = inner

    def map(self, fn, shared, items, **options):
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return self.inner.map(always_fail, shared, items, **options)


def test_cli_runs_a_job_on_the_scheduler_as_it_does_locally(tmp_path, executor, capsys):
    warp = tmp_path / "warp"
    simulate(warp, particles=160, per_micrograph=80, box=32, pixel_size=4.0, snr=0.5, views=3,
             seed=0)
    small = ["--classes", "3", "--particles-per-class", "40", "--startup-cycles", "1",
             "--refinement-cycles", "1", "--high-res-initial", "30", "--high-res-final", "16",
             "--threads", "1", "--engine", "builtin", "--device", "cpu"]
    assert cli_main(["run", str(warp), "--once", "--output", str(tmp_path / "here"),
                     *small]) == 0
    assert cli_main(["run", str(warp), "--once", "--output", str(tmp_path / "there"),
                     "--scheduler", executor.address, *small]) == 0
    here = json.loads((tmp_path / "here" / "session.json").read_text())["history"]
    there = json.loads((tmp_path / "there" / "session.json").read_text())["history"]
    assert len(there) == len(here) == 3 and "dask" in there[-1]["engine"]
    for mine, theirs in zip(here, there, strict=True):
        with mrcfile.open(tmp_path / "here" / mine["classes"]) as a, \
                mrcfile.open(tmp_path / "there" / theirs["classes"]) as b:
            assert np.array_equal(a.data, b.data)


def test_cli_says_what_to_do_about_an_unreachable_scheduler_or_cistem(tmp_path, executor,
                                                                      capsys):
    warp = tmp_path / "warp"
    simulate(warp, particles=40, per_micrograph=40, box=32, pixel_size=4.0, views=2, seed=0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mock.patch.dict(make_executor.__kwdefaults__, {"timeout": 2.0}):  # not 30 s
        assert cli_main(["run", str(warp), "--once", "--scheduler",
                         f"tcp://127.0.0.1:{port}"]) == 1
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert cli_main(["run", str(warp), "--once", "--engine", "cistem", "--scheduler",
                     executor.address]) == 1
    assert "--engine builtin" in capsys.readouterr().err
