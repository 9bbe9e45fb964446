"""Another Live2D store's growing stack read in place: what a Scipion classification does with
the particles of a Scipion import that still appends to its store.

The store's id and generation stamp its stack (its size and time change with every append, its
committed particles never), so particles read in place stay in every later cycle while the store
grows, and are left out once it was emptied or replaced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from warp_fixtures import WarpFolder

from live2d import source_images
from live2d import warp as warp_module
from live2d.importer import Importer
from live2d.schedule import Settings
from live2d.session import Session
from live2d.source_images import SourceImages, open_images
from live2d.store import FORMAT, ParticleStore
from live2d.warp import stack_stamp, stamp_holds

SMALL = {"classes": 2, "particles_per_class": 10, "startup_cycles": 1, "refinement_cycles": 1,
         "high_res_initial": 20.0, "high_res_final": 10.0, "threads": 1, "first_job_at": 40,
         "update_every": 40, "poll_seconds": 0.5}


@pytest.fixture
def warp(tmp_path) -> WarpFolder:
    folder = WarpFolder(tmp_path / "warp", box=32, pixel_size=2.0, per_micrograph=20)
    folder.add_micrographs(2)
    return folder


def producer_of(warp: WarpFolder, folder: Path) -> Importer:
    """An import that copies Warp's particles into its store (a Scipion import, Copy files)."""
    importer = Importer(warp.folder, ParticleStore(folder), copy_images=True)
    importer.poll_reimporting()
    assert importer.store.copies_images
    return importer


def write_consumer(store: ParticleStore, warp: WarpFolder, folder: Path,
                   warp_micrographs: int = 0) -> Path:
    """A Warp-like folder naming the store's particles by absolute path, as a consumer of a
    Scipion import names them (rewritten whole, earlier rows first); those of
    the first ``warp_micrographs`` by Warp's own stacks (a set merged from two imports)."""
    folder.mkdir(exist_ok=True)
    (folder / "previous.settings").write_bytes((warp.folder / "previous.settings").read_bytes())
    table = store.read_table()
    position = dict(zip(table["ORIGNAME"], table["POS"], strict=True))
    rows = []
    for line in warp.rows:
        fields = line.split()
        name = fields[12]
        if name not in position:
            continue
        index, stack = name.split("@")
        own = int(stack.split("_")[1]) < warp_micrographs
        fields[12] = f"{index}@{warp.folder / stack}" if own else \
            f"{position[name]:06d}@{store.stack_path}"
        rows.append(" ".join(fields) + "\n")
    warp_star = warp.star_path()
    (folder / warp_star.name).write_text(warp.header() + "".join(rows))
    return folder


def store_state(store: ParticleStore) -> dict:
    return json.loads(store.state_path.read_text())


def test_a_store_gets_an_id_when_made_or_emptied_and_older_stores_get_one_on_opening(tmp_path):
    store = ParticleStore(tmp_path / "store")
    store.reset(2.0, 32)
    first = store.store_id
    assert first and store_state(store)["store_id"] == first
    store.append(np.zeros((3, 32, 32), np.float32), _rows(3))
    assert ParticleStore(tmp_path / "store").store_id == first  # kept on opening
    store.reset(2.0, 32)
    assert store.store_id not in ("", first)

    old = store_state(store)
    del old["store_id"]  # a store made before stores had an id
    store.state_path.write_text(json.dumps(old))
    migrated = ParticleStore(tmp_path / "store")
    assert migrated.store_id and store_state(migrated)["store_id"] == migrated.store_id


def test_a_stores_stack_is_stamped_by_its_id_and_generation_not_its_size(warp, tmp_path):
    producer = producer_of(warp, tmp_path / "producer")
    store = producer.store
    stamp = stack_stamp(store.stack_path)
    assert stamp == f"store:{store.store_id}:{store.generation}"
    warp.add_micrographs(1)
    producer.poll_reimporting()  # appended: the stack's size and time changed, its first 40 did not
    assert store.count == 60 and stack_stamp(store.stack_path) == stamp
    assert stamp_holds(store.stack_path, stamp, 60)
    assert not stamp_holds(store.stack_path, stamp, 61)  # not committed (yet)
    # Any other stack by size and time; a store that reads its sources in place has no stack
    # (its particles name the stacks they are read from).
    assert ":" in stack_stamp(warp.stack_path(0))
    assert not stack_stamp(warp.stack_path(0)).startswith("store:")
    in_place = Importer(warp.folder, ParticleStore(tmp_path / "in_place"), copy_images=False)
    in_place.poll_reimporting()
    assert not in_place.store.stack_path.exists()
    assert {name.split("@")[1] for name in in_place.store.read_table()["ORIGNAME"]} == \
        {str(warp.stack_path(m).relative_to(warp.folder)) for m in range(3)}


def test_a_growing_store_is_read_in_place_while_it_grows(warp, tmp_path):
    producer = producer_of(warp, tmp_path / "producer")
    consumer = write_consumer(producer.store, warp, tmp_path / "consumer")
    importer = Importer(consumer, ParticleStore(tmp_path / "out"), copy_images=False)
    report = importer.poll_reimporting()
    store = importer.store
    assert report.new_particles == 40
    assert not store.copies_images and store.copied == 0  # no second copy of the pixels
    assert not store.stack_path.exists()
    assert set(store.read_table()["SRCSTAMP"]) == {stack_stamp(producer.store.stack_path)}
    before = open_images(store.images_path)
    assert before.usable().all()

    warp.add_micrographs(1)
    producer.poll_reimporting()  # the producer's store grows under the consumer's stamps
    write_consumer(producer.store, warp, consumer)
    assert importer.poll_reimporting().new_particles == 20
    images = open_images(store.images_path)
    assert len(images) == 60 and images.usable().all() and not images.changed_stacks()
    assert before.usable().all()  # the first 40 are still the ones imported
    for position, micrograph, index in ((0, 0, 0), (39, 1, 19), (45, 2, 5)):
        np.testing.assert_array_equal(images[[position]][0], warp.images(micrograph)[index])


def test_a_map_of_a_growing_stack_is_made_again_for_its_later_images(warp, tmp_path):
    producer = producer_of(warp, tmp_path / "producer")
    stack = producer.store.stack_path
    stamp = stack_stamp(stack)
    names = [f"{i:06d}@{stack}" for i in (1, 50)]
    images = SourceImages(Path("/"), names, [stamp] * 2, 32)
    np.testing.assert_array_equal(images[[0]][0], warp.images(0)[0])  # maps 40 images
    warp.add_micrographs(1)
    producer.poll_reimporting()
    np.testing.assert_array_equal(images[[1]][0], warp.images(2)[9])  # beyond that map


def test_particles_of_a_store_emptied_or_replaced_are_left_out(warp, tmp_path):
    producer = producer_of(warp, tmp_path / "producer")
    consumer = write_consumer(producer.store, warp, tmp_path / "consumer")
    importer = Importer(consumer, ParticleStore(tmp_path / "out"), copy_images=False)
    importer.poll_reimporting()
    images = open_images(importer.store.images_path)
    assert images.usable().all()

    state = store_state(producer.store)
    replaced = {**state, "store_id": "0" * 16}  # deleted and imported again: same count
    producer.store.state_path.write_text(json.dumps(replaced))
    assert not images.usable().any()
    assert images.changed_stacks() == [str(producer.store.stack_path)]
    producer.store.state_path.write_text(json.dumps({**state, "generation": 5}))
    assert not images.usable().any()
    producer.store.state_path.write_text(json.dumps({**state, "count": 39}))  # lost one
    assert not images.usable().any()
    producer.store.state_path.write_text(json.dumps(state))
    assert images.usable().all()
    producer.store.state_path.unlink()
    assert not images.usable().any()


def test_each_particle_is_checked_by_the_stamp_taken_when_it_was_imported(tmp_path):
    """A stack that grows outside a store (another program appending to it): its particles
    imported before it changed are left out, those imported after are kept."""
    stack = tmp_path / "growing.mrcs"
    pixels = np.random.default_rng(0).standard_normal((20, 16, 16)).astype(np.float32)
    mrcfile.write(stack, pixels[:10])
    before = stack_stamp(stack)
    mrcfile.write(stack, pixels, overwrite=True)
    after = stack_stamp(stack)
    assert before != after
    names = [f"{i}@{stack}" for i in range(1, 21)]
    images = SourceImages(Path("/"), names, [before] * 10 + [after] * 10, 16)
    assert images.usable().tolist() == [False] * 10 + [True] * 10
    assert images.changed_stacks() == [str(stack)]
    np.testing.assert_array_equal(images[[0, 15]], np.stack([np.zeros((16, 16)), pixels[15]]))


def test_a_stack_another_thread_evicts_while_it_is_looked_up_is_still_read(tmp_path,
                                                                           monkeypatch):
    """One SourceImages serves every thread of a process (the engine, the server's curation
    and thumbnails): a stack one thread finds open while another evicts it is still read."""
    monkeypatch.setattr(source_images, "OPEN_STACKS", 1)
    pixels = np.random.default_rng(0).standard_normal((8, 16, 16)).astype(np.float32)
    names, stamps = [], []
    for part in (0, 1):
        stack = tmp_path / f"stack{part}.mrcs"
        mrcfile.write(stack, pixels[4 * part:4 * part + 4])
        names += [f"{i}@{stack}" for i in range(1, 5)]
        stamps += [stack_stamp(stack)] * 4
    images = SourceImages(Path("/"), names, stamps, 16)
    images[[0]]  # stack 0 open
    other = threading.Thread(target=lambda: images[[4]])  # opens stack 1, evicting stack 0

    class Interleaved(OrderedDict):
        def move_to_end(self, key, last=True):  # the other thread runs between two steps
            if not other.ident:
                other.start()
                other.join(0.5)  # it waits for the lookup to end, where the lookup is locked
            super().move_to_end(key, last)

    images._open = Interleaved(images._open)
    np.testing.assert_array_equal(images[[1]][0], pixels[1])
    other.join()
    np.testing.assert_array_equal(images[[5, 2]], pixels[[5, 2]])


def test_a_session_classifies_a_growing_store_in_place_and_says_when_it_was_replaced(
        warp, tmp_path):
    producer = producer_of(warp, tmp_path / "producer")
    consumer = write_consumer(producer.store, warp, tmp_path / "consumer", warp_micrographs=1)
    session = Session(consumer, engine="builtin", settings=Settings(**SMALL))
    try:
        session.run_job()
        warp.add_micrographs(1)
        producer.poll_reimporting()
        write_consumer(producer.store, warp, consumer, warp_micrographs=1)
        assert session.import_new().new_particles == 20
        session.run_job()
        history = session.history
    finally:
        session.close()
    out = consumer / "classification"
    store = ParticleStore(out)
    assert not store.copies_images and store.copied == 0
    assert history[-1].particles == 60 and sum(history[-1].class_counts) == 60  # none left out
    log = (out / "live2d.log").read_text()
    assert "left out" not in log

    # The producer's store deleted and made again (same particles, same generation 0).
    shutil.rmtree(producer.store.folder)
    producer = producer_of(warp, producer.store.folder)
    assert producer.store.count == 60 and producer.store.generation == 0
    session = Session(consumer, engine="builtin")
    try:
        session.run_job("refine")
        last = session.history[-1]
    finally:
        session.close()
    log = (out / "live2d.log").read_text()
    assert "40 particles are left out of this cycle" in log
    assert str(producer.store.stack_path) in log
    assert last.particles == 60 and sum(last.class_counts) == 20  # Warp's own 20 only


def _rows(n: int):
    from live2d import cistem_star

    table = cistem_star.new_table(n)
    table["ORIGNAME"] = [f"{i + 1}@x.mrcs" for i in range(n)]
    return table


# ------------------------------------------------------------- Warp's stacks on a changing disk
def in_place_store(warp: WarpFolder, folder: Path) -> ParticleStore:
    importer = Importer(warp.folder, ParticleStore(folder), copy_images=False)
    importer.poll_reimporting()
    assert not importer.store.copies_images and importer.store.count == 40
    return importer.store


def test_a_stack_touched_keeps_its_particles_and_one_rewritten_loses_them(warp, tmp_path,
                                                                          monkeypatch):
    store = in_place_store(warp, tmp_path / "out")
    touched, rewritten = warp.stack_path(0), warp.stack_path(1)
    with mrcfile.mmap(touched, mode="r+", permissive=True):
        pass  # a viewer's r+ map: the header written back as it was
    os.utime(touched, ns=(1, 10**18))  # and a backup restoring another time
    pixels = mrcfile.read(rewritten).copy()
    pixels += 1.0  # Warp re-processed the movie: same size, other bytes
    with open(rewritten, "r+b") as handle:
        handle.seek(1024)
        handle.write(pixels.astype("<f4").tobytes())
    os.utime(rewritten, ns=(1, 10**18 + 1))  # (within a clock tick of the import, it had its time)
    images = open_images(store.images_path)
    reads = []
    real = warp_module.stack_fingerprint
    monkeypatch.setattr(warp_module, "stack_fingerprint",
                        lambda path: reads.append(path) or real(path))
    assert images.usable().tolist() == [True] * 20 + [False] * 20
    assert images.changed_stacks() == [warp.stack_name(1)]
    np.testing.assert_array_equal(images[[3]][0], warp.images(0)[3])
    assert images.usable().sum() == 20 and len(reads) == 2  # each verdict kept while unchanged


def test_a_format_3_store_gets_fingerprints_for_the_stacks_it_still_holds(warp, tmp_path):
    """Stamps of format 3 are size and time only: on opening, those that still hold get a
    fingerprint (a later touch keeps their particles); those that changed stay left out."""
    store = in_place_store(warp, tmp_path / "out")
    table = store.read_table()
    stamps = table["SRCSTAMP"].tolist()
    assert all(stamp.count(":") == 2 for stamp in stamps)
    table["SRCSTAMP"] = [stamp.rpartition(":")[0] for stamp in stamps]  # as format 3 wrote
    store._replace_star(table, format=3)
    os.utime(warp.stack_path(1), ns=(1, 10**18))  # touched before the upgrade: not provable

    upgraded = ParticleStore(tmp_path / "out")
    assert store_state(upgraded)["format"] == FORMAT and upgraded.count == 40
    new = upgraded.read_table()["SRCSTAMP"].tolist()
    assert new[:20] == stamps[:20] and new[20:] == [s.rpartition(":")[0] for s in stamps[20:]]
    os.utime(warp.stack_path(0), ns=(1, 10**18))  # touched after it
    assert open_images(upgraded.images_path).usable().tolist() == [True] * 20 + [False] * 20


CUT_WHILE_READ = """
import os, sys
from pathlib import Path
from live2d.source_images import SourceImages
from live2d.warp import stack_stamp
stack = Path(sys.argv[1])
images = SourceImages(stack.parent, [f"{i}@{stack.name}" for i in range(1, 21)],
                      [stack_stamp(stack)] * 20, 32)
images[[0]]  # opened (formerly memory-mapped) for this cycle
os.truncate(stack, 1024)  # Warp re-processing the movie
try:
    images[[19]]
except OSError as exc:
    print(type(exc).__name__, exc)
print(images.usable().tolist() == [False] * 20)
"""


def test_a_stack_cut_short_while_it_is_read_raises_an_error_not_sigbus(warp):
    result = subprocess.run([sys.executable, "-c", CUT_WHILE_READ, str(warp.stack_path(0))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"killed by signal {-result.returncode}" \
        if result.returncode < 0 else result.stderr
    said, usable = result.stdout.splitlines()
    assert said.startswith("StackChanged") and "changed while it was read" in said
    assert usable == "True"


def test_a_grown_stores_images_are_its_earlier_ones_plus_the_new_particles(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for m in range(3):
        with mrcfile.new(root / f"m{m}.mrcs") as mrc:
            mrc.set_data(np.arange(256, dtype=np.float32).reshape(4, 8, 8) + 1000 * m)
    names = [f"{i}@m{m}.mrcs" for m in range(3) for i in range(1, 5)]
    whole = SourceImages(root, names, ["a"] * 8 + ["b"] * 4, 8)
    grown = SourceImages(root, names[:5], ["a"] * 5, 8).extended(names[5:], ["a"] * 3 + ["b"] * 4)
    for attribute in ("index", "stack_of"):
        np.testing.assert_array_equal(getattr(grown, attribute), getattr(whole, attribute))
    assert grown.stacks == whole.stacks and grown.stamp_of_stack == whole.stamp_of_stack
    np.testing.assert_array_equal(grown[np.arange(12)], whole[np.arange(12)])


def test_images_opened_while_rows_are_appended_are_read_again_once_they_are_committed(
        warp, tmp_path, monkeypatch):
    # A session's curation thread may open the images while the import, on another thread, has
    # written the new rows to the store's star but not yet committed them (the demo's streaming
    # update then found 1,400 images for its 1,600 particles, and every retry too).
    store = in_place_store(warp, tmp_path / "out")
    warp.add_micrographs(1)
    importer = Importer(warp.folder, store, copy_images=False)
    opened_mid_append = []
    commit = ParticleStore._commit

    def open_then_commit(self, **changes):
        opened_mid_append.append(len(open_images(self.images_path)))
        commit(self, **changes)

    monkeypatch.setattr(ParticleStore, "_commit", open_then_commit)
    assert importer.poll_reimporting().new_particles == 20
    assert opened_mid_append == [40]  # the rows were in the star, not yet in the store
    images = open_images(store.images_path)
    assert len(images) == store.count == 60
    np.testing.assert_array_equal(images[[45]][0], warp.images(2)[5])
