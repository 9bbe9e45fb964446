"""Exporting the good classes' particles: RELION's own programs read what Live2D writes."""

import json
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from live2d.cli import main as cli_main
from live2d.errors import SelectionError
from live2d.evaluate import comparable, correlation
from live2d.history import read_history
from live2d.session import Session
from live2d.simulate import simulate

SMALL = ["--classes", "4", "--particles-per-class", "40", "--startup-cycles", "2",
         "--refinement-cycles", "1", "--high-res-initial", "30", "--high-res-final", "12",
         "--threads", "1"]
RELION = shutil.which("relion_stack_create")


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory):
    warp = tmp_path_factory.mktemp("export") / "warp"
    simulate(warp, particles=240, per_micrograph=60, box=48, pixel_size=3.0, snr=2.0, views=4)
    assert cli_main(["run", str(warp), "--once", *SMALL]) == 0
    return warp


def latest(warp):
    return read_history(warp / "classification")[-1]


def test_export_writes_a_relion_31_star_of_the_chosen_classes(session_dir, tmp_path, capsys):
    record = latest(session_dir)
    populated = [k + 1 for k, n in enumerate(record.class_counts) if n]
    out = tmp_path / "good.star"
    assert cli_main(["export", str(session_dir), "--classes",
                     ",".join(map(str, populated[:2])), "--to", str(out),
                     "--whole-classes"]) == 0
    assert f"to {out}" in capsys.readouterr().out
    blocks = starfile.read(out, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert optics["rlnImagePixelSize"][0] == 3.0 and optics["rlnImageSize"][0] == 48
    assert optics["rlnVoltage"][0] == 300.0
    counts = record.class_counts
    assert len(particles) == sum(counts[k - 1] for k in populated[:2])
    assert set(particles["rlnClassNumber"]) == set(populated[:2])
    for column in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                   "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"):
        assert column in particles
    stack = particles["rlnImageName"][0].split("@")[1]
    assert os.path.isabs(stack) and stack.startswith(str(session_dir / "particles"))
    assert particles["rlnMicrographName"].str.endswith(".tif").all()
    assert (particles["rlnCoordinateX"] > 0).all()  # Warp's pick coordinates, kept
    assert cli_main(["status", str(session_dir)]) == 0
    assert f"particles of cycle {record.number}" in capsys.readouterr().out


@pytest.mark.skipif(RELION is None, reason="RELION is not installed (apt-get install relion)")
def test_relion_applies_the_exported_alignment_and_gets_live2ds_averages(session_dir, tmp_path):
    record = latest(session_dir)
    populated = [k + 1 for k, n in enumerate(record.class_counts) if n > 20]
    project = tmp_path / "relion_project"
    project.mkdir()
    assert cli_main(["export", str(session_dir), "--classes", ",".join(map(str, populated)),
                     "--to", str(project / "good.star"), "--relative-to", str(project)]) == 0
    names = starfile.read(project / "good.star", always_dict=True)["particles"]["rlnImageName"]
    assert not os.path.isabs(names[0].split("@")[1])  # relative to the project
    for transform, name in ((["--apply_transformation"], "aligned"), ([], "raw")):
        run = subprocess.run([RELION, "--i", "good.star", "--o", name, *transform], cwd=project,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    classes = starfile.read(project / "good.star", always_dict=True)["particles"][
        "rlnClassNumber"].to_numpy()
    averages = torch.from_numpy(mrcfile.read(session_dir / "classification" /
                                             record.classes).copy())
    for k in populated:
        scores = {}
        for name in ("aligned", "raw"):
            mean = torch.from_numpy(mrcfile.read(project / f"{name}.mrcs")[classes == k]
                                    .mean(axis=0)[None].copy())
            scores[name] = float(correlation(comparable(mean, 3.0, 20.0, 50.0),
                                             comparable(averages[k - 1][None], 3.0, 20.0, 50.0)))
        # Wrong signs of psi or shifts would blur RELION's means like untransformed ones.
        assert scores["aligned"] > 0.7 and scores["aligned"] > scores["raw"] + 0.2, scores


def test_auto_exports_the_proposal_with_the_marks_over_it(session_dir, tmp_path):
    session = Session(session_dir, engine="builtin")
    try:
        record = latest(session_dir)
        populated = [k + 1 for k, n in enumerate(record.class_counts) if n]
        summary = session.selection.mark_classes({populated[0]: "good", populated[1]: "junk"})
        assert populated[0] in summary["classes"] and populated[1] not in summary["classes"]
        assert summary["marks"] == {str(populated[0]): "good", str(populated[1]): "junk"}
        with pytest.raises(SelectionError, match="there is no class 9"):
            session.selection.mark_classes({9: "good"})
        reopened = Session(session_dir, engine="builtin").selection.summary()
        assert reopened["marks"] == summary["marks"]  # persisted
    finally:
        session.close()
    out = tmp_path / "auto.star"
    assert cli_main(["export", str(session_dir), "--to", str(out)]) == 0
    exported = set(starfile.read(out, always_dict=True)["particles"]["rlnClassNumber"])
    assert exported == set(summary["classes"])


@pytest.mark.parametrize("arguments, words", [
    (["--classes", "9"], "no class 9"),
    (["--cycle", "77"], "no classified cycle 77"),
    (["--classes", "1", "--to", "/proc/forbidden/x.star"], "cannot write"),
])
def test_bad_exports_say_why_and_write_nothing(session_dir, tmp_path, capsys, arguments, words):
    out = tmp_path / "x.star"
    argv = ["export", str(session_dir), "--to", str(out), *arguments]
    if "--to" in arguments:
        argv = ["export", str(session_dir), *arguments]
    assert cli_main(argv) == 1
    assert words in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_cycle_not_on_disk_and_an_empty_selection_are_refused(session_dir, tmp_path):
    from live2d.export import export_particles

    output = session_dir / "classification"
    record = latest(session_dir)
    empty = [k + 1 for k, n in enumerate(record.class_counts) if not n]
    if empty:
        with pytest.raises(SelectionError, match="hold no particles"):
            export_particles(output, tmp_path / "e.star", empty)
    first = read_history(output)[1]
    star = output / first.star
    star.rename(star.with_suffix(".away"))
    try:
        with pytest.raises(SelectionError, match="not on disk"):
            export_particles(output, tmp_path / "e.star", [1], cycle=first.number)
    finally:
        star.with_suffix(".away").rename(star)
    assert not list(tmp_path.iterdir())
    assert np.isfinite(record.class_counts).all()


def test_an_export_is_as_readable_as_the_umask_allows(session_dir, tmp_path):
    """A cryoSPARC service account or the group reads the star, as any file the user writes."""
    out = tmp_path / "shared.star"
    previous = os.umask(0o022)
    try:
        assert cli_main(["export", str(session_dir), "--classes", "1,2", "--to", str(out)]) == 0
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("kind", ["fifo", "folder", "link to a fifo"])
def test_export_replaces_only_a_regular_file(session_dir, tmp_path, capsys, kind):
    out = tmp_path / "x.star"
    if kind == "folder":
        out.mkdir()
    else:
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        if kind == "fifo":
            fifo.rename(out)
        else:
            out.symlink_to(fifo)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli_main(["export", str(session_dir), "--classes", "1", "--to", str(out)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # untouched, no temp file left
    assert out.is_dir() if kind == "folder" else out.is_fifo()
    regular = tmp_path / "old.star"
    regular.write_text("an earlier export")
    assert cli_main(["export", str(session_dir), "--classes", "1", "--to", str(regular)]) == 0
    assert "rlnImageName" in regular.read_text()


def test_an_empty_relative_to_is_refused(session_dir, tmp_path, capsys):
    out = tmp_path / "x.star"
    with pytest.raises(SystemExit):
        cli_main(["export", str(session_dir), "--classes", "1", "--to", str(out),
                  "--relative-to", ""])
    assert "--relative-to" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def strict_curation(session_dir):
    """The session's curation cut at 1 robust SD, so that it leaves out some of these clean
    particles (its setting restored after the test)."""
    path = session_dir / "classification" / "session.json"
    original = path.read_text(encoding="utf-8")
    state = json.loads(original)
    state["settings"]["curation_cut"] = 1.0
    path.write_text(json.dumps(state), encoding="utf-8")
    yield
    path.write_text(original, encoding="utf-8")


def test_export_leaves_out_exactly_the_curated_particles(session_dir, tmp_path, capsys,
                                                         strict_curation):
    from live2d.curation import curate_cycle
    from live2d.history import particle_table

    output = session_dir / "classification"
    record = latest(session_dir)
    populated = [k + 1 for k, n in enumerate(record.class_counts) if n >= 20]
    classes = ",".join(map(str, populated))
    curated, whole = tmp_path / "curated.star", tmp_path / "whole.star"
    assert cli_main(["export", str(session_dir), "--classes", classes, "--to",
                     str(curated)]) == 0
    said = capsys.readouterr().out
    assert cli_main(["export", str(session_dir), "--classes", classes, "--to", str(whole),
                     "--whole-classes"]) == 0
    kept = starfile.read(curated, always_dict=True)["particles"]
    every = starfile.read(whole, always_dict=True)["particles"]
    table = particle_table(output, record)
    chosen = table["2DCLS"].isin(populated).to_numpy()
    keep = curate_cycle(output, record, 1.0, table).keep
    assert len(every) == chosen.sum()
    assert 0 < len(kept) == (chosen & keep).sum() < len(every)
    # the rows differ by the curated particles exactly, and those are what was left out
    left_out = set(every["rlnImageName"]) - set(kept["rlnImageName"])
    assert set(kept["rlnImageName"]) <= set(every["rlnImageName"])
    assert len(left_out) == (chosen & ~keep).sum()
    assert f"{len(left_out)} more left out as junk by the curation" in said
    assert cli_main(["status", str(session_dir)]) == 0
    status = capsys.readouterr().out
    shown = 0
    for curation in curate_cycle(output, record, 1.0, table).classes:
        # the proposed good classes, where the curation applies
        if curation.share_cut is not None and record.class_score[curation.number - 1] >= 0.5:
            assert f"{curation.kept} of {curation.particles} kept" in status
            shown += 1
    assert shown and "kept by the particle curation" in status


def test_a_session_that_does_not_curate_exports_and_shows_whole_classes(
        session_dir, tmp_path, capsys, strict_curation):
    path = session_dir / "classification" / "session.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    state["settings"]["curate_particles"] = False
    path.write_text(json.dumps(state), encoding="utf-8")  # the fixture puts it back
    record = latest(session_dir)
    populated = [k + 1 for k, n in enumerate(record.class_counts) if n >= 20]
    out = tmp_path / "all.star"
    assert cli_main(["export", str(session_dir), "--classes", ",".join(map(str, populated)),
                     "--to", str(out)]) == 0
    particles = starfile.read(out, always_dict=True)["particles"]
    assert len(particles) == sum(record.class_counts[k - 1] for k in populated)
    assert "left out as junk" not in capsys.readouterr().out
    assert cli_main(["status", str(session_dir)]) == 0
    assert " kept (cut:" not in capsys.readouterr().out


def test_yield_and_forecast_count_the_particles_the_curation_keeps(session_dir,
                                                                   strict_curation):
    from live2d.collection_yield import score_particles
    from live2d.curation import curate_cycle
    from live2d.forecast import forecast
    from live2d.history import particle_table
    from live2d.selection import SelectionState, selected
    from live2d.store import read_committed_table

    output = session_dir / "classification"
    record = latest(session_dir)
    store = read_committed_table(output)
    table = particle_table(output, record)
    chosen = table["2DCLS"].isin(selected(record, SelectionState.load(output))).to_numpy()
    keep = curate_cycle(output, record, 1.0, table).keep
    curated = score_particles(output, store, record)
    assert curated.curated and curated.good.sum() == (chosen & keep).sum() < chosen.sum()
    times = np.full(len(store), np.nan)
    assert "good particles: those the particle curation keeps" in \
        forecast(curated, times).lines()[0]

    path = output / "session.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    state["settings"]["curate_particles"] = False
    path.write_text(json.dumps(state), encoding="utf-8")  # the fixture puts it back
    whole = score_particles(output, store, record)
    assert not whole.curated and whole.good.sum() == chosen.sum()
    assert "good particles: whole classes, no particle curation" in \
        forecast(whole, times).lines()[0]


def test_an_older_streaming_update_thinned_is_refused_naming_the_cycles_kept(tmp_path, capsys):
    """Its particles' rows went with a later update's re-visit, and its averages with the
    thinning: the export says so, and which cycles it can export instead."""
    from live2d.history import CycleHistory, CycleRecord
    from live2d.output_folder import STREAM_SUMS, batch_rows_name

    folder = tmp_path / "classification"
    folder.mkdir()
    (folder / "session.json").write_text(json.dumps({"warp_dir": str(tmp_path)}))
    history = CycleHistory(folder)
    for number in range(10):  # an ab initio job (0-3), then a streaming update a minute
        streamed = number >= 4
        history.append(CycleRecord(
            number=number, job=max(1, number - 2), job_type="stream" if streamed else "abinit",
            block="stream" if streamed else "refinement", block_cycle=1, job_cycle=1,
            job_cycles=1 if streamed else 4, high_res=12.0, fraction=1.0, particles=100,
            class_counts=[60, 40], started=60.0 * number, finished=60.0 * number + 50,
            engine="builtin (test)", generation=0, particles_per_second=100.0,
            classes=f"cycle_{number:03d}.mrc", star="" if streamed else f"cycle_{number:03d}.star",
            thumbnails=f"thumbnails/cycle_{number:03d}",
            batches=[[0, 100, number]] if streamed else []))
        (folder / f"cycle_{number:03d}.mrc").write_bytes(b"averages")
        history.prune_results(keep=2)
        history.thin_averages(keep=2)
    (folder / "cycle_003.star").write_text("star")  # the job's last: kept
    (folder / STREAM_SUMS).mkdir()
    (folder / STREAM_SUMS / batch_rows_name(0, 9)).write_text("rows")  # the latest update's
    assert [r.number for r in history.records if not r.averages_kept] == [4, 5, 6, 7]
    out = tmp_path / "x.star"
    assert cli_main(["export", str(folder), "--cycle", "5", "--classes", "1",
                     "--to", str(out)]) == 1
    said = capsys.readouterr().err
    assert "cycle 5's particles are not on disk any more" in said
    assert "The class averages of cycle 5 (a streaming update) were thinned" in said
    assert "nearest kept: cycle 3" in said
    assert said.rstrip().endswith("Cycles whose particles are kept: 3, 9")
    assert not out.exists()
