"""Streaming updates with the cisTEM engine and the real refine2d and merge2d: an ab initio job,
then updates that classify only their batches and merge every batch's kept dump.

The programs are found as test_cistem_real finds them; this module skips where there are none.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
from test_cistem_real import CISTEM_BIN
from test_streaming import exported_rows, grow, session_log

from live2d.engines.cistem import CistemEngine, _nonzero_classes, find_programs
from live2d.engines.cistem_prompts import merge2d_answers
from live2d.history import particle_table
from live2d.mrc import read_images
from live2d.output_folder import (
    batch_dump_name,
    batch_halves_name,
    batch_rows_name,
    batch_sums_name,
)
from live2d.schedule import Settings
from live2d.session import Session

# 48-px particles at 3 Å: each refine2d takes about a second.
STREAM = {"classes": 3, "particles_per_class": 40, "startup_cycles": 1, "refinement_cycles": 1,
          "high_res_initial": 20.0, "high_res_final": 15.0, "threads": 2,
          "first_job_at": 200, "stream_every": 100, "stream_revisit": 1.0}
KINDS = (batch_sums_name, batch_halves_name, batch_rows_name, batch_dump_name)


def merge_by_hand(dumps: list[Path], folder: Path) -> np.ndarray:
    """merge2d over ``dumps`` in order, run here as a user would, numbered as it reads them."""
    folder.mkdir()
    for number, dump in enumerate(dumps, start=1):
        (folder / f"d_{number}.dat").symlink_to(dump)
    out = folder / "merged.mrc"
    answers = "\n".join(merge2d_answers(out, folder / "d_.dat", len(dumps))) + "\n"
    done = subprocess.run([str(Path(CISTEM_BIN) / "merge2d")], input=answers, text=True,
                          capture_output=True, cwd=folder, check=True)
    assert "Merge2D: Normal termination" in done.stdout
    return read_images(out)


def test_cistem_updates_merge_every_batchs_kept_dump_and_remake_those_of_another_mask(
        tmp_path, caplog):
    """Updates after ab initio merge every batch's kept dump, also after a class was left
    empty; after a mask change, the next update makes every kept batch's dump again. (One
    session for all: each needs an ab initio job and updates before it.)"""
    warp = tmp_path / "warp"
    grow(warp, 240)
    engine = CistemEngine(find_programs(CISTEM_BIN, required=True))
    session = Session(warp, settings=Settings(**STREAM), engine=engine)

    def more_particles_during_the_job(event):
        if event["type"] == "cycle" and event["cycle"]["number"] == 0:
            grow(warp, 260)  # imported during the job: the stack outgrows the job's star

    session.add_listener(more_particles_during_the_job)
    assert session.run_job("abinit") and session.settings.mode == "stream"
    assert session.store.count == 260 and session.history[-1].particles == 240
    out = session.output_dir
    stream = out / "stream"
    orphan = stream / batch_dump_name(0, 999)  # as a killed update would leave it
    kept_before: set[str] = set()
    for particles in (300, 420):
        grow(warp, particles)
        assert session.run_job()  # the session's own choice after ab initio: an update
        latest = session.history[-1]
        assert latest.job_type == "stream" and latest.engine.startswith("cistem")
        assert latest.particles == particles
        covered = sorted(i for a, b, _ in latest.batches for i in range(a, b))
        assert covered == list(range(particles))  # each particle in one batch, once

        # The classes are merge2d's over the kept dumps, in batch order, byte for byte.
        dumps = [stream / batch_dump_name(a, c) for a, _, c in latest.batches]
        by_hand = merge_by_hand(dumps, tmp_path / f"by_hand_{latest.number}")
        assert np.array_equal(read_images(out / latest.classes), by_hand)

        # Every particle in the classes once: counts, the particles' classes, an export.
        table = particle_table(out, latest)
        assert len(table) == particles and table["POS"].tolist() == list(range(1, particles + 1))
        assert sum(latest.class_counts) == particles
        assert latest.class_counts == np.bincount(table["2DCLS"] - 1, minlength=3).tolist()
        assert exported_rows(out, tmp_path, 3) == particles

        # One file of each kind per batch, as the latest record names them: a re-visited
        # batch's dump replaced, not kept beside its new one; a left-over one dropped.
        kept = {p.name for p in stream.iterdir()}
        assert kept == {name(a, c) for a, _, c in latest.batches for name in KINDS}
        revisited = [(a, c) for a, _, c in latest.batches
                     if c == latest.number and batch_dump_name(a, c) not in kept_before
                     and any(n.startswith(f"dump_{a:09d}_") for n in kept_before)]
        if kept_before:
            assert latest.revisited > 0 and revisited
            for a, _ in revisited:
                assert [n for n in kept if n.startswith(f"dump_{a:09d}_")] == \
                    [batch_dump_name(a, latest.number)]
        # Every dump merged holds the same classes, as merge2d requires.
        assert len({_nonzero_classes(d) for d in dumps}) == 1
        kept_before = kept
        orphan.write_bytes(b"left over")
        if particles == 300:
            # A class no particle chose is all zero in merge2d's averages, and refine2d skips
            # it: the next update's dumps lack a class the kept ones hold. (Which class ends
            # empty varies from run to run; here the last one does, for certain.)
            with mrcfile.mmap(out / latest.classes, mode="r+") as mrc:
                mrc.data[2] = 0
            caplog.set_level("DEBUG", logger="live2d")
    assert "lacked classes others hold" in caplog.text
    assert _nonzero_classes(dumps[-1]) == (0, 1, 2)  # padded in place: kept as merged
    session.close()
    assert orphan.exists()
    session = Session(warp, engine=engine)  # opening drops what no record names
    assert not orphan.exists()
    assert {p.name for p in stream.iterdir()} == kept_before

    # Kept dumps made under another mask: merge2d would refuse them beside this update's, so
    # every kept batch is classified again from its kept rows, and the classes merge only this
    # update's dumps; the session's log says so, at its own level.
    first = session.history[-1]
    session.update_settings({"mask_radius": 40.0})
    grow(warp, 480)
    assert session.run_job()
    latest = session.history[-1]
    assert latest.job_type == "stream" and latest.new_particles == 60
    assert all(c == latest.number for _, _, c in latest.batches)
    assert {a for a, _, _ in first.batches} <= {a for a, _, _ in latest.batches}
    [remade] = [re.fullmatch(rf"cycle {latest.number}: kept refine2d dumps of (\d+) batch\(es\) "
                             r"do not fit this update \(made with another (.*)\): their (\d+) "
                             r"particles were classified again, (\d+) re-visited in all", line)
                for line in session_log(session) if line.startswith(f"cycle {latest.number}: kept")]
    assert remade and remade[2].endswith("mask") and int(remade[1]) > 0
    assert int(remade[4]) == latest.revisited == 420 >= int(remade[3]) > 0
    assert sum(latest.class_counts) == 480 == len(particle_table(session.output_dir, latest))
    dumps = [stream / batch_dump_name(a, c) for a, _, c in latest.batches]
    assert np.array_equal(read_images(out / latest.classes),
                          merge_by_hand(dumps, tmp_path / "by_hand_remade"))
    session.close()
