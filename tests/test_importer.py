"""Incremental import from a Warp folder that Warp keeps rewriting."""

import mrcfile
import numpy as np
import pytest

from live2d.importer import STACK_WAIT_POLLS, Importer
from live2d.simulate import MODEL, simulate, write_settings
from live2d.store import ParticleStore
from live2d.warp import WarpFolderError

SIM = {"per_micrograph": 20, "box": 32, "pixel_size": 2.0, "views": 2}
STAR = f"allparticles_{MODEL}.star"


def stack(warp, index: int):
    return warp / "particles" / f"FoilHole_{1000 + index:05d}_Data_{MODEL}.mrcs"


@pytest.fixture
def warp(tmp_path):
    folder = tmp_path / "warp"
    simulate(folder, particles=40, **SIM)
    return folder


def importer_for(warp, tmp_path, which="allparticles"):
    return Importer(warp, ParticleStore(tmp_path / "out"), which=which)


def assert_store_matches_warp(importer, warp, expected: int):
    table = importer.store.read_table()
    assert len(table) == expected and table["ORIGNAME"].is_unique
    first = table["ORIGNAME"].iloc[-1]
    index, name = first.split("@")
    with mrcfile.open(warp / name) as mrc, mrcfile.mmap(importer.store.stack_path) as store:
        assert np.array_equal(store.data[-1], mrc.data[int(index) - 1])
    assert table["DF1"].gt(1000).all() and table["PSIZE"].eq(2.0).all()


def test_particles_are_imported_as_warp_writes_them(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    report = importer.poll()
    assert (report.new_particles, report.total, report.reimported) == (40, 40, False)
    assert importer.poll().new_particles == 0
    simulate(warp, particles=80, **SIM)
    report = importer.poll()
    assert (report.new_particles, report.total) == (40, 80)
    assert_store_matches_warp(importer, warp, 80)


def test_a_restart_carries_on_without_duplicates(warp, tmp_path):
    importer_for(warp, tmp_path).poll()
    (tmp_path / "out" / "import.json").unlink()  # progress lost: the store's names still guard
    simulate(warp, particles=60, **SIM)
    importer = importer_for(warp, tmp_path)
    report = importer.poll()
    assert report.new_particles == 20 and not report.reimported
    assert_store_matches_warp(importer, warp, 60)


def test_a_half_written_stack_is_waited_for_then_imported(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    simulate(warp, particles=80, **SIM)
    full = stack(warp, 2).read_bytes()
    stack(warp, 2).write_bytes(full[: len(full) // 2])
    report = importer.poll()
    assert report.new_particles == 0 and report.waiting_on.endswith(stack(warp, 2).name)
    assert importer.store.count == 40  # nothing of the half stack, nor of the one after it
    stack(warp, 2).write_bytes(full)
    report = importer.poll()
    assert report.new_particles == 40 and report.waiting_on is None
    assert_store_matches_warp(importer, warp, 80)


def test_a_stack_that_never_completes_is_skipped_after_bounded_retries(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    simulate(warp, particles=80, **SIM)
    stack(warp, 2).unlink()
    reports = [importer.poll() for _ in range(STACK_WAIT_POLLS)]
    assert reports[0].new_particles == 0
    assert reports[-1].new_particles == 20 and "skipping the 20 particles" in " ".join(
        reports[-1].messages)
    assert importer.store.count == 60


def test_warp_rewriting_its_star_identically_is_not_a_change(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    star = warp / STAR
    star.write_text(star.read_text())
    report = importer.poll()
    assert not report.reimported and report.new_particles == 0


def test_a_star_caught_mid_rewrite_is_waited_for(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    star = warp / STAR
    text = star.read_text()
    star.write_text(text[: len(text) // 3])
    report = importer.poll()
    assert not report.reimported and importer.store.count == 40
    assert "waiting" in " ".join(report.messages)
    simulate(warp, particles=60, **SIM)
    report = importer.poll()
    assert not report.reimported and report.new_particles == 20


def test_changed_imported_rows_force_a_full_reimport(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    generation = importer.store.generation
    star = warp / STAR
    lines = star.read_text().splitlines(keepends=True)
    body = [i for i, line in enumerate(lines) if "@particles" in line]
    del lines[body[3]]  # Warp's filters dropped a particle that was already imported
    star.write_text("".join(lines))
    report = importer.poll()
    assert report.reimported and "changed" in report.reason and "ab initio" in report.reason
    assert report.total == 39 and importer.store.generation == generation + 1


@pytest.mark.parametrize("change, word", [({"BoxSize": 36}, "box size"),
                                          ({"MinimumScore": 0.5}, "threshold"),
                                          ({"ModelPath": "C:\\models\\Other"}, "model")])
def test_a_settings_change_resets_the_store_and_says_why(warp, tmp_path, change, word):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    write_settings(warp, **change)
    report = importer.poll()
    assert report.reimported and word in report.reason
    assert importer.store.generation == 1


def test_switching_to_good_particles_reimports(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll()
    importer.which = "goodparticles"
    report = importer.poll()
    assert report.reimported and "particle file" in report.reason and report.total == 40


def test_unreadable_settings_wait_and_a_vanished_folder_does_not_end_a_session(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    with pytest.raises(WarpFolderError):
        Importer(tmp_path / "nowhere", ParticleStore(tmp_path / "other")).poll()
    importer.poll()
    settings = warp / "previous.settings"
    good = settings.read_bytes()
    settings.write_bytes(good[:200])
    report = importer.poll()
    assert report.total == 40 and "next poll" in " ".join(report.messages)
    settings.write_bytes(good)
    moved = warp.rename(warp.with_name("hidden"))
    assert "next poll" in " ".join(importer.poll().messages)
    moved.rename(warp)
    simulate(warp, particles=60, **SIM)
    assert importer.poll().new_particles == 20


def test_a_malformed_star_imports_nothing_and_says_so(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    star = warp / STAR
    star.write_text(star.read_text().replace("rlnDefocusV", "rlnSomethingElse"))
    report = importer.poll()
    assert report.total == 0 and "rlnDefocusV" in " ".join(report.messages)
