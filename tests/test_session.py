"""The live loop end to end: a simulated Warp session, the built-in engine, real files."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from live2d import cistem_star
from live2d.cli import main as cli_main
from live2d.errors import CycleCancelled, EngineError, SessionError
from live2d.history import read_history
from live2d.importer import Importer
from live2d.output_folder import OutputFolder
from live2d.schedule import REVISIT_BLOCK, Settings
from live2d.session import Session
from live2d.session_state import read_state
from live2d.simulate import simulate, write_settings
from live2d.source_images import open_images
from live2d.sources import ImportReport
from live2d.store import ParticleStore

SMALL = {"classes": 4, "particles_per_class": 40, "startup_cycles": 2, "refinement_cycles": 1,
         "high_res_initial": 30.0, "high_res_final": 12.0, "threads": 1, "first_job_at": 200,
         "update_every": 200, "poll_seconds": 0.5}
SMALL_ARGS = ["--classes", "4", "--particles-per-class", "40", "--startup-cycles", "2",
              "--refinement-cycles", "1", "--high-res-initial", "30", "--high-res-final", "12",
              "--threads", "1"]


def small_session(warp: Path, particles: int = 240, seed: int = 0) -> None:
    simulate(warp, particles=particles, per_micrograph=60, box=48, pixel_size=3.0, snr=0.5,
             views=4, seed=seed)


@pytest.fixture
def warp(tmp_path):
    folder = tmp_path / "warp"
    small_session(folder)
    return folder


def test_only_an_ab_initio_jobs_startup_cycles_rebalance_its_classes(warp, monkeypatch):
    """A seeded job's small classes are views it keeps, and refinement cycles end a job: only
    the startup cycles of an ab initio job may re-seed a class that held almost no particles
    (CycleParams.rebalance, live2d.engines.builtin.averages.reseed_starved)."""
    from live2d.engines.builtin import BuiltinEngine

    asked = []
    run_cycle = BuiltinEngine.run_cycle

    def noting(self, request, progress, cancel):
        asked.append(request.params.rebalance)
        return run_cycle(self, request, progress, cancel)

    monkeypatch.setattr(BuiltinEngine, "run_cycle", noting)
    session = Session(warp, settings=Settings(**SMALL), engine="builtin")
    try:
        assert session.run_job("abinit") and session.run_job("seeded")
        cycles = [(r.job_type, r.block) for r in session.history if r.block != "start"]
    finally:
        session.close()
    assert ("abinit", "startup") in cycles and ("seeded", "startup") in cycles
    assert asked == [cycle == ("abinit", "startup") for cycle in cycles]


def test_run_once_writes_every_cycle_and_the_history(warp, capsys):
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    out = warp / "classification"
    state = json.loads((out / "session.json").read_text())
    history = read_history(out)
    assert "history" not in state  # kept in history.jsonl, appended to
    assert [c.number for c in history] == [0, 1, 2, 3]
    assert [c.block for c in history] == ["start", "startup", "startup", "refinement"]
    assert [c.high_res for c in history] == [30.0, 30.0, 12.0, 12.0]
    assert state["job"] is None and state["settings"]["mode"] == "stream"
    for cycle in history:
        assert cycle.particles == 240 and cycle.engine.startswith("builtin")
        assert len(cycle.class_counts) == 4 and cycle.finished >= cycle.started
        with mrcfile.open(out / cycle.classes) as mrc:
            assert mrc.data.shape == (4, 48, 48) and mrc.voxel_size.x == pytest.approx(3.0)
            # Four 2D images, not one volume, for Scipion, RELION and cryoSPARC alike.
            assert mrc.is_image_stack() and mrc.header.mz == 1
            assert mrc.voxel_size.z == pytest.approx(3.0)
        assert len(list((out / cycle.thumbnails).glob("class_*.png"))) == 4
        assert len(cistem_star.read_star(out / cycle.star)) == 240
    assert sum(history[-1].class_counts) == 240  # the last cycle uses every particle
    assert history[0].class_table == ""  # random classes have no quality to speak of
    for cycle in history[1:]:  # each class's resolution estimate and score, every cycle
        table = json.loads((out / cycle.class_table).read_text())
        assert [c["number"] for c in table] == [1, 2, 3, 4]
        assert [c["score"] for c in table] == cycle.class_score
        assert all(c["reason"] and 0 <= c["score"] <= 1 for c in table)
        assert all(r is None or 6.0 <= r < 200 for r in cycle.class_resolution)
    assert not (out / "work").exists()
    assert cli_main(["status", str(warp)]) == 0
    table = capsys.readouterr().out
    assert "refinement" in table and "next job: stream" in table
    assert "classes of cycle 3" in table and "proposed good" in table
    assert "KB per particle" in table and "GB free" in table
    last = json.loads((out / history[-1].class_table).read_text())
    assert f"{last[0]['resolution']:.1f} Å" in table and last[0]["reason"] in table


def test_run_once_on_a_folder_warp_has_not_started_in_says_there_is_nothing_yet(tmp_path,
                                                                                capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["run", str(tmp_path / "empty"), "--once"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("live2d run: nothing to classify yet: no previous.settings in")
    assert err.endswith("(without --once, live2d run waits for it)")
    state = json.loads((tmp_path / "empty" / "classification" / "session.json").read_text())
    assert read_history(tmp_path / "empty" / "classification") == [] and state["job"] is None


def test_run_refuses_a_folder_that_does_not_exist_and_creates_nothing(tmp_path, capsys):
    assert cli_main(["run", str(tmp_path / "typo"), "--once"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("live2d run:") and "does not exist" in err and "\n" not in err
    assert not (tmp_path / "typo").exists()


def test_run_started_before_warp_waits_quietly_then_classifies(tmp_path):
    warp = tmp_path / "warp"
    warp.mkdir()
    command = [sys.executable, "-m", "live2d.cli", "run", str(warp), *SMALL_ARGS,
               "--poll-seconds", "0.5", "--first-job-at", "200"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    log_path = warp / "classification" / "live2d.log"
    try:
        _wait_for(lambda: log_path.exists() and "no previous.settings" in log_path.read_text(),
                  60)
        time.sleep(2.5)  # five polls of an empty folder
        assert process.poll() is None, "live2d run ended instead of waiting for Warp"
        small_session(warp)  # Warp starts: settings, stacks and star files appear
        _wait_for(lambda: len(read_history(warp / "classification")) >= 4, 180)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    log_text = log_path.read_text()
    assert log_text.count("no previous.settings") == 1  # said once, then polled quietly
    assert err.count("no previous.settings") == 1  # on the console too
    assert f"found Warp's settings in {warp}" in log_text
    assert "imported 240 particles" in log_text
    assert "Traceback" not in err


def test_run_once_refuses_when_export_is_off(warp, capsys):
    write_settings(warp, DoExport=False)
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 1
    assert "export" in capsys.readouterr().err.lower()


def test_run_once_with_too_few_particles_says_so(tmp_path, capsys):
    small_session(tmp_path / "warp", particles=60)
    assert cli_main(["run", str(tmp_path / "warp"), "--once", "--classes", "100"]) == 1
    assert "too few" in capsys.readouterr().err


def test_particles_picked_during_a_job_wait_for_the_next_one(tmp_path):
    """A job classifies the particles imported when it started, so its last cycle costs what
    its first did however fast particles arrive (a first job that took in every new particle
    at each cycle never ended in a busy session); the next job or update takes the rest."""
    warp = tmp_path / "warp"
    small_session(warp, particles=120)
    session = Session(warp, settings=Settings(**SMALL))

    def more_particles(event):
        if event["type"] == "cycle" and event["cycle"]["number"] == 0:
            small_session(warp, particles=240)  # Warp rewrites its star with 120 more rows

    session.add_listener(more_particles)
    assert session.run_job("abinit")
    assert session.store.count == 240  # imported during the job...
    assert [c.particles for c in session.history] == [120, 120, 120, 120]  # ...not in it
    assert len(cistem_star.read_star(session.output_dir / "cycle_003.star")) == 120
    assert session.run_job("stream")
    assert session.history[-1].particles == 240
    assert session.history[-1].new_particles == 120
    session.close()


def test_once_collection_pauses_the_particles_no_job_has_seen_are_classified(tmp_path):
    """The end of a session: fewer new particles than Additional particles before update, and
    (the first job) fewer than Particle count before starting, are classified all the same once
    nothing new has arrived for catch_up_after seconds; then no job runs without new ones."""
    warp = tmp_path / "warp"
    small_session(warp, particles=120)
    settings = {**SMALL, "first_job_at": 10_000, "update_every": 10_000,
                "catch_up_after": 1.5, "poll_seconds": 0.5}
    session = Session(warp, settings=Settings(**settings))
    jobs_done = []

    def more_particles_after_the_first_job(event):
        if event["type"] == "log" and "finished; the next automatic job" in event["line"]:
            jobs_done.append(time.monotonic())
            if len(jobs_done) == 1:
                small_session(warp, particles=180)  # 60 more, then the microscope stops

    session.add_listener(more_particles_after_the_first_job)
    stop = threading.Event()
    loop = threading.Thread(target=session.run_automatic, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 120
        while len(jobs_done) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # quiet for twice catch_up_after: nothing new, so no third job
    finally:
        stop.set()
        loop.join(timeout=60)
    jobs, spare = {}, []
    for cycle in session.history:
        if cycle.block == REVISIT_BLOCK:  # the idle engine re-visiting older batches
            spare.append(cycle)
        else:
            jobs[cycle.job] = cycle.particles
    assert jobs == {1: 120, 2: 180}
    assert all(cycle.particles == 180 and cycle.new_particles == 0 for cycle in spare)
    assert not session.spare_revisit_due()  # swept: nothing more runs without new particles
    assert session.state.jobs_started == 2 + len(spare)
    session.close()


def test_a_catch_up_job_that_is_given_up_does_not_start_again_without_new_particles(
        tmp_path, monkeypatch):
    warp = tmp_path / "warp"
    small_session(warp, particles=120)
    settings = {**SMALL, "first_job_at": 10_000, "update_every": 10_000,
                "catch_up_after": 0.5, "poll_seconds": 0.5}
    session = Session(warp, settings=Settings(**settings))

    def failing_cycle(job):
        raise EngineError("the engine failed")

    monkeypatch.setattr(session, "_run_cycle", failing_cycle)
    stop = threading.Event()
    loop = threading.Thread(target=session.run_automatic, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while session.job is None and time.monotonic() < deadline:
            time.sleep(0.1)
        while session.job is not None and time.monotonic() < deadline:  # retried, given up
            time.sleep(0.1)
        time.sleep(3.0)  # six more polls, still quiet
    finally:
        stop.set()
        loop.join(timeout=60)
    assert session.state.jobs_started == 1
    session.close()


class ClosedFolder(Importer):
    """A Warp folder whose polls say the source is closed, as a Scipion set's do once its
    stream closed."""

    def poll(self) -> ImportReport:
        report = super().poll()
        report.closed = True
        return report


def closed_folder_session(warp: Path, **settings) -> Session:
    return Session(warp, settings=Settings(**{**SMALL, **settings}),
                   particle_feed=lambda store: ClosedFolder(warp, store))


def test_a_closed_source_is_classified_whole_below_first_job_at_and_the_loop_ends(tmp_path):
    warp = tmp_path / "warp"
    small_session(warp, particles=120)  # fewer than first_job_at and update_every
    session = closed_folder_session(warp)
    assert session.run_automatic(raise_failures=True) is True
    assert {cycle.job: cycle.particles for cycle in session.history} == {1: 120}
    assert session.state.particles_at_last_job == 120 and session.state.jobs_started == 1
    assert session.run_automatic(raise_failures=True) is True  # nothing left: no job
    assert session.state.jobs_started == 1
    session.close()


def test_a_closed_source_with_fewer_particles_than_classes_is_an_error(tmp_path):
    warp = tmp_path / "warp"
    small_session(warp, particles=120)
    session = closed_folder_session(warp, classes=200)
    with pytest.raises(SessionError, match="closed with 120 particles, fewer than the 200"):
        session.run_automatic(raise_failures=True)
    session.close()


def test_with_raise_failures_a_failing_cycle_ends_the_loop(tmp_path, monkeypatch):
    warp = tmp_path / "warp"
    small_session(warp, particles=120)
    session = closed_folder_session(warp)

    def failing_cycle(job):
        raise EngineError("the engine failed")

    monkeypatch.setattr(session, "_run_cycle", failing_cycle)
    with pytest.raises(EngineError, match="the engine failed"):
        session.run_automatic(raise_failures=True)
    assert session.state.jobs_started == 1 and session.job.failures == 0
    session.close()


def test_hard_stop_keeps_the_last_good_cycle_and_a_restart_resumes(warp):
    session = Session(warp, settings=Settings(**SMALL))

    def stop_inside_second_cycle(event):
        if event["type"] == "progress" and event["progress"]["cycle"] == 1:
            session.request_stop(hard=True)

    session.add_listener(stop_inside_second_cycle)
    with pytest.raises(CycleCancelled):
        session.run_job("abinit")
    assert [c.number for c in session.history] == [0]
    assert session.job is not None and session.job.next_index == 1
    assert not (session.output_dir / "cycle_001.mrc").exists()
    session.remove_listener(stop_inside_second_cycle)
    session.close()

    resumed = Session(warp)  # a new process would see exactly this on disk
    assert resumed.run_job()
    assert [c.number for c in resumed.history] == [0, 1, 2, 3]
    assert [c.job for c in resumed.history] == [1, 1, 1, 1]
    resumed.close()


def test_soft_stop_ends_the_job_between_cycles(warp):
    session = Session(warp, settings=Settings(**SMALL))
    session.add_listener(lambda e: e["type"] == "cycle" and session.request_stop())
    assert session.run_job("abinit") is False
    assert len(session.history) == 1 and session.job.next_index == 1
    session.close()
    # Where it stopped and resumes, counted within the job (from 1) and as the session's cycle
    # number (cycle_NNN, from 0), so the two never seem to disagree.
    resumed = Session(warp)
    assert resumed.run_job()
    resumed.close()
    log = (warp / "classification" / "live2d.log").read_text()
    assert "cycle 0 (job 1, cycle 1 of 4) done" in log
    assert "job 1 stopped before its cycle 2 of 4 (session cycle 1)" in log
    assert "job 1 (abinit): resuming at its cycle 2 of 4 (session cycle 1)" in log
    assert "cycle 1 (job 1, cycle 2 of 4) done" in log


def test_seeded_and_refine_need_classes_and_otherwise_run_abinit(warp):
    session = Session(warp, settings=Settings(**SMALL))
    assert session.run_job("refine")
    assert session.history[0].job_type == "abinit"
    assert session.run_job("refine")
    refine = [c for c in session.history if c.job == 2]
    assert [c.block for c in refine] == ["refinement"] and refine[0].fraction == 1.0
    session.close()


def test_changed_warp_box_reimports_and_forces_abinit(warp):
    session = Session(warp, settings=Settings(**SMALL))
    assert session.run_job("abinit")
    generation = session.store.generation
    simulate(warp, particles=240, per_micrograph=60, box=56, pixel_size=3.0, snr=0.5, views=4)
    report = session.import_new()
    assert report.reimported and "box" in report.reason.lower()
    assert session.store.generation == generation + 1 and session.settings.mode == "abinit"
    assert session.latest_cycle() is None  # the old classes cannot seed the new particles
    assert session.start_job("refine").job_type == "abinit"
    assert session.run_job()
    assert session.history[-1].job_type == "abinit" and session.history[-1].particles == 240
    log_text = (session.output_dir / "live2d.log").read_text()
    assert "ab initio" in log_text
    session.close()


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigkill_during_a_cycle_then_restart_loses_and_duplicates_nothing(warp):
    out = warp / "classification"
    command = [sys.executable, "-m", "live2d.cli", "run", str(warp), "--once", *SMALL_ARGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    state_path = out / "session.json"

    def inside_second_cycle() -> bool:
        if not state_path.exists() or not (out / "work").exists():
            return False
        return len(read_history(out)) >= 1

    _wait_for(inside_second_cycle, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The restart reads only what the killed run left on disk: here, sparing a Python its
    # seconds of imports.
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    state = json.loads(state_path.read_text())
    history = read_history(out)
    assert [c.number for c in history] == [0, 1, 2, 3]
    assert len({c.job for c in history}) == 1 and state["job"] is None
    names = cistem_star.read_star(out / "particles.star")["ORIGNAME"]
    assert len(names) == names.nunique() == 240
    images = open_images(ParticleStore(out).images_path)  # Warp's stacks, read in place
    assert len(images) == 240 and images.usable().all()


def test_run_on_a_relion_star_classifies_its_particles_and_guesses_the_mask(warp):
    import starfile

    warp_star = starfile.read(next(warp.glob("allparticles_*.star")))
    optics = warp_star[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].iloc[:1]
    optics = optics.assign(rlnOpticsGroup=1, rlnImagePixelSize=3.0, rlnImageSize=48)
    particles = warp_star.drop(columns=["rlnVoltage", "rlnSphericalAberration",
                                        "rlnAmplitudeContrast", "rlnMagnification",
                                        "rlnDetectorPixelSize"]).assign(rlnOpticsGroup=1)
    starfile.write({"optics": optics, "particles": particles}, warp / "exported.star")
    assert cli_main(["run", str(warp), "--star", "exported.star", "--once", *SMALL_ARGS]) == 0
    out = warp / "classification"
    state = json.loads((out / "session.json").read_text())
    assert state["star"] == "exported.star"
    assert [c.particles for c in read_history(out)] == [240] * 4
    log = (out / "live2d.log").read_text()
    assert "RELION particle star" in log and "no particle diameter is known" in log


def test_old_per_particle_results_are_pruned_but_every_cycles_classes_stay(warp):
    session = Session(warp, engine="builtin",
                      settings=Settings(**{**SMALL, "keep_cycle_results": 1}))
    try:
        session.run_job()
        history = session.history
    finally:
        session.close()
    out = warp / "classification"
    assert [r.star_kept for r in history] == [False, False, False, True]  # the job's last kept
    assert [(out / r.star).exists() for r in history] == [False, False, False, True]
    assert all((out / r.classes).exists() and r.class_counts for r in history)
    # thumbnails of all but the latest go too (the server makes them again on request)
    assert [r.thumbnails_kept for r in history] == [False, False, False, True]
    assert [(out / r.thumbnails).exists() for r in history] == [False, False, False, True]
    assert cli_main(["export", str(warp), "--cycle", str(history[1].number), "--classes", "1",
                     "--to", str(warp / "x.star")]) == 1  # says it is not on disk any more


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_the_builtin_engine_reads_warps_stacks_in_place_without_a_copy(warp):
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    out = warp / "classification"
    store = ParticleStore(out)
    assert not store.copies_images and store.count == 240
    # No second copy of the pixels, and no empty stack that would show users 0 particles.
    assert not store.stack_path.exists()
    warp_stacks = folder_bytes(warp / "particles")
    assert folder_bytes(out) < 0.5 * warp_stacks
    images = open_images(store.images_path)
    table = store.read_table()
    first = table["ORIGNAME"].iloc[70]  # served from Warp's own stack, pixel for pixel
    index, stack = first.split("@")
    assert np.array_equal(images[[70]][0], mrcfile.read(warp / stack)[int(index) - 1])


def test_a_warp_stack_that_vanishes_after_import_is_left_out_and_said(warp):
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    out = warp / "classification"
    table = ParticleStore(out).read_table()
    gone = table["ORIGNAME"].iloc[0].split("@")[1]
    (warp / gone).unlink()
    assert cli_main(["run", str(warp), "--once", "--mode", "refine", *SMALL_ARGS]) == 0
    log = (out / "live2d.log").read_text()
    assert "60 particles are left out of this cycle" in log and gone in log
    latest = cistem_star.read_star(out / read_history(out)[-1].star)
    left_out = table["ORIGNAME"].str.endswith(gone).to_numpy()
    assert (latest["2DCLS"][left_out] <= 0).all() and (latest["2DCLS"][~left_out] > 0).all()


def test_switching_to_cistem_makes_the_copy_once(warp, tmp_path):
    from cistem_standin import make_bin_dir

    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    out = warp / "classification"
    assert not ParticleStore(out).copies_images
    bins = make_bin_dir(tmp_path / "bin")
    assert cli_main(["run", str(warp), "--once", "--mode", "refine", "--engine", "cistem",
                     "--cistem-bin", str(bins), *SMALL_ARGS]) == 0
    store = ParticleStore(out)
    assert store.copies_images and store.copied == 240
    with mrcfile.open(store.stack_path, header_only=True) as mrc:
        assert mrc.header.nz == 240
    names = store.read_table()["ORIGNAME"]
    with mrcfile.mmap(store.stack_path) as mrc:
        for i in (0, 130, 239):
            index, stack = names.iloc[i].split("@")
            assert np.array_equal(mrc.data[i], mrcfile.read(warp / stack)[int(index) - 1])
    assert "copied the 240 particles" in (out / "live2d.log").read_text()


@pytest.mark.parametrize("state", ["not json {", "[1, 2]", '{"warp_dir": "/x"}',
                                   '{"warp_dir": "/x", "settings": {}, "job": {"plan": 3}}'])
def test_a_session_json_no_version_wrote_is_refused_with_what_to_do(tmp_path, state):
    warp_dir = tmp_path / "warp"
    warp_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "session.json").write_text(state)
    with pytest.raises(SessionError, match=r"unreadable.*restore it or move it away"):
        Session(warp_dir, out, engine="builtin")
    assert read_state(OutputFolder(out)) is None  # readers (the Scipion summary) skip it


def test_a_job_killed_after_its_last_cycle_is_ended_on_restart_and_the_job_due_runs(warp,
                                                                                      monkeypatch):
    """A kill between a job's last published cycle and the record of its end leaves nothing to
    resume: `live2d run --once` then ends that job and runs the job due (here a streaming
    update taking in the particles that arrived), where it used to 'resume' an empty job."""
    session = Session(warp, engine="builtin", device="cpu", settings=Settings.from_dict(SMALL))
    assert session.run_job("abinit")

    class Killed(BaseException):
        pass

    def killed(*args):
        raise Killed

    small_session(warp, 300)
    # Killed as the job's end is being recorded (next_job_type is called there only).
    monkeypatch.setattr("live2d.session.next_job_type", killed)
    with pytest.raises(Killed):
        session.run_job("stream")
    session.close()
    monkeypatch.undo()
    # Its end was never recorded.
    assert read_state(OutputFolder(warp / "classification")).job is not None
    small_session(warp, 360)
    assert cli_main(["run", str(warp), "--once", *SMALL_ARGS]) == 0
    history = read_history(warp / "classification")
    assert history[-1].job_type == "stream" and history[-1].particles == 360
    assert history[-2].job != history[-1].job and history[-2].particles == 300
    assert read_state(OutputFolder(warp / "classification")).job is None
