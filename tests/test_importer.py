"""Incremental import from a Warp folder that Warp keeps rewriting."""

import json
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from warp_fixtures import WarpFolder

from live2d.importer import Importer
from live2d.sources import base as sources_base
from live2d.sources import warp_folder as warp_folder_source
from live2d.sources.base import STACK_WAIT_POLLS
from live2d.store import ParticleStore
from live2d.warp import WarpFolderError

TESTS = Path(__file__).parent


@pytest.fixture
def warp(tmp_path) -> WarpFolder:
    folder = WarpFolder(tmp_path / "warp", box=32, pixel_size=2.0, per_micrograph=20)
    folder.add_micrographs(2)
    return folder


def importer_for(warp: WarpFolder, tmp_path, which="allparticles") -> Importer:
    return Importer(warp.folder, ParticleStore(tmp_path / "out"), which=which)


def assert_store_matches_warp(store: ParticleStore, warp: WarpFolder,
                              skipped: tuple[int, ...] = (), which="allparticles") -> None:
    """The store holds exactly Warp's rows, in Warp's order, once each, with their pixels."""
    expected = [line.split()[12] for line in warp.star_text(which).splitlines()
                if "@particles/" in line]
    expected = [n for n in expected if not any(warp.stack_name(m) in n for m in skipped)]
    table = store.read_table()
    assert table["ORIGNAME"].tolist() == expected
    assert table["POS"].tolist() == list(range(1, len(expected) + 1))
    assert table["DF1"].gt(1000).all() and table["PSIZE"].eq(warp.pixel_size).all()
    with mrcfile.mmap(store.stack_path) as mrc:
        assert mrc.data.shape == (len(expected), warp.box, warp.box)
        for i in (0, len(expected) // 2, len(expected) - 1):
            index, stack = expected[i].split("@")
            micrograph = int(stack.split("_")[1])
            assert np.array_equal(mrc.data[i], warp.images(micrograph)[int(index) - 1])


def set_image_count(stack: Path, nz: int) -> None:
    with open(stack, "r+b") as handle:
        handle.seek(8)
        handle.write(struct.pack("<i", nz))


def test_particles_are_imported_as_warp_writes_them(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    report = importer.poll_reimporting()
    assert (report.new_particles, report.total, report.reimported) == (40, 40, False)
    assert importer.poll_reimporting().new_particles == 0
    warp.add_micrographs(2)
    report = importer.poll_reimporting()
    assert (report.new_particles, report.total) == (40, 80)
    assert_store_matches_warp(importer.store, warp)
    table = importer.store.read_table()
    assert table["DF1"].iloc[-1] == pytest.approx(15300.0)  # micrograph 3's defocus
    assert table["DF2"].iloc[-1] == pytest.approx(15000.0)
    assert table["ANGAST"].eq(30.0).all() and table["2DCLS"].eq(0).all()


def test_a_restart_carries_on_without_duplicates(warp, tmp_path):
    importer_for(warp, tmp_path).poll_reimporting()
    (tmp_path / "out" / "import.json").unlink()  # progress lost: the store's names still guard
    warp.add_micrographs(1)
    importer = importer_for(warp, tmp_path)
    report = importer.poll_reimporting()
    assert report.new_particles == 20 and not report.reimported
    assert_store_matches_warp(importer.store, warp)


def test_progress_behind_the_store_imports_nothing_twice(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    old_progress = (tmp_path / "out" / "import.json").read_bytes()
    warp.add_micrographs(1)
    importer.poll_reimporting()
    # killed after the store committed, before import.json was written
    (tmp_path / "out" / "import.json").write_bytes(old_progress)
    warp.add_micrographs(1)
    report = importer_for(warp, tmp_path).poll_reimporting()
    assert report.new_particles == 20 and report.total == 80
    assert_store_matches_warp(ParticleStore(tmp_path / "out"), warp)


def test_a_half_written_stack_is_waited_for_then_imported(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.add_micrographs(2)
    full = warp.stack_path(2).read_bytes()
    warp.stack_path(2).write_bytes(full[: len(full) // 2])
    report = importer.poll_reimporting()
    assert report.new_particles == 0 and report.waiting_on == warp.stack_name(2)
    assert "waiting for" in " ".join(report.messages)
    assert importer.store.count == 40  # nothing of the half stack, nor of the one after it
    warp.stack_path(2).write_bytes(full)
    report = importer.poll_reimporting()
    assert report.new_particles == 40 and report.waiting_on is None
    assert_store_matches_warp(importer.store, warp)


def test_a_stack_with_a_short_header_count_is_waited_for(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    warp.add_micrographs(1)
    set_image_count(warp.stack_path(2), 5)  # Warp has written the header of 5 images so far
    report = importer.poll_reimporting()
    assert report.total == 40 and report.waiting_on == warp.stack_name(2)
    set_image_count(warp.stack_path(2), 20)  # now complete
    assert importer.poll_reimporting().total == 60
    assert_store_matches_warp(importer.store, warp)


def test_a_stack_that_never_completes_is_skipped_after_bounded_waits(warp, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(sources_base, "STACK_WAIT_SECONDS", 0.0)
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.add_micrographs(2)
    warp.stack_path(2).unlink()
    reports = [importer.poll_reimporting() for _ in range(STACK_WAIT_POLLS)]
    assert all(r.new_particles == 0 for r in reports[:-1])
    assert reports[-1].new_particles == 20
    assert "skipping the 20 particles" in " ".join(reports[-1].messages)
    assert_store_matches_warp(importer.store, warp, skipped=(2,))

    # Warp caught mid-rewrite afterwards is not mistaken for changed rows
    star = warp.star_path()
    text = star.read_text()
    star.write_text(text[: len(text) - 30])
    report = importer.poll_reimporting()
    assert not report.reimported and report.total == 60
    warp.add_micrographs(1)
    report = importer.poll_reimporting()
    assert not report.reimported and report.new_particles == 20
    assert_store_matches_warp(importer.store, warp, skipped=(2,))
    # and a restart remembers the skip
    report = importer_for(warp, tmp_path).poll_reimporting()
    assert not report.reimported and report.new_particles == 0


def test_a_stack_is_not_skipped_before_its_time_is_up(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    warp.stack_path(1).unlink()
    reports = [importer.poll_reimporting() for _ in range(STACK_WAIT_POLLS + 2)]
    assert reports[-1].waiting_on == warp.stack_name(1) and reports[-1].total == 20


def test_warp_rewriting_its_star_identically_is_not_a_change(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.write_stars()
    star = warp.star_path()
    star.write_text(star.read_text()[:100])  # caught mid-rewrite...
    assert not importer.poll_reimporting().reimported
    warp.write_stars()  # ...then complete and identical
    report = importer.poll_reimporting()
    assert not report.reimported and report.new_particles == 0 and report.total == 40


def test_a_star_caught_mid_rewrite_is_waited_for(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    star = warp.star_path()
    text = star.read_text()
    star.write_text(text[: len(text) // 3])
    report = importer.poll_reimporting()
    assert not report.reimported and importer.store.count == 40
    assert "waiting" in " ".join(report.messages)
    warp.add_micrographs(1)
    report = importer.poll_reimporting()
    assert not report.reimported and report.new_particles == 20
    assert_store_matches_warp(importer.store, warp)


def test_changed_imported_rows_force_a_full_reimport(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    generation = importer.store.generation
    del warp.rows[3]  # Warp's filters dropped a particle that was already imported
    del warp.good[3]
    warp.write_stars()
    report = importer.poll_reimporting()
    assert report.reimported and "changed" in report.reason and "ab initio" in report.reason
    assert report.total == 39 and importer.store.generation == generation + 1
    assert_store_matches_warp(importer.store, warp)
    assert not importer.poll_reimporting().reimported


@pytest.mark.parametrize("change, words", [
    ({"BoxSize": 36}, "box size changed 32 -> 36"),
    ({"MinimumScore": 0.5}, "picking threshold changed 0.95 -> 0.5"),
    ({"ModelPath": "C:\\models\\Other"}, "BoxNet model changed"),
])
def test_a_settings_change_resets_the_store_and_says_why(warp, tmp_path, change, words):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.write_settings(**change)
    if "BoxSize" in change:  # Warp exports new particles at the new box from now on
        warp.box = 36
    warp.rows, warp.good, warp.micrographs = [], [], 0
    warp.add_micrographs(1)
    report = importer.poll_reimporting()
    assert report.reimported and words in report.reason and "ab initio" in report.reason
    assert importer.store.generation == 1 and report.total == 20
    assert importer.store.box == warp.box
    assert_store_matches_warp(importer.store, warp)
    assert not importer.poll_reimporting().reimported


def test_switching_to_good_particles_reimports(warp, tmp_path):
    warp.add_micrographs(1, good=False)
    importer = importer_for(warp, tmp_path)
    assert importer.poll_reimporting().total == 60
    importer.configure(which="good")
    report = importer.poll_reimporting()
    assert report.reimported and "particle file" in report.reason and report.total == 40
    assert_store_matches_warp(importer.store, warp, which="goodparticles")


def test_a_kill_between_emptying_the_store_and_saving_progress_is_reported(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    saved = json.loads((tmp_path / "out" / "import.json").read_text())
    warp.write_settings(MinimumScore=0.5)
    importer.poll_reimporting()
    (tmp_path / "out" / "import.json").write_text(json.dumps(saved))  # the old progress
    report = importer_for(warp, tmp_path).poll_reimporting()
    assert report.reimported and "ab initio" in report.reason and report.total == 40
    assert_store_matches_warp(ParticleStore(tmp_path / "out"), warp)


def test_a_folder_warp_has_not_started_in_is_waited_for_saying_so_once(tmp_path):
    folder = tmp_path / "warp"
    folder.mkdir()
    importer = Importer(folder, ParticleStore(tmp_path / "out"))
    first = importer.poll_reimporting()
    assert first.total == 0 and "no previous.settings in" in first.missing
    assert first.messages == [first.missing]
    later = [importer.poll_reimporting() for _ in range(3)]
    assert all(r.missing == first.missing and r.messages == [] for r in later)  # quietly

    warp = WarpFolder(folder, box=32, pixel_size=2.0, per_micrograph=20)  # Warp starts
    report = importer.poll_reimporting()
    assert f"found Warp's settings in {folder}" in report.messages
    assert "allparticles" in report.missing and report.total == 0
    assert importer.poll_reimporting().messages == []  # the missing star is said once too
    warp.add_micrographs(2)
    report = importer.poll_reimporting()
    assert report.new_particles == 40 and report.missing == ""
    assert_store_matches_warp(importer.store, warp)


def test_unreadable_settings_wait_and_a_vanished_folder_does_not_end_a_session(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    with pytest.raises(WarpFolderError):
        Importer(tmp_path / "nowhere", ParticleStore(tmp_path / "other")).poll_reimporting()
    importer.poll_reimporting()
    settings = warp.folder / "previous.settings"
    good = settings.read_bytes()
    settings.write_bytes(good[:200])
    report = importer.poll_reimporting()
    assert report.total == 40 and "next poll" in " ".join(report.messages)
    settings.write_bytes(good)
    moved = warp.folder.rename(warp.folder.with_name("hidden"))
    assert "next poll" in " ".join(importer.poll_reimporting().messages)
    moved.rename(warp.folder)
    warp.add_micrographs(1)
    assert importer.poll_reimporting().new_particles == 20


def test_a_malformed_star_imports_nothing_and_says_so(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    star = warp.star_path()
    star.write_text(star.read_text().replace("rlnDefocusV", "rlnSomethingElse"))
    report = importer.poll_reimporting()
    assert report.total == 0 and "rlnDefocusV" in " ".join(report.messages)
    warp.write_stars()
    assert importer.poll_reimporting().total == 40


def test_a_pixel_size_that_disagrees_with_the_settings_is_a_clear_message(warp, tmp_path):
    warp.write_settings(PixelSizeX=1.5)  # 3 Å binned; the star says 2 Å
    report = importer_for(warp, tmp_path).poll_reimporting()
    assert report.total == 0
    assert "star file says 2 Å/px but previous.settings 3 Å/px" in " ".join(report.messages)


def test_rows_refused_for_their_pixel_size_are_imported_once_fixed(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.pixel_size = 3.0  # Warp's binning changed: new rows say 3 Å, the settings still 2 Å
    warp.add_micrographs(1)
    report = importer.poll_reimporting()
    assert report.total == 40 and "3 Å/px" in " ".join(report.messages)
    warp.write_settings(PixelSizeX=1.5)  # settings catch up: 1.5 × 2**1 = 3 Å
    report = importer.poll_reimporting()
    assert report.reimported and "pixel size changed 2 -> 3" in report.reason
    # the old rows now disagree with the settings; nothing mixes pixel sizes in the store
    assert report.total == 0 and "2 Å/px" in " ".join(report.messages)
    warp.rows, warp.good, warp.micrographs = [], [], 0  # Warp re-exported everything
    warp.add_micrographs(3)
    assert importer.poll_reimporting().total == 60
    assert_store_matches_warp(importer.store, warp)


def test_sigkill_during_import_loses_and_duplicates_nothing(tmp_path):
    warp = WarpFolder(tmp_path / "warp", box=16, pixel_size=2.0, per_micrograph=10)
    warp.add_micrographs(150)
    script = textwrap.dedent(f"""
        from live2d import importer
        from live2d.sources import base
        from live2d.store import ParticleStore
        base.APPEND_BATCH_BYTES = 1  # one commit per micrograph: many places to be killed
        imp = importer.Importer({str(warp.folder)!r}, ParticleStore({str(tmp_path / "out")!r}))
        print("ready", flush=True)
        while imp.poll_reimporting().new_particles:
            pass
    """)
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.02, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = ParticleStore(tmp_path / "out")  # reconciles
        counts.append((store.count, warp.micrographs * 10))
        assert store.count % 10 == 0  # a micrograph is never imported half
        warp.add_micrographs(5)
    report = Importer(warp.folder, ParticleStore(tmp_path / "out")).poll_reimporting()
    assert not report.reimported and report.total == 1700
    assert_store_matches_warp(ParticleStore(tmp_path / "out"), warp)
    assert any(0 < count < available for count, available in counts)  # killed mid-import


def test_each_particle_keeps_its_micrograph_and_coordinates(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    table = ParticleStore(tmp_path / "out").read_table()  # as read back from disk
    assert table["MICROGRAPH"].tolist()[:2] == ["FoilHole_00000_Data.tif"] * 2
    assert table["MICROGRAPH"].iloc[-1] == "FoilHole_00001_Data.tif"
    assert table["ORIGX"].tolist()[:3] == [100.0, 101.0, 102.0]
    assert table["ORIGY"].iloc[19] == 219.0


def downgrade_to_format_1(folder: Path) -> None:
    """Rewrite a store as Live2D wrote it before it kept micrographs and coordinates."""
    from live2d import cistem_star

    store = ParticleStore(folder)
    old = [c for c in store.read_table().columns if c not in ("ORIGX", "ORIGY", "MICROGRAPH")]
    table = store.read_table()[old]
    text = cistem_star.header(old, ["Live2D particle store: every imported particle"]) + \
        cistem_star.format_rows(table, old)
    store.star_path.write_text(text)
    state = json.loads(store.state_path.read_text())
    for key in ("format", "provenance_pending", "replacing_star"):
        state.pop(key, None)
    state["star_bytes"] = len(text.encode())
    store.state_path.write_text(json.dumps(state))


def test_a_store_of_the_previous_format_is_migrated_and_its_sources_filled_in(warp, tmp_path):
    importer_for(warp, tmp_path).poll_reimporting()
    before = ParticleStore(tmp_path / "out").read_table()
    downgrade_to_format_1(tmp_path / "out")

    store = ParticleStore(tmp_path / "out")
    assert store.provenance_pending and store.count == 40
    assert store.read_table()["MICROGRAPH"].eq("").all()
    importer = Importer(warp.folder, store)
    warp.add_micrographs(1)
    report = importer.poll_reimporting()
    assert report.new_particles == 20 and not report.reimported
    assert any("40 particles imported before this version filled in" in m
               for m in report.messages)
    after = ParticleStore(tmp_path / "out")
    assert not after.provenance_pending
    table = after.read_table()
    assert table.iloc[:40].equals(before)  # exactly what a new store holds
    assert table["MICROGRAPH"].iloc[-1] == "FoilHole_00002_Data.tif"
    assert_store_matches_warp(after, warp)


def test_a_kill_while_the_star_is_replaced_is_finished_on_opening(warp, tmp_path):
    importer_for(warp, tmp_path).poll_reimporting()
    downgrade_to_format_1(tmp_path / "out")
    store = ParticleStore(tmp_path / "out")
    state = json.loads(store.state_path.read_text())
    replacement = store.star_path.with_name("particles.star.new")
    migrated = store.star_path.read_bytes()
    # as if killed after committing the replacement, before renaming it into place
    store.star_path.write_bytes(b"garbage from the old format\n")
    replacement.write_bytes(migrated)
    store.state_path.write_text(json.dumps({**state, "replacing_star": replacement.name}))
    reopened = ParticleStore(tmp_path / "out")
    assert reopened.count == 40 and len(reopened.read_table()) == 40
    assert not replacement.exists() and reopened.provenance_pending


def test_a_bad_value_refuses_its_row_only_and_a_rewrite_neither_repeats_nor_reimports(warp,
                                                                                       tmp_path):
    warp.rows[5] = warp.rows[5].replace(" 30.0 4.0 ", " nan 4.0 ")  # rlnDefocusAngle
    warp.rows[7] = warp.rows[7].replace(" 300.0 ", " 1e308 ")  # rlnVoltage
    warp.write_stars()
    importer = importer_for(warp, tmp_path)
    report = importer.poll_reimporting()
    assert report.total == 38  # was 0: one 'nan' stopped the import of the whole star
    text = " ".join(report.messages)
    assert "rlnDefocusAngle is not a number, e.g. 'nan' in row 6" in text
    assert "rlnVoltage is outside 10 to 1000 kV, e.g. '1e+308' in row 8" in text
    warp.add_micrographs(1)  # Warp rewrites the star whole, the bad rows still in it
    report = importer.poll_reimporting()
    assert report.new_particles == 20 and not report.reimported
    assert not any("refused" in m for m in report.messages)  # said once
    fresh = importer_for(warp, tmp_path)  # a restart remembers them too
    warp.add_micrographs(1)
    report = fresh.poll_reimporting()
    assert report.total == 78 and not report.reimported
    assert not any("refused" in m for m in report.messages)
    good = [r.split()[12] for i, r in enumerate(warp.rows) if i not in (5, 7)]
    assert fresh.store.read_table()["ORIGNAME"].tolist() == good


def test_a_malformed_star_is_said_once_and_not_parsed_again_until_it_changes(warp, tmp_path,
                                                                             monkeypatch):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    star = warp.star_path()
    good = star.read_text()
    # 100,000 columns: 4 GB to parse if the rows were split on every poll
    star.write_text(good.replace("_rlnMicrographName #14\n", "_rlnMicrographName #14\n" + "".join(
        f"_rlnJunk{i} #{i + 15}\n" for i in range(100_000))) + "x " * 100_000 + "\n")
    reads = []
    real = warp_folder_source.read_new_rows
    monkeypatch.setattr(warp_folder_source, "read_new_rows",
                        lambda *args: reads.append(1) or real(*args))
    messages = [m for _ in range(4) for m in importer.poll_reimporting().messages]
    assert len(messages) == 1 and "more than 1000 columns" in messages[0], messages
    assert len(reads) <= 2  # the first poll (and its rewrite check), then nothing
    star.write_text(good + "x" * (2 << 20))  # fixed, but a line of 2 MB without a newline
    messages = [m for _ in range(3) for m in importer.poll_reimporting().messages]
    assert len(messages) == 1 and "without a newline" in messages[0], messages
    warp.add_micrographs(1)
    assert importer.poll_reimporting().total == 60


def test_stacks_outside_the_folder_are_read_and_said_once(warp, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = warp.stack_path(1)
    source.rename(elsewhere / source.name)
    warp.rows = [r.replace(f"@{warp.stack_name(1)}", f"@../elsewhere/{source.name}")
                 for r in warp.rows]
    warp.write_stars()
    importer = importer_for(warp, tmp_path)
    report = importer.poll_reimporting()
    assert report.total == 40
    said = [m for m in report.messages if "stacks outside" in m]
    assert len(said) == 1 and str(elsewhere) in said[0] and "20 particles" in said[0]
    warp.add_micrographs(1)
    assert not any("stacks outside" in m for m in importer.poll_reimporting().messages)


def test_a_nan_setting_is_named_once_and_the_import_goes_on_once_fixed(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.poll_reimporting()
    warp.write_settings(Voltage="NaN")
    warp.add_micrographs(1)
    messages = [m for _ in range(3) for m in importer.poll_reimporting().messages]  # no traceback
    assert len(messages) == 1 and "CTF/Voltage is 'NaN'" in messages[0], messages
    warp.write_settings(Voltage=300)
    assert importer.poll_reimporting().total == 60


def test_a_poll_reports_a_needed_start_over_and_leaves_the_store_as_it_is(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    first = importer.poll()  # an empty store is started over without asking: nothing to lose
    assert first.start_over is None and not first.reimported and first.total == 40
    warp.write_settings(MinimumScore=0.5)
    report = importer.poll()
    request = report.start_over
    assert request is not None and "picking threshold changed 0.95 -> 0.5" in request.reason
    assert not report.reimported and report.new_particles == 0 and report.total == 40
    assert (request.box, request.pixel_size) == (32, 2.0)
    assert importer.store.generation == 0 and importer.poll().start_over == request
    importer.start_over(request)
    assert importer.store.count == 0 and importer.store.generation == 1
    report = importer.poll()
    assert report.start_over is None and report.total == 40
    assert_store_matches_warp(importer.store, warp)


def test_progress_written_by_the_previous_version_loads_without_a_reimport(warp, tmp_path):
    importer_for(warp, tmp_path).poll()
    path = tmp_path / "out" / "import.json"
    saved = json.loads(path.read_text())
    assert saved["source"] == [32, warp.model, 0.95, "allparticles"]  # the list form, as before
    old = {key: saved[key] for key in ("source", "progress", "generation", "skipped",
                                       "refused", "outside")}  # no star settings
    path.write_text(json.dumps(old))
    warp.add_micrographs(1)
    report = importer_for(warp, tmp_path).poll()
    assert report.start_over is None and not report.reimported and report.new_particles == 20
    assert_store_matches_warp(ParticleStore(tmp_path / "out"), warp)


def test_options_are_checked_when_changed(warp, tmp_path):
    importer = importer_for(warp, tmp_path)
    importer.configure(which="good", copy_images=False)
    assert (importer.which, importer.contrast, importer.copy_images) == (
        "goodparticles", "auto", False)
    with pytest.raises(ValueError, match="contrast must be one of"):
        importer.configure(contrast="grey")
    with pytest.raises(ValueError, match="particle file must be one of"):
        Importer(warp.folder, ParticleStore(tmp_path / "other"), which="some")
    assert importer.contrast == "auto"
