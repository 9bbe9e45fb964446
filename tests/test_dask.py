"""The built-in engine's cycles on a real Dask cluster: two worker processes on loopback."""

import contextlib
import functools
import io
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cistem_standin import make_bin_dir, read_records, wait_for_records
from cistem_standin.particles import make_particles
from slurm_helpers import needs_slurm, slurm_job

from live2d import cistem_star
from live2d.cli import main as cli_main
from live2d.engines.base import CycleParams, CycleRequest, StreamBatch
from live2d.engines.builtin import BuiltinEngine
from live2d.engines.cistem import CistemEngine, find_programs
from live2d.errors import CycleCancelled, EngineError
from live2d.history import particle_table, read_history
from live2d.phantom import Phantom
from live2d.server.control import Controller
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


def cycle(folder, p, name, engine, progress=lambda _: None, threads=1):
    req = CycleRequest(folder / "particles.mrcs", folder / "particles.star",
                       folder / f"{name}.star", folder / f"{name}.mrc", p, K,
                       classes_in=folder / "start.mrc", threads=threads, seed=7)
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
    # The workers that classified undid the malloc setting Dask's nanny gives them.
    assert all(executor.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())
    assert any(executor.client.run(allocator_set).values())


def allocator_set() -> bool:
    from live2d.executors import keep_freed_memory
    return keep_freed_memory.cache_info().currsize == 1


def test_freed_memory_is_kept_where_the_c_library_allows():
    from live2d.executors import keep_freed_memory
    assert keep_freed_memory() is (sys.platform == "linux")  # glibc here


class ThreadsAsked(Executor):
    """The fixture's workers, each slice told to use ``threads`` threads (None: as many as
    the executor says); records what the slices were told."""

    distributed = True

    def __init__(self, executor: Executor, threads: int | None = None) -> None:
        self.executor, self.threads = executor, threads
        self.asked: list[int] = []

    def map(self, fn, shared, items, **options):
        self.asked.extend(item.threads for item in items)
        return self.executor.map(fn, shared, items, **options)

    def task_threads(self) -> int | None:
        return self.threads or self.executor.task_threads()


def test_threads_change_nothing_here_or_on_the_workers(particles, executor, local_result):
    """Two threads scoring batches side by side, in this process or in each worker's task,
    give the one-thread cycle to the bit."""
    folder, p = particles
    here = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES)
    assert_same(cycle(folder, p, "two_threads", here, threads=2), local_result)
    two = ThreadsAsked(executor, threads=2)
    remote = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES, executor=two)
    assert_same(cycle(folder, p, "two_threads_dask", remote), local_result)
    assert set(two.asked) == {2}


def test_a_slice_uses_its_share_of_its_workers_cores_not_this_machines_threads(
        particles, executor, local_result):
    """Two single-threaded workers on this machine share its cores: each slice gets half,
    whatever the cycle's own threads (those of this machine) say."""
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert executor.task_threads() == share
    folder, p = particles
    asked = ThreadsAsked(executor)
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES, executor=asked)
    assert_same(cycle(folder, p, "share", engine, threads=8), local_result)
    assert asked.asked and set(asked.asked) == {share}


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


def stream_updates(folder: Path, p, name: str, engine,
                   done: list | None = None) -> list[tuple]:
    """Two streaming updates as a session runs them: the first puts particles 0-192 into two
    batches; the second classifies the 48 that arrived since as a new batch and re-visits the
    first batch, keeping the second's sums (and refine2d dump, for the cisTEM engine). Returns
    each update's classes, star and batch sums; ``done`` gets each update's CycleResult."""
    table = cistem_star.read_star(folder / "particles.star")
    plans = [([0, 96, 192], {0, 96}, folder / "start.mrc"),
             ([0, 96, 192, 240], {0, 192}, folder / f"{name}_1.mrc")]
    results = []
    for number, (edges, classify, classes_in) in enumerate(plans, start=1):
        batches = []
        for a, b in itertools.pairwise(edges):
            aligned = number if a in classify else number - 1  # the update that made its sums
            batches.append(StreamBatch(a, b, folder / f"{name}_sums_{a}_{aligned}.pt",
                                       folder / f"{name}_sums_{a}_{number}.pt", a in classify,
                                       folder / f"{name}_rows_{a}.star",
                                       folder / f"{name}_dump_{a}_{aligned}.dat",
                                       folder / f"{name}_dump_{a}_{number}.dat"))
        kept_rows = table if number == 1 else cistem_star.read_star(
            folder / f"{name}_{number - 1}.star")
        for b in batches:  # the rows of batches kept, as the session keeps them
            if not b.classify:
                cistem_star.write_star(b.rows, kept_rows.iloc[b.start:b.stop])
        rows = [(kept_rows if b.stop <= len(kept_rows) else table).iloc[b.start:b.stop]
                for b in batches if b.classify]
        star_in = folder / f"{name}_{number}_input.star"
        cistem_star.write_star(star_in, pd.concat(rows, ignore_index=True))
        request = CycleRequest(folder / "particles.mrcs", star_in, folder / f"{name}_{number}.star",
                               folder / f"{name}_{number}.mrc", p, K, classes_in=classes_in,
                               threads=1, seed=7 + number, batches=tuple(batches))
        result = engine.run_update(request, lambda _: None, threading.Event())
        if done is not None:
            done.append(result)
        with mrcfile.open(result.classes) as mrc:
            classes = np.array(mrc.data)
        sums = [torch.load(b.sums_out, weights_only=True) for b in batches if b.classify]
        sums = [torch.cat([kept[name].flatten().double() for name in sorted(kept)
                           if isinstance(kept[name], torch.Tensor)]) for kept in sums]
        results.append((classes, cistem_star.read_star(result.star), sums,
                        result.batches_classified))
    return results


def stream_folder(particles, folder: Path) -> Path:
    """A folder of its own for a chain of updates, over the module's particles."""
    folder.mkdir()
    for name in ("particles.mrcs", "particles.star", "start.mrc"):
        (folder / name).symlink_to(particles[0] / name)
    return folder


@pytest.fixture(scope="module")
def local_stream(particles, tmp_path_factory):
    folder = stream_folder(particles, tmp_path_factory.mktemp("stream") / "here")
    return stream_updates(folder, particles[1], "u", BuiltinEngine(
        "cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES))


def assert_same_updates(remote: list[tuple], local: list[tuple]) -> None:
    for (classes, star, sums, done), (want, want_star, want_sums, want_done) in zip(
            remote, local, strict=True):
        assert done == want_done
        assert np.array_equal(classes, want)
        assert star.equals(want_star) and (star["2DCLS"] > 0).all()
        assert all(torch.equal(a, b) for a, b in zip(sums, want_sums, strict=True))
    assert sorted(remote[1][1]["POS"]) == list(range(1, 97)) + list(range(193, 241))


def test_streaming_updates_on_workers_one_killed_equal_one_machines(particles, executor,
                                                                     local_stream, tmp_path):
    """Each update's batches are chunks on the workers, all at once; the worker classifying a
    chunk of the second batch dies in the first update, the new batch's in the second: both
    chunks are redone elsewhere and every update's classes, rows and kept sums are one
    machine's."""
    p = particles[1]
    there = stream_folder(particles, tmp_path / "there")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor.check_shared_folder(there)
    killed = []
    for victim in (96 + BATCH * CHUNK_BATCHES, 192):
        killed.append(DyingWorkers(executor, str(tmp_path / f"killed_{victim}"), victim))
    workers = OneAfterAnother(killed)
    engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES,
                           executor=workers)
    before = set(executor.client.scheduler_info()["workers"])
    remote = stream_updates(there, p, "u", engine)
    # One map per update, its batches side by side: 3 + 3 chunks of 32, then 3 + 2 (48 new).
    assert workers.maps == [6, 5]
    assert all(Path(k.marker).exists() for k in killed)  # a worker died in each update ...
    assert before - set(executor.client.scheduler_info()["workers"])
    assert_same_updates(remote, local_stream)  # ... and nothing differs from one machine


class OneAfterAnother(Executor):
    """Each map goes to the next of ``executors`` that has not killed its worker yet."""

    distributed = True

    def __init__(self, executors: list[DyingWorkers]) -> None:
        self.executors = executors
        self.maps: list[int] = []  # how many items each map ran

    def map(self, fn, shared, items, **options):
        self.maps.append(len(items))
        live = next((e for e in self.executors if not os.path.exists(e.marker)),
                    self.executors[-1])
        return live.map(fn, shared, items, **options)

    def describe(self) -> str:
        return self.executors[0].describe()


def slurm_config(tmp_path: Path, walltime: str) -> Path:
    """A --cluster-config for two one-core workers as Slurm batch jobs on this machine."""
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump({
        "cores": 1, "processes": 1, "memory": "2GB", "walltime": walltime, "jobs": 2,
        "interface": "lo", "python": sys.executable, "log_directory": str(tmp_path / "logs"),
        "local_directory": str(tmp_path / "scratch")}))
    return config


@needs_slurm
def test_workers_started_as_slurm_jobs_give_the_local_result(particles, local_result,
                                                            local_stream, tmp_path):
    """--cluster slurm: dask-jobqueue submits the workers with sbatch to a real (one-node)
    Slurm; a cycle and two streaming updates are the same as in one process, and closing
    cancels the batch jobs."""
    folder, p = particles
    executor = make_executor(cluster="slurm", cluster_config=slurm_config(tmp_path, "00:20:00"))
    try:
        executor.check_shared_folder(folder)
        executor.wait_for_workers(2)
        jobs = executor.client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(set(jobs.values())) == 2 and all(jobs.values())  # two batch jobs
        engine = BuiltinEngine("cpu", batch_size=BATCH, chunk_batches=CHUNK_BATCHES,
                               executor=executor)
        assert_same(cycle(folder, p, "slurm", engine), local_result)
        there = stream_folder(particles, tmp_path / "there")
        executor.check_shared_folder(there)
        assert_same_updates(stream_updates(there, p, "u", engine), local_stream)
    finally:
        executor.close()
    deadline = time.monotonic() + 30
    while any(slurm_job(job)["JobState"] in ("PENDING", "RUNNING") for job in jobs.values()) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(slurm_job(job)["JobState"] not in ("PENDING", "RUNNING")
               for job in jobs.values())


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
    from live2d.errors import CycleCancelled

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
    here = read_history(tmp_path / "here")
    there = read_history(tmp_path / "there")
    assert len(there) == len(here) == 3 and "dask" in there[-1].engine
    for mine, theirs in zip(here, there, strict=True):
        with mrcfile.open(tmp_path / "here" / mine.classes) as a, \
                mrcfile.open(tmp_path / "there" / theirs.classes) as b:
            assert np.array_equal(a.data, b.data)
        if mine.star:  # later cycles score previous matches too: still the same
            assert (tmp_path / "here" / mine.star).read_text() == \
                (tmp_path / "there" / theirs.star).read_text()
    # Warp goes on: the next job is a streaming update, its batches classified on the
    # workers, with the same classes and parameters as here.
    simulate(warp, particles=240, per_micrograph=80, box=32, pixel_size=4.0, snr=0.5, views=3,
             seed=0)
    for folder, extra in (("here", []), ("there", ["--scheduler", executor.address])):
        assert cli_main(["run", str(warp), "--once", "--output", str(tmp_path / folder),
                         *small, *extra]) == 0
    mine, theirs = read_history(tmp_path / "here")[-1], read_history(tmp_path / "there")[-1]
    assert mine.job_type == theirs.job_type == "stream" and "dask" in theirs.engine
    assert mine.batches == theirs.batches and mine.class_counts == theirs.class_counts
    with mrcfile.open(tmp_path / "here" / mine.classes) as a, \
            mrcfile.open(tmp_path / "there" / theirs.classes) as b:
        assert np.array_equal(a.data, b.data)
    assert particle_table(tmp_path / "here", mine).equals(
        particle_table(tmp_path / "there", theirs))


def test_the_web_runner_runs_its_jobs_on_the_scheduler(tmp_path, executor):
    """live2d serve --scheduler: jobs started from the page run their cycles on the cluster."""
    warp = tmp_path / "warp"
    simulate(warp, particles=120, per_micrograph=60, box=32, pixel_size=4.0, snr=0.5, views=3,
             seed=0)
    settings = {"classes": 3, "particles_per_class": 30, "startup_cycles": 1,
                "refinement_cycles": 1, "high_res_initial": 30.0, "high_res_final": 16.0,
                "threads": 1}
    controller = Controller(warp, tmp_path / "out", engine="builtin", device="cpu",
                            settings=settings, executor=executor)
    try:
        controller.handle({"command": "start_job", "job_type": "abinit"})
        deadline = time.monotonic() + 120
        while controller.busy and time.monotonic() < deadline:
            time.sleep(0.2)
        history = controller.state()["history"]
    finally:
        controller.close()
    assert len(history) == 3 and all("dask at" in cycle["engine"] for cycle in history)


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
    assert cli_main(["run", str(warp), "--once", "--engine", "cistem", "--cistem-bin",
                     str(tmp_path / "nowhere"), "--scheduler", executor.address]) == 1
    assert "refine2d" in capsys.readouterr().err


@pytest.mark.parametrize("check", ["check_shared_folder", "check_programs"])
def test_workers_that_cannot_do_the_work_stop_run_and_serve_at_start(tmp_path, executor, check):
    """Blind workers, or workers without cisTEM, are reported before anything is imported."""
    warp = tmp_path / "warp"
    simulate(warp, particles=40, per_micrograph=40, box=32, pixel_size=4.0, views=2, seed=0)
    bins = str(make_bin_dir(tmp_path / "bin"))
    refusal = ExecutorError(f"{check} says no")
    with mock.patch.object(DaskExecutor, check, side_effect=refusal):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert cli_main(["run", str(warp), "--once", "--output", str(tmp_path / "out"),
                             "--engine", "cistem", "--cistem-bin", bins, "--scheduler",
                             executor.address]) == 1
        assert f"{check} says no" in err.getvalue()
        with pytest.raises(ExecutorError, match=f"{check} says no"):
            Controller(warp, tmp_path / "page", engine="cistem", cistem_bin=bins,
                       executor=executor)
    assert not (tmp_path / "out" / "particles.mrcs").exists()
    assert not (tmp_path / "page" / "particles.mrcs").exists()


# ------------------------------------------------------------------ cisTEM slices on the cluster

CISTEM_N = 41  # two slices of different sizes: 1-21 and 22-41
CISTEM_PARAMS = CycleParams(pixel_size=4.0, mask_radius=40.0, high_res=8.0)


@pytest.fixture(scope="module")
def cistem_start(tmp_path_factory):
    """Particles, and random-start classes made by the stand-in refine2d."""
    folder = tmp_path_factory.mktemp("cistem_dask")
    stack, star = make_particles(folder, n=CISTEM_N, box=32)
    programs = find_programs(str(make_bin_dir(folder / "bin")), True)
    start = CycleRequest(stack, star, folder / "start.star", folder / "start.mrc",
                         CISTEM_PARAMS, K)
    CistemEngine(programs).start_classes(start, lambda _: None, threading.Event())
    return stack, star, start.classes_out


def cistem_engine(tmp_path, executor, **hooks):
    """The cisTEM engine on the cluster, with stand-ins that record each run in tmp/records
    and act on ``hooks`` (runtime.py's variables): the workers' environment is not the test's."""
    records = tmp_path / "records"
    records.mkdir()
    env = {"CISTEM_STANDIN_RECORD": str(records)}
    programs = find_programs(str(make_bin_dir(tmp_path / "bin", env=env)), True)
    make_bin_dir(tmp_path / "bin", env={**env, **hooks})  # hooked after the probe
    return CistemEngine(programs, executor=executor), records


def cistem_request(tmp_path, cistem_start, name="cycle"):
    stack, star, classes = cistem_start
    return CycleRequest(stack, star, tmp_path / f"{name}.star", tmp_path / f"{name}.mrc",
                        CISTEM_PARAMS, K, classes_in=classes, workdir=tmp_path / "work",
                        threads=1)


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def worker_pids(executor) -> set[int]:
    return set(executor.client.run(os.getpid).values())


def test_cistem_slices_run_on_the_workers_and_merge_here(tmp_path, executor, cistem_start):
    # Earlier tests killed workers of this module's cluster; on a loaded machine its nannies
    # may still be starting their replacements, and a cycle slices for the workers it has.
    executor.wait_for_workers(2)
    engine, records = cistem_engine(tmp_path, executor)
    assert "slices on dask" in engine.describe()
    request = cistem_request(tmp_path, cistem_start)
    progress = []
    result = engine.run_cycle(request, progress.append, threading.Event())

    table = cistem_star.read_star(result.star)
    assert table["POS"].tolist() == list(range(1, CISTEM_N + 1))
    assert sum(result.class_counts) == CISTEM_N == result.particles_processed
    with mrcfile.open(result.classes) as mrc:
        assert mrc.data.shape == (K, 32, 32) and float(mrc.voxel_size.x) == 4.0
    refines = read_records(records, "Refine2D")
    assert len(refines) == executor.slots() == 2  # a slice per worker thread
    assert sorted((run["first"], run["last"]) for run in refines) == [(1, 21), (22, CISTEM_N)]
    assert {run["ppid"] for run in refines} <= worker_pids(executor)  # started by workers
    assert len({run["seed_second"] for run in refines}) == 2  # distinct random streams
    [merge] = read_records(records, "Merge2D")
    assert merge["ppid"] == os.getpid()  # merge2d here, from the workers' dump files
    assert sum(line.count("ran on tcp://127.0.0.1") for line in result.log) == 2
    assert any("Normal termination" in line for line in result.log)
    fractions = [update.fraction for update in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert not list((tmp_path / "work").iterdir())  # scratch removed


def test_cistem_slices_progress_reaches_the_caller_while_they_run(tmp_path, executor,
                                                                  cistem_start):
    engine, _ = cistem_engine(tmp_path, executor, CISTEM_STANDIN_DELAY="0.15")  # ~3 s a slice
    progress = []
    engine.run_cycle(cistem_request(tmp_path, cistem_start), progress.append, threading.Event())
    fractions = [update.fraction for update in progress]
    # before any slice had finished (that alone would say 0.475), the workers' progress bars
    assert any(0.0 < fraction < 0.45 for fraction in fractions), fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(update.particles_per_second > 0 for update in progress)


def test_cistem_slice_of_a_killed_worker_is_rerun_and_its_refine2d_dies(
        tmp_path, executor, cistem_start):
    engine, records = cistem_engine(tmp_path, executor,
                                    CISTEM_STANDIN_FAIL="refine2d:kill-parent-once")
    before = set(executor.client.scheduler_info()["workers"])
    result = engine.run_cycle(cistem_request(tmp_path, cistem_start), lambda _: None,
                              threading.Event())
    assert (records / "killed-parent").exists()  # a slice's refine2d killed its worker ...
    assert before - set(executor.client.scheduler_info()["workers"])  # ... which is gone,
    assert cistem_star.read_star(result.star)["POS"].tolist() == list(range(1, CISTEM_N + 1))
    refines = read_records(records, "Refine2D")
    assert len(refines) == 3  # two slices, one of them twice
    orphan = refines[0]["pid"] if refines[0]["ppid"] not in worker_pids(executor) else None
    deadline = time.monotonic() + 10
    while any(alive(run["pid"]) for run in refines) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert orphan is None or not alive(orphan)  # it died with its worker: no stray writer
    assert not any(alive(run["pid"]) for run in refines)


def test_stopping_a_cistem_cycle_ends_the_slices_on_the_workers(tmp_path, executor,
                                                                 cistem_start):
    engine, records = cistem_engine(tmp_path, executor, CISTEM_STANDIN_FAIL="refine2d:hang")
    request = cistem_request(tmp_path, cistem_start)
    cancel, outcome = threading.Event(), []

    def run():
        try:
            engine.run_cycle(request, lambda _: None, cancel)
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)

    cycle_thread = threading.Thread(target=run)
    cycle_thread.start()
    pids = [run["pid"] for run in wait_for_records(records, "Refine2D", 2)]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    cancel.set()
    cycle_thread.join(timeout=15)
    assert not cycle_thread.is_alive() and isinstance(outcome[0], CycleCancelled)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)  # the workers ended their refine2d
    assert not request.star_out.exists() and not request.classes_out.exists()


def test_a_cistem_slice_that_keeps_failing_fails_the_cycle_cleanly(tmp_path, executor,
                                                                   cistem_start):
    engine, records = cistem_engine(tmp_path, executor, CISTEM_STANDIN_FAIL="refine2d:exit",
                                    CISTEM_STANDIN_FAIL_FIRST="22")
    request = cistem_request(tmp_path, cistem_start)
    with pytest.raises(EngineError, match=r"(?s)after 1 retries.*refine2d slice 2/2 \(particles "
                                          r"22-41\) failed with exit status 3.*status 3 as asked"):
        engine.run_cycle(request, lambda _: None, threading.Event())
    assert len([run for run in read_records(records, "Refine2D") if run["first"] == 22]) == 2
    assert not request.star_out.exists() and not request.classes_out.exists()
    assert not list((tmp_path / "work").iterdir())


def test_workers_that_cannot_run_cistem_are_named(tmp_path, executor):
    with pytest.raises(ExecutorError, match=r"same path on every worker.*missing on tcp://"):
        executor.check_programs([tmp_path / "refine2d"])
    executor.check_programs([Path(sys.executable)])


def test_cli_runs_cistem_jobs_on_the_scheduler(tmp_path, executor):
    warp = tmp_path / "warp"
    simulate(warp, particles=80, per_micrograph=40, box=32, pixel_size=4.0, snr=0.5, views=3,
             seed=0)
    bins = make_bin_dir(tmp_path / "bin")
    assert cli_main(["run", str(warp), "--once", "--output", str(tmp_path / "out"),
                     "--classes", "3", "--particles-per-class", "20", "--startup-cycles", "1",
                     "--refinement-cycles", "1", "--engine", "cistem", "--cistem-bin",
                     str(bins), "--scheduler", executor.address]) == 0
    history = read_history(tmp_path / "out")
    assert len(history) == 3 and "slices on dask" in history[-1].engine
    assert len(cistem_star.read_star(tmp_path / "out" / history[-1].star)) == 80


def test_cistem_streaming_updates_run_each_batch_on_a_worker(tmp_path, executor, caplog):
    """Real refine2d and merge2d: after an ab initio job, each update runs one refine2d per
    batch it classifies on the workers and merge2d here over every batch's kept dump; every
    particle is in the classes once."""
    from test_cistem_real import CISTEM_BIN  # skips the test where there is no cisTEM
    from test_cistem_stream import STREAM, merge_by_hand
    from test_streaming import grow

    from live2d.output_folder import batch_dump_name
    from live2d.schedule import Settings
    from live2d.session import Session

    warp = tmp_path / "warp"
    grow(warp, 240)
    engine = CistemEngine(find_programs(CISTEM_BIN, required=True), executor=executor)
    session = Session(warp, settings=Settings(**STREAM), engine=engine)
    assert session.run_job("abinit")
    caplog.set_level("DEBUG", logger="live2d")
    for particles in (300, 420):
        grow(warp, particles)
        caplog.clear()
        assert session.run_job()
        latest = session.history[-1]
        assert latest.job_type == "stream" and "slices on dask" in latest.engine
        classified = [(a, b) for a, b, c in latest.batches if c == latest.number]
        ran = {line.split(": ran on ")[0] for line in caplog.messages if ": ran on tcp://" in line}
        assert ran == {f"refine2d batch {a + 1}-{b}" for a, b in classified}
        assert len(classified) < len(latest.batches) or particles == 300
        dumps = [session.output_dir / "stream" / batch_dump_name(a, c)
                 for a, _, c in latest.batches]
        assert np.array_equal(mrcfile.read(session.output_dir / latest.classes),
                              merge_by_hand(dumps, tmp_path / f"by_hand_{particles}"))
        table = particle_table(session.output_dir, latest)
        assert table["POS"].tolist() == list(range(1, particles + 1))
        assert sum(latest.class_counts) == particles
    session.close()


# --------------------------------------- cisTEM streaming updates: a lost worker, Slurm's workers

# refine2d seeds its random numbers (each particle's in-plane angle grid offset, the noise
# spectrum's sample) from time(NULL): two runs on the same inputs in different seconds differ in
# every particle's angles, shifts and scores, and some particles change class. With time() pinned
# it is deterministic: the same rows, dumps and classes, bit for bit. So these tests pin it.
TIME_SHIM = """#include <time.h>
time_t time(time_t *t) { if (t) *t = 1700000000; return 1700000000; }
"""

REFINE2D = """#!{python}
# cisTEM's refine2d with time() pinned. A run whose first particle is in KILL kills, the first
# time only, the Dask worker that started it while refine2d works on the particles, as a
# crashed node would.
import ctypes, os, signal, subprocess, sys
REAL, SHIM, KILL, MARKS = {real!r}, {shim!r}, {kill!r}, {marks!r}
answers = sys.stdin.buffer.read()  # all at once, stdin then closed (JobRunner, the probe)
env = dict(os.environ, LD_PRELOAD=SHIM)
lines = answers.decode().splitlines()
first = int(lines[6]) if len(lines) > 7 else None
if first in KILL:
    try:
        mark = os.open(os.path.join(MARKS, f"killed_{{first}}"),
                       os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        mark = None
    if mark is not None:
        prctl = ctypes.CDLL(None).prctl  # PR_SET_PDEATHSIG: it dies when this process does
        run = subprocess.Popen([REAL], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                               preexec_fn=lambda: prctl(1, signal.SIGKILL))
        run.stdin.write(answers)
        run.stdin.close()
        for line in run.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            if line.startswith(b"Calculating new class averages"):
                break
        run.send_signal(signal.SIGSTOP)  # frozen at work on its particles
        worker = os.getppid()
        os.write(mark, f"{{worker}} {{run.pid}} {{run.poll() is None}}".encode())
        os.close(mark)
        os.kill(worker, signal.SIGKILL)  # this process dies with it (live2d's pdeathsig),
        run.wait()  # and so does refine2d
read, write = os.pipe()
os.write(write, answers)
os.close(write)
os.dup2(read, 0)
os.close(read)
os.execve(REAL, [REAL], env)
"""


@pytest.fixture(scope="module")
def pinned_cistem(tmp_path_factory):
    """The real programs' folder, and a library that pins time() for refine2d."""
    from test_cistem_real import CISTEM_BIN  # skips the tests where there is no cisTEM

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the library that pins refine2d's seed")
    folder = tmp_path_factory.mktemp("pinned")
    (folder / "time.c").write_text(TIME_SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "time.so"),
                    str(folder / "time.c")], check=True)
    return Path(CISTEM_BIN), folder / "time.so"


def pinned_programs(folder: Path, pinned, kill: tuple[int, ...] = ()):
    """cisTEM's programs from ``folder``: refine2d seeded from a pinned clock (killing the
    worker of the first run of each batch starting at a particle in ``kill``, and leaving a
    file ``killed_<first particle>`` here that says the worker's pid, its refine2d's and whether
    that was running), merge2d as it is."""
    real, shim = pinned
    folder.mkdir()
    (folder / "refine2d").write_text(REFINE2D.format(
        python=sys.executable, real=str(real / "refine2d"), shim=str(shim), kill=kill,
        marks=str(folder)))
    (folder / "refine2d").chmod(0o755)
    (folder / "merge2d").symlink_to(real / "merge2d")
    return find_programs(str(folder), required=True)


@pytest.fixture(scope="module")
def local_cistem_stream(particles, pinned_cistem, tmp_path_factory):
    """The two streaming updates with the cisTEM engine, all of them here."""
    folder = stream_folder(particles, tmp_path_factory.mktemp("cistem_stream") / "here")
    engine = CistemEngine(pinned_programs(folder / "bin", pinned_cistem))
    return stream_updates(folder, particles[1], "u", engine)


def ran_on(result, batch: str) -> str:
    """The worker a batch's refine2d ran on, by the update's log (batch: "first-last")."""
    [worker] = [line.split(": ran on ")[1] for line in result.log
                if line.startswith(f"refine2d batch {batch}: ran on ")]
    return worker


def test_cistem_streaming_update_of_a_killed_worker_reruns_its_batch_as_one_machine_would(
        particles, executor, pinned_cistem, local_cistem_stream, tmp_path):
    """Real refine2d and merge2d, their seed pinned: in the second update the worker running
    the new batch's refine2d (particles 193-240) is killed mid-run, the re-visit of the first
    batch going on beside it. The batch runs again on another worker, its killed refine2d dies
    with its worker, and each update has every particle in its classes once, a dump per batch
    and one machine's classes, rows and per-batch counts."""
    there = stream_folder(particles, tmp_path / "there")
    executor.check_shared_folder(there)
    executor.wait_for_workers(2)  # both here, to be told apart by their pids
    engine = CistemEngine(pinned_programs(tmp_path / "bin", pinned_cistem, kill=(193,)),
                          executor=executor)
    workers = {pid: address for address, pid in executor.client.run(os.getpid).items()}
    done: list = []
    remote = stream_updates(there, particles[1], "u", engine, done)

    worker, refine2d, running = (tmp_path / "bin" / "killed_193").read_text().split()
    assert running == "True"  # killed in the middle of the batch's refine2d
    killed = workers[int(worker)]  # (a worker since the first update)
    assert killed not in executor.client.scheduler_info()["workers"]  # ... which is gone,
    assert ran_on(done[1], "193-240") in executor.client.scheduler_info()["workers"]
    deadline = time.monotonic() + 10
    while alive(int(refine2d)) and time.monotonic() < deadline:
        time.sleep(0.2)
    stray = alive(int(refine2d))
    if stray:
        os.kill(int(refine2d), signal.SIGKILL)
    assert not stray  # the killed refine2d died with its worker: no stray writer of its dump
    for number, result in enumerate(done, start=1):
        # the update's particle table: its rows, and those of the batch it kept (97-192)
        table = pd.concat([cistem_star.read_star(result.star)] + [
            cistem_star.read_star(there / "u_rows_96.star")] * (number == 2), ignore_index=True)
        particles_in = (192, 240)[number - 1]
        assert sorted(table["POS"]) == list(range(1, particles_in + 1))  # each particle once,
        assert sum(result.class_counts) == particles_in == len(table)  # each in a class
        made = {0: number, 96: 1, 192: 2}  # the update that made each batch's kept dump
        assert all((there / f"u_dump_{a}_{made[a]}.dat").stat().st_size > 0
                   for a in (0, 96, 192)[:number + 1])
    assert_same_updates(remote, local_cistem_stream)


@needs_slurm
def test_cistem_streaming_updates_on_slurm_workers_give_one_machines_result(
        particles, pinned_cistem, local_cistem_stream, tmp_path):
    """--cluster slurm with the cisTEM engine: each update's refine2d batches run on two
    workers that dask-jobqueue submitted with sbatch, and both updates are one machine's."""
    executor = make_executor(cluster="slurm", cluster_config=slurm_config(tmp_path, "00:10:00"))
    try:
        there = stream_folder(particles, tmp_path / "there")
        executor.check_shared_folder(there)
        executor.wait_for_workers(2)
        jobs = executor.client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(set(jobs.values())) == 2 and all(jobs.values())  # two batch jobs
        engine = CistemEngine(pinned_programs(tmp_path / "bin", pinned_cistem),
                              executor=executor)
        done: list = []
        assert_same_updates(stream_updates(there, particles[1], "u", engine, done),
                            local_cistem_stream)
        ran = {ran_on(done[0], "1-96"), ran_on(done[0], "97-192"),
               ran_on(done[1], "1-96"), ran_on(done[1], "193-240")}
        assert ran <= set(jobs)  # every batch on a Slurm job's worker
    finally:
        executor.close()
