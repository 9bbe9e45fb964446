"""The particle store: O(new) appends, a commit point, and reconciliation after a kill."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import mrcfile
import numpy as np
import pandas as pd
import pytest

from live2d import cistem_star
from live2d.cistem_star import read_star
from live2d.store import FORMAT, STORE_COLUMNS, ParticleStore, StoreError

BOX = 16


def batch(start: int, n: int) -> tuple[np.ndarray, pd.DataFrame]:
    images = np.stack([np.full((BOX, BOX), start + i, dtype=np.float32) for i in range(n)])
    table = pd.DataFrame({"DF1": 15000.0, "DF2": 14000.0, "ANGAST": 30.0, "PSIZE": 1.5,
                          "VOLT": 300.0, "Cs": 2.7, "AmpC": 0.07,
                          "ORIGNAME": [f"{i + 1:06d}@particles/m.mrcs" for i in
                                       range(start, start + n)]})
    return images, table


def check_consistent(folder, expected: int) -> None:
    store = ParticleStore(folder)
    assert store.count == expected
    table = read_star(store.star_path)
    assert len(table) == expected and table["ORIGNAME"].is_unique
    assert table["POS"].tolist() == list(range(1, expected + 1))
    with mrcfile.mmap(store.stack_path) as mrc:
        assert mrc.data.shape == (expected, BOX, BOX)
        # image i holds the value i: nothing shifted, lost or doubled
        assert np.array_equal(mrc.data[:, 0, 0], np.arange(expected, dtype=np.float32))


def test_append_writes_a_valid_stack_and_star(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 5))
    store.append(*batch(5, 3))
    check_consistent(tmp_path, 8)
    with mrcfile.open(store.stack_path) as mrc:
        assert mrc.voxel_size.x == pytest.approx(1.5)
    table = store.read_table()
    assert table["DF1"].iloc[0] == pytest.approx(15000.0) and table["2DCLS"].eq(0).all()
    assert store.image_names() == set(table["ORIGNAME"])


def test_the_source_ids_are_kept_and_a_format_4_store_gets_them_as_0(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    images, table = batch(0, 3)
    store.append(images, table.assign(SRCID=[7, 9, 12]))
    assert store.read_table()["SRCID"].tolist() == [7, 9, 12]
    # As format 4 wrote it: no SRCID column.
    columns = [c for c in STORE_COLUMNS if c != "SRCID"]
    text = cistem_star.header(columns, ["Live2D particle store: every imported particle"]) + \
        cistem_star.format_rows(store.read_table(), columns)
    store.star_path.write_text(text)
    state = json.loads(store.state_path.read_text())
    store.state_path.write_text(json.dumps({**state, "format": 4,
                                            "star_bytes": len(text.encode())}))
    upgraded = ParticleStore(tmp_path)
    assert json.loads(upgraded.state_path.read_text())["format"] == FORMAT
    assert upgraded.count == 3 and upgraded.read_table()["SRCID"].tolist() == [0, 0, 0]
    check_consistent(tmp_path, 3)


def test_reset_empties_the_store_and_bumps_the_generation(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))
    generation = store.generation
    store.reset(2.0, 24)
    assert store.count == 0 and store.generation == generation + 1 and store.box == 24
    assert ParticleStore(tmp_path).generation == generation + 1


def test_uncommitted_data_left_by_a_kill_is_cut_back(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))
    committed = json.loads(store.state_path.read_text())
    store.append(*batch(4, 3))
    store.state_path.write_text(json.dumps(committed))  # as if killed just before the commit
    check_consistent(tmp_path, 4)
    reopened = ParticleStore(tmp_path)
    reopened.append(*batch(4, 3))
    check_consistent(tmp_path, 7)


def test_a_kill_in_the_middle_of_a_reset_leaves_an_empty_valid_store(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))
    old_stack, old_star = store.stack_path.read_bytes(), store.star_path.read_bytes()
    store.reset(2.0, 24)
    # as if killed right after reset committed, before the files were emptied
    store.stack_path.write_bytes(old_stack)
    store.star_path.write_bytes(old_star)
    reopened = ParticleStore(tmp_path)
    assert (reopened.count, reopened.box, reopened.pixel_size) == (0, 24, 2.0)
    assert len(reopened.read_table()) == 0 and len(read_star(reopened.star_path)) == 0
    _, table = batch(0, 2)
    reopened.append(np.zeros((2, 24, 24), dtype=np.float32), table)
    with mrcfile.open(reopened.stack_path) as mrc:
        assert mrc.data.shape == (2, 24, 24) and mrc.voxel_size.x == pytest.approx(2.0)
    assert read_star(reopened.star_path)["ORIGNAME"].tolist() == table["ORIGNAME"].tolist()


def test_a_header_count_left_by_a_kill_is_set_back(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))
    with mrcfile.open(store.stack_path, "r+", permissive=True) as mrc:
        mrc.header.nz = mrc.header.mz = 9  # patched for an append that never committed
    check_consistent(tmp_path, 4)
    with mrcfile.open(store.stack_path, header_only=True) as mrc:
        assert (int(mrc.header.nz), int(mrc.header.mz)) == (4, 4)
        assert float(mrc.header.cella.z) == pytest.approx(4 * 1.5)


def test_a_stack_that_lost_committed_particles_is_an_error(tmp_path):
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))
    with open(store.stack_path, "r+b") as handle:
        handle.truncate(2000)
    with pytest.raises(StoreError, match="shorter than the 4 particles"):
        ParticleStore(tmp_path)


def test_sigkill_while_appending_loses_and_duplicates_nothing(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_store import batch
        from live2d.store import ParticleStore
        store = ParticleStore({str(tmp_path)!r})
        if not store.box:
            store.reset(1.5, {BOX})
        start = store.count
        store.append(*batch(start, 7))
        print("appending", flush=True)
        start += 7
        while True:
            store.append(*batch(start, 7))
            start += 7
    """)
    rng = np.random.default_rng(0)
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert process.stdout.readline() == b"appending\n"  # however slow the start
        time.sleep(rng.uniform(0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        store = ParticleStore(tmp_path)
        assert store.count % 7 == 0
        check_consistent(tmp_path, store.count)
    assert ParticleStore(tmp_path).count > 0


def test_a_store_reading_its_sources_in_place_has_no_stack_until_a_copy_begins(tmp_path):
    """Users who open the folder's particles.mrcs must not find 0 particles, or a stale copy's
    particles, where the store reads Warp's stacks in place."""
    store = ParticleStore(tmp_path)
    store.reset(1.5, BOX)
    store.append(*batch(0, 4))  # a copy from before, then a re-import reading in place
    store.reset(1.5, BOX, source_root=tmp_path)
    assert not store.stack_path.exists()
    images, table = batch(0, 6)
    store.append(None, table)
    assert not ParticleStore(tmp_path).stack_path.exists()  # reopening makes none
    # An earlier version's empty stack is removed on opening; a copy then starts one.
    (tmp_path / "particles.mrcs").write_bytes(b"\0" * 1024)
    reopened = ParticleStore(tmp_path)
    assert not reopened.stack_path.exists() and reopened.count == 6
    reopened.copy_in(lambda start, stop: images[start:stop], batch=4)
    assert reopened.copies_images
    check_consistent(tmp_path, 6)
