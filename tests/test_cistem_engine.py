"""The cisTEM engine against stand-ins that enforce refine2d's and merge2d's contract."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cistem_standin import make_bin_dir, read_records, wait_for_records
from cistem_standin.formats import dump_size, read_dump
from cistem_standin.particles import make_particles

from live2d import cistem_star
from live2d.engines import cistem_programs
from live2d.engines.base import (
    CycleParams,
    CycleRequest,
    Progress,
)
from live2d.engines.cistem import CistemEngine, find_programs, first_last_particle_for_job
from live2d.engines.cistem_jobs import OutputSplitter, progress_bar_fraction
from live2d.engines.cistem_prompts import (
    REFINE2D_PROMPTS,
    Refine2DRun,
    check_params,
    merge2d_answers,
    refine2d_answers,
)
from live2d.errors import CycleCancelled, EngineError

PARAMS = CycleParams(pixel_size=4.0, mask_radius=40.0, high_res=8.0)
K = 3
N = 41  # odd, so the two slices differ in size: 1-21 and 22-41
BOX = 32


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> dict[bool, Path]:
    """Stand-in bin folders: True = built with OpenMP (25 prompts), False = without (24)."""
    root = tmp_path_factory.mktemp("bins")
    return {openmp: make_bin_dir(root / f"openmp_{openmp}", openmp) for openmp in (True, False)}


@pytest.fixture(scope="module")
def engines(bins) -> dict[bool, CistemEngine]:
    return {
        openmp: CistemEngine(find_programs(str(folder), True)) for openmp, folder in bins.items()
    }


@pytest.fixture(scope="module")
def particles(tmp_path_factory) -> tuple[Path, Path]:
    return make_particles(tmp_path_factory.mktemp("particles"), n=N, box=BOX)


@pytest.fixture(scope="module")
def start_classes_file(engines, particles, tmp_path_factory) -> Path:
    """Random-start classes made once, for the tests that need a cycle's input."""
    folder = tmp_path_factory.mktemp("start")
    request = _request(particles, folder, "start", classes_in=None)
    engines[True].start_classes(request, _ignore, threading.Event())
    return request.classes_out


@pytest.fixture
def records(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    monkeypatch.setenv("CISTEM_STANDIN_RECORD", str(folder))
    return folder


def _request(particles, folder: Path, name: str, classes_in: Path | None, **changes):
    stack, star = particles
    fields = dict(
        stack=stack,
        star_in=star,
        star_out=folder / f"{name}.star",
        classes_out=folder / f"{name}.mrc",
        params=PARAMS,
        n_classes=K,
        classes_in=classes_in,
        workdir=folder / "work",
        threads=2,
    )
    fields.update(changes)
    return CycleRequest(**fields)


def _ignore(_: Progress) -> None:
    return None


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary outputs beside the outputs, and anything left in the workdir."""
    hidden = [path.name for path in folder.iterdir() if path.name.startswith(".")]
    work = folder / "work"
    return hidden + ([path.name for path in work.iterdir()] if work.exists() else [])


# ---------------------------------------------------------------------------------- discovery


def _fake_probe(found: dict[str, Path], place: str) -> cistem_programs.CistemPrograms:
    return cistem_programs.CistemPrograms(
        refine2d=found["refine2d"],
        merge2d=found["merge2d"],
        refine2d_version="1.02",
        merge2d_version="1.00",
        library_version="test",
        openmp=True,
        found_in=place,
    )


def test_search_order_is_bin_dir_then_cistem_home_then_path(tmp_path, monkeypatch):
    monkeypatch.setattr(cistem_programs, "_probe", _fake_probe)
    given = make_bin_dir(tmp_path / "given")
    home_bin = make_bin_dir(tmp_path / "home" / "bin")
    on_path = make_bin_dir(tmp_path / "path")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CISTEM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(on_path))

    assert find_programs(str(given), True).refine2d == given / "refine2d"
    assert find_programs(str(empty), True).refine2d == home_bin / "refine2d"
    assert find_programs(None, True).merge2d == home_bin / "merge2d"
    monkeypatch.delenv("CISTEM_HOME")
    assert find_programs(str(empty), True).refine2d == on_path / "refine2d"


def test_missing_programs_error_names_every_place_and_program(tmp_path, monkeypatch):
    only_refine = make_bin_dir(tmp_path / "given", programs=("refine2d",))
    (tmp_path / "home" / "bin").mkdir(parents=True)
    (tmp_path / "path").mkdir()
    monkeypatch.setenv("CISTEM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))

    with pytest.raises(EngineError) as caught:
        find_programs(str(only_refine), True)
    message = str(caught.value)
    assert f"--cistem-bin {only_refine}: no merge2d" in message
    assert f"$CISTEM_HOME/bin = {tmp_path / 'home' / 'bin'}: no refine2d and no merge2d" in message
    assert f"PATH = {tmp_path / 'path'}: no refine2d and no merge2d" in message
    assert find_programs(str(only_refine), False) is None

    monkeypatch.delenv("CISTEM_HOME")
    with pytest.raises(EngineError, match="CISTEM_HOME is not set"):
        find_programs(None, True)


def test_probe_reads_versions_and_detects_both_builds(engines):
    assert engines[True].programs.openmp is True
    assert engines[False].programs.openmp is False
    assert engines[True].programs.merge2d_version == "1.00"
    assert engines[True].describe() == "cistem (refine2d 1.02, library 2.0.0-alpha-standin, OpenMP)"
    assert engines[False].describe().endswith("no OpenMP)")


def test_probe_rejects_a_refine2d_with_other_prompts(tmp_path, bins, monkeypatch):
    folder = tmp_path / "old"
    folder.mkdir()
    # cisTEM 1.0.0 asked for a Frealign .par file second.
    (folder / "refine2d").write_text(
        "#!/bin/sh\n"
        "printf '\\n\\n        **   Welcome to Refine2D   **\\n\\n'\n"
        "printf '             Version : 1.00\\n      Library Version : 1.0.0\\n'\n"
        "read a; printf '%-50s : %s\\n' 'Input particle images' \"$a\"\n"
        "read b; printf '%-50s : %s\\n' 'Input Frealign parameter file' \"$b\"\n"
        "exit 255\n"
    )
    (folder / "refine2d").chmod(0o755)
    (folder / "merge2d").symlink_to(bins[True] / "merge2d")
    monkeypatch.delenv("CISTEM_HOME", raising=False)

    with pytest.raises(EngineError, match="prompt 2 is 'Input Frealign parameter file'"):
        find_programs(str(folder), True)
    assert find_programs(str(folder), False) is None


# ------------------------------------------------------------------------ the prompt protocol


def _answers(particles, folder: Path, openmp: bool, **run_changes) -> list[str]:
    stack, star = particles
    run = dict(
        stack=stack,
        star_in=star,
        classes_out=folder / "classes.mrc",
        dump_file=folder / "dump.dat",
        first=1,
        last=N,
        n_classes_init=2,
    )
    run.update(run_changes)
    return refine2d_answers(Refine2DRun(**run), PARAMS, openmp)


def _run_refine2d(bin_dir: Path, answers: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "refine2d")],
        input="".join(f"{answer}\n" for answer in answers),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize("openmp", [True, False])
def test_standin_accepts_the_engines_answers_in_both_builds(bins, particles, tmp_path, openmp):
    answers = _answers(particles, tmp_path, openmp)
    assert len(answers) == (25 if openmp else 24)
    answers[8] = ".5"  # cisTEM reads ".5" as a float

    result = _run_refine2d(bins[openmp], answers, tmp_path)

    assert result.returncode == 0, result.stdout
    assert "Refine2D: Normal termination" in result.stdout
    assert f"{REFINE2D_PROMPTS[8]:<50} : .5\n" in result.stdout
    with mrcfile.open(tmp_path / "classes.mrc") as mrc:
        assert mrc.data.shape == (2, BOX, BOX)
    assert not (tmp_path / "dump.dat").exists()  # init mode dumps nothing


@pytest.mark.parametrize(
    ("number", "answer", "message"),
    [
        (10, "", "Error: Blank answer in scripted mode, exiting..."),
        (6, "two", "Error: Running as script, and answer is not recognized..."),
        (9, "+1", "Error: Running as script, and answer is not recognized..."),
        (9, "1.5", "Error: Number outside of acceptable range!"),
        (16, "0.001", "Error: Number outside of acceptable range!"),
        (25, "0", "Error: Number outside of acceptable range!"),
        (18, "maybe", "Error: Running as script, and answer is not recognized..."),
        (1, "/no/such/stack.mrc", "Error: File does not exist"),
    ],
)
def test_standin_rejects_a_bad_answer(bins, particles, tmp_path, number, answer, message):
    answers = _answers(particles, tmp_path, True)
    answers[number - 1] = answer

    result = _run_refine2d(bins[True], answers, tmp_path)

    assert result.returncode == 255
    assert message in result.stdout
    assert "Normal termination" not in result.stdout


def test_standin_with_openmp_fails_on_24_answers(bins, particles, tmp_path):
    result = _run_refine2d(bins[True], _answers(particles, tmp_path, False), tmp_path)
    assert result.returncode == 255
    assert f"{REFINE2D_PROMPTS[24]:<50} : \n Error: Blank answer" in result.stdout


def test_standin_dump_has_the_documented_layout(bins, particles, start_classes_file, tmp_path):
    answers = _answers(
        particles,
        tmp_path,
        True,
        n_classes_init=0,
        classes_in=start_classes_file,
        star_out=tmp_path / "slice.star",
        dump=True,
        first=5,
        last=14,
    )
    result = _run_refine2d(bins[True], answers, tmp_path)

    assert result.returncode == 0, result.stdout
    assert not (tmp_path / "classes.mrc").exists()  # dump mode: merge2d writes the classes
    assert (tmp_path / "dump.dat").stat().st_size == dump_size(BOX, K, K)
    dump = read_dump(str(tmp_path / "dump.dat"))
    assert (dump.box, dump.n_classes, dump.nonzero, dump.pixel_size) == (BOX, K, [0, 1, 2], 4.0)
    assert cistem_star.read_star(tmp_path / "slice.star")["POS"].tolist() == list(range(5, 15))


def test_merge2d_standin_needs_every_numbered_dump(bins, tmp_path):
    answers = merge2d_answers(tmp_path / "classes.mrc", tmp_path / "dump_.dat", 2)
    result = subprocess.run(
        [str(bins[True] / "merge2d")],
        input="".join(f"{answer}\n" for answer in answers),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"Error: Dump file not found: {tmp_path / 'dump_1.dat'}" in result.stdout


# ------------------------------------------------------------------------- answers and parsing


def test_answers_clamp_high_res_and_leave_auto_options_to_refine_mode(particles, tmp_path):
    params = CycleParams(pixel_size=4.0, mask_radius=40.0, high_res=5.0, auto_center=True)
    stack, star = particles
    init = Refine2DRun(stack, star, tmp_path / "c.mrc", tmp_path / "d.dat", 1, N, n_classes_init=K)
    refine = Refine2DRun(
        stack, star, tmp_path / "c.mrc", tmp_path / "d.dat", 1, N, classes_in=tmp_path / "in.mrc"
    )

    init_answers = refine2d_answers(init, params, openmp=True)
    refine_answers = refine2d_answers(refine, params, openmp=True)

    assert init_answers[12] == "8.0"  # high-res limit raised to 2 × pixel, as cisTEM does
    assert init_answers[2:4] == ["/dev/null", "/dev/null"]
    assert (init_answers[21], refine_answers[21]) == ("No", "Yes")  # auto-center
    assert init_answers[18] == "Yes"  # invert: Warp stacks have white protein
    assert init_answers[16] == "2" and init_answers[24] == "1"


@pytest.mark.parametrize(
    "change", [{"smoothing": 0.001}, {"fraction": 0.0}, {"fraction": 1.5}, {"mask_radius": np.nan}]
)
def test_out_of_range_parameters_are_refused_before_running(change):
    with pytest.raises(EngineError):
        check_params(CycleParams(**{**PARAMS.__dict__, **change}))


def test_first_last_particle_for_job_matches_cistem():
    assert [first_last_particle_for_job(10, job, 3) for job in (1, 2, 3)] == [
        (1, 4),
        (5, 7),
        (8, 10),
    ]
    for n in range(1, 30):
        for jobs in range(1, n + 1):
            ranges = [first_last_particle_for_job(n, job, jobs) for job in range(1, jobs + 1)]
            assert [p for first, last in ranges for p in range(first, last + 1)] == list(
                range(1, n + 1)
            )
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_output_splitter_separates_lines_from_progress_updates():
    splitter = OutputSplitter()
    output = (
        "Calculating new class averages...\n\n     0% [   ] ???h:??m:??s   \r"
        "    42% [====  ] 0h:00m28s  \r   100% [======] done! (0h:00m33s)\n"
        "\x1b[31mError: Å\x1b[0m"
    ).encode()
    events = []
    for at in range(0, len(output), 7):  # chunks split lines and the two bytes of Å
        events += splitter.feed(output[at : at + 7])
    events += splitter.feed(b"")

    assert events == [
        ("line", "Calculating new class averages..."),
        ("line", ""),
        ("update", "     0% [   ] ???h:??m:??s   "),
        ("update", "    42% [====  ] 0h:00m28s  "),
        ("line", "   100% [======] done! (0h:00m33s)"),
        ("line", "Error: Å"),
    ]
    assert [progress_bar_fraction(text) for _, text in events[2:5]] == [0.0, 0.42, 1.0]
    assert progress_bar_fraction("Total logP = 42") is None


# ----------------------------------------------------------------------------------- cycles


def _classes(path: Path) -> tuple[tuple[int, ...], float]:
    with mrcfile.open(path) as mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[np.newaxis]
        return data.shape, float(mrc.voxel_size.x)


def test_start_and_two_cycles_in_two_slices(engines, particles, tmp_path, records):
    engine = engines[True]
    progress: list[Progress] = []
    start = _request(particles, tmp_path, "c0", classes_in=None)

    started = engine.start_classes(start, progress.append, threading.Event())

    assert started.star is None and started.class_counts == [0] * K
    assert _classes(start.classes_out) == ((K, BOX, BOX), 4.0)
    assert not start.star_out.exists()

    first = _request(particles, tmp_path, "c1", classes_in=start.classes_out)
    result = engine.run_cycle(first, progress.append, threading.Event())

    table = cistem_star.read_star(first.star_out)
    assert table["POS"].tolist() == list(range(1, N + 1))
    assert table["2DCLS"].between(1, K).all()  # fraction 1: every particle classified
    assert result.class_counts == np.bincount(table["2DCLS"] - 1, minlength=K).tolist()
    assert result.particles_processed == N
    assert _classes(first.classes_out) == ((K, BOX, BOX), 4.0)
    assert "merge2d: Merge2D: Normal termination" in result.log
    assert progress[-1].fraction == 1.0 and progress[-1].stage == "merging"
    assert {"classifying", "merging"} <= {p.stage for p in progress}

    half = CycleParams(**{**PARAMS.__dict__, "fraction": 0.5})
    second = _request(
        particles,
        tmp_path,
        "c2",
        classes_in=first.classes_out,
        star_in=first.star_out,
        params=half,
    )
    engine.run_cycle(second, progress.append, threading.Event())

    again = cistem_star.read_star(second.star_out)
    assert again["POS"].tolist() == list(range(1, N + 1))
    unused = again["2DCLS"] < 0
    assert 0 < unused.sum() < N
    assert (-again["2DCLS"][unused] == table["2DCLS"][unused]).all()

    refine_runs = read_records(records, "Refine2D")
    assert len(refine_runs) == 5
    assert len({run["seed_second"] for run in refine_runs}) == 5  # distinct random streams
    assert all(run["unread_answers"] == 0 and run["answers"][-1] == "1" for run in refine_runs)
    slices = refine_runs[1:3]
    assert [(run["first"], run["last"]) for run in slices] == [(1, 21), (22, 41)]
    folder = Path(slices[0]["dump_file"]).parent
    assert [run["dump_file"] for run in slices] == [
        str(folder / "dump_1.dat"),
        str(folder / "dump_2.dat"),
    ]
    merges = read_records(records, "Merge2D")
    assert (merges[0]["seed"], merges[0]["count"]) == (str(folder / "dump_.dat"), 2)
    assert _leftovers(tmp_path) == []


def test_cycle_with_a_build_without_openmp(
    engines, particles, start_classes_file, tmp_path, records
):
    request = _request(particles, tmp_path, "c1", classes_in=start_classes_file, threads=3)

    engines[False].run_cycle(request, _ignore, threading.Event())

    assert len(cistem_star.read_star(request.star_out)) == N
    runs = read_records(records, "Refine2D")
    assert [len(run["answers"]) for run in runs] == [24, 24, 24]
    assert all(run["unread_answers"] == 0 and not run["openmp"] for run in runs)
    assert [(run["first"], run["last"]) for run in runs] == [(1, 14), (15, 28), (29, 41)]


@pytest.mark.parametrize(
    ("failure", "only_first", "expected"),
    [
        (
            "refine2d:exit",
            "22",
            [
                "refine2d slice 2/2 (particles 22-41)",
                "exit status 3",
                "Stand-in: exiting with status 3 as asked",
            ],
        ),
        (
            "refine2d:error",
            "1",
            ["refine2d slice 1/2 (particles 1-21)", "printed 'Error: stand-in failure requested'"],
        ),
        (
            "refine2d:no-output",
            "22",
            [
                "refine2d slice 2/2 (particles 22-41)",
                "without writing its star file",
                "Normal termination",
            ],
        ),
        (
            "merge2d:no-output",
            "",
            [
                "merge2d (2 dump files)",
                "without writing its class averages",
                "Merge2D: Normal termination",
            ],
        ),
    ],
)
def test_failures_name_the_program_and_slice_and_keep_the_previous_outputs(
    engines, particles, start_classes_file, tmp_path, monkeypatch, failure, only_first, expected
):
    monkeypatch.setenv("CISTEM_STANDIN_FAIL", failure)
    monkeypatch.setenv("CISTEM_STANDIN_FAIL_FIRST", only_first)
    request = _request(particles, tmp_path, "c1", classes_in=start_classes_file)
    request.star_out.write_text("previous star")
    request.classes_out.write_bytes(b"previous classes")

    with pytest.raises(EngineError) as caught:
        engines[True].run_cycle(request, _ignore, threading.Event())

    for text in expected:
        assert text in str(caught.value)
    assert request.star_out.read_text() == "previous star"
    assert request.classes_out.read_bytes() == b"previous classes"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", ["refine2d:hang", "refine2d:hang-ignore-term"])
def test_cancel_ends_every_slice_within_seconds(
    engines, particles, start_classes_file, tmp_path, records, monkeypatch, failure
):
    monkeypatch.setenv("CISTEM_STANDIN_FAIL", failure)
    request = _request(particles, tmp_path, "c1", classes_in=start_classes_file)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            engines[True].run_cycle(request, _ignore, cancel)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    pids = [run["pid"] for run in wait_for_records(records, "Refine2D", 2)]
    assert len(pids) == 2

    cancel.set()
    stopped_at = time.monotonic()
    worker.join(timeout=15)

    assert not worker.is_alive()
    assert time.monotonic() - stopped_at < 8  # SIGTERM, 2 s grace, SIGKILL
    assert len(outcome) == 1 and isinstance(outcome[0], CycleCancelled)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not request.star_out.exists() and not request.classes_out.exists()
    assert _leftovers(tmp_path) == []


def test_cancel_before_the_cycle_starts_runs_nothing(
    engines, particles, start_classes_file, tmp_path, records
):
    cancel = threading.Event()
    cancel.set()
    request = _request(particles, tmp_path, "c1", classes_in=start_classes_file)

    with pytest.raises(CycleCancelled):
        engines[True].run_cycle(request, _ignore, cancel)

    assert read_records(records, "Refine2D") == []
    assert _leftovers(tmp_path) == []


def test_request_that_does_not_fit_is_refused_before_running(
    engines, particles, start_classes_file, tmp_path
):
    wrong_k = _request(particles, tmp_path, "c1", classes_in=start_classes_file, n_classes=K + 1)
    with pytest.raises(EngineError, match="expected 4 × 32×32"):
        engines[True].run_cycle(wrong_k, _ignore, threading.Event())
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ streaming updates
def test_an_update_whose_refine2d_writes_no_dump_publishes_nothing_and_runs_again(
        tmp_path, monkeypatch):
    """A fault the real programs cannot be made to show: one batch's refine2d ends well
    without its dump. The update fails naming it, the kept dumps and the latest classes
    stay as they were, and the same update runs once refine2d works again."""
    from test_streaming import grow

    from live2d.output_folder import batch_dump_name
    from live2d.schedule import Settings
    from live2d.session import Session

    settings = Settings(classes=3, particles_per_class=40, startup_cycles=1,
                        refinement_cycles=1, high_res_initial=20.0, high_res_final=15.0,
                        threads=2, first_job_at=200, stream_every=100, stream_revisit=0.0)
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=settings, engine="cistem",
                      cistem_bin=str(make_bin_dir(tmp_path / "bin")))
    assert session.run_job("abinit")
    assert session.run_job()
    first = session.history[-1]
    assert first.job_type == "stream"
    stream = session.output_dir / "stream"
    kept = sorted(p.name for p in stream.iterdir())
    assert {batch_dump_name(a, c) for a, _, c in first.batches} <= set(kept)
    grow(warp, 300)
    monkeypatch.setenv("CISTEM_STANDIN_FAIL", "refine2d:no-output")
    monkeypatch.setenv("CISTEM_STANDIN_FAIL_FIRST", "241")  # the new batch's slice
    with pytest.raises(EngineError, match="dump file"):
        session.run_job()
    assert session.history[-1] == first and sorted(p.name for p in stream.iterdir()) == kept
    monkeypatch.delenv("CISTEM_STANDIN_FAIL")
    monkeypatch.delenv("CISTEM_STANDIN_FAIL_FIRST")
    assert session.run_job()
    latest = session.history[-1]
    assert latest.job_type == "stream" and sum(latest.class_counts) == latest.particles == 300
    session.close()
