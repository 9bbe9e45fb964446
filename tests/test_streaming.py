"""Streaming updates: which batches an update classifies, the built-in engine's kept sums, and
updates in a session (every particle in the classes once, a kill, the command line)."""

import dataclasses
import itertools
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from test_builtin_engine import BOX, PIXEL, K, N, classified, data, params  # noqa: F401
from test_session import ClosedFolder

from live2d import cistem_star
from live2d.class_quality import half_set_sums
from live2d.cli import main as cli_main
from live2d.engines.base import CycleRequest, Rebuilt, StreamBatch
from live2d.engines.builtin import BuiltinEngine
from live2d.engines.builtin import averages as averages_module
from live2d.engines.builtin.averages import DUPLICATE_SIMILARITY, view_similarity
from live2d.engines.builtin.io import write_classes
from live2d.errors import SessionError
from live2d.history import CycleRecord, particle_table
from live2d.imaging import rotate
from live2d.mrc import read_images
from live2d.output_folder import batch_halves_name, batch_rows_name, batch_sums_name
from live2d.phantom import Phantom
from live2d.schedule import (
    REVISIT_BLOCK,
    AutomaticTrigger,
    Settings,
    automatic_job_due,
    next_job_type,
    plan_job,
)
from live2d.session import Session
from live2d.simulate import simulate
from live2d.source_images import open_images
from live2d.streaming import keeping_up, plan_revisit, plan_update, spare_revisit_due


def record(particles: int, batches=(), credit: int = 0) -> CycleRecord:
    return CycleRecord(number=len(batches), job=1, job_type="stream" if batches else "abinit",
                       block="update", block_cycle=1, job_cycle=1, job_cycles=1, high_res=8.0,
                       fraction=1.0, particles=particles, class_counts=[particles],
                       started=0.0, finished=1.0, engine="builtin", generation=0,
                       particles_per_second=1.0, classes="c.mrc", star="c.star",
                       thumbnails="t", batches=[list(b) for b in batches],
                       revisit_credit=credit)


# ------------------------------------------------------------------------------- the plan
def test_first_update_puts_the_classified_particles_into_batches_of_stream_every():
    settings = Settings(stream_every=1000)
    plan = plan_update(record(2500), 2600, settings, cycle=7)
    assert plan.first and plan.new_particles == 100 and plan.revisited == 0
    assert [b.size for b in plan.batches] == [867, 866, 867]
    assert plan.classify == {b.start for b in plan.batches}
    assert all(b.aligned == 7 for b in plan.batches) and plan.credit == 0


def test_new_particles_come_first_then_the_least_recently_aligned_within_budget():
    settings = Settings(stream_every=1000, stream_revisit=0.5)
    kept = [(0, 1000, 3), (1000, 2000, 2), (2000, 3000, 4), (3000, 4000, 5)]
    plan = plan_update(record(4000, kept), 6000, settings, cycle=6)
    starts = [b.start for b in plan.batches]
    assert starts == [0, 1000, 2000, 3000, 4000, 5000]  # stack order, new ones at the end
    # 2000 new particles buy 1000 re-visited: the batch aligned longest ago (cycle 2).
    assert plan.classify == {1000, 4000, 5000}
    assert plan.new_particles == 2000 and plan.revisited == 1000 and plan.credit == 0
    assert {b.start: b.aligned for b in plan.batches}[1000] == 6
    assert {b.start: b.aligned for b in plan.batches}[0] == 3  # untouched: not re-classified


def test_a_budget_too_small_for_a_batch_is_carried_to_the_next_update():
    settings = Settings(stream_every=1000, stream_revisit=0.5)
    kept = [(0, 1000, 2), (1000, 2000, 3)]
    first = plan_update(record(2000, kept), 2800, settings, cycle=4)
    assert first.classify == {2000} and first.credit == 400  # 800 new buy 400: not a batch
    then = plan_update(record(2800, [*kept, (2000, 2800, 4)], first.credit), 4000, settings,
                       cycle=5)
    assert 0 in then.classify and then.revisited == 1000  # 400 carried + 600 earned


def test_a_small_last_batch_is_classified_again_with_the_next_new_particles():
    settings = Settings(stream_every=1000, stream_revisit=0.0)
    kept = [(0, 1000, 2), (1000, 1100, 3)]
    plan = plan_update(record(1100, kept), 1500, settings, cycle=4)
    assert [(b.start, b.stop) for b in plan.batches] == [(0, 1000), (1000, 1500)]
    assert plan.classify == {1000} and plan.new_particles == 400


def test_an_update_with_nothing_new_revisits_the_oldest_batch():
    settings = Settings(stream_every=1000)
    kept = [(0, 1000, 5), (1000, 2000, 3)]
    plan = plan_update(record(2000, kept), 2000, settings, cycle=6)
    assert plan.classify == {1000} and plan.new_particles == 0


def test_spare_time_revisits_the_least_recently_aligned_as_much_as_an_update_classifies():
    kept = [(0, 1000, 3), (1000, 2000, 2), (2000, 3000, 4), (3000, 3500, 5)]
    # An update classifies (1 + 0.5) x 1000: one whole batch fits, the next does not.
    plan = plan_revisit(record(3500, kept, credit=300), Settings(stream_every=1000), cycle=6)
    assert plan.classify == {1000} and plan.revisited == 1000 and plan.new_particles == 0
    assert [(b.start, b.stop) for b in plan.batches] == [(a, b) for a, b, _ in kept]
    assert {b.start: b.aligned for b in plan.batches} == {0: 3, 1000: 6, 2000: 4, 3000: 5}
    assert plan.credit == 300  # a regular update's budget is not spent here
    wider = plan_revisit(record(3500, kept), Settings(stream_every=2000), cycle=6)
    assert wider.classify == {1000, 0, 2000}  # 3000 particles' worth, oldest first
    small = plan_revisit(record(3500, kept), Settings(stream_every=100), cycle=6)
    assert small.classify == {1000}  # a batch larger than the budget still goes, alone
    with pytest.raises(SessionError, match="no streaming update"):
        plan_revisit(record(3500), Settings(), cycle=6)


def test_spare_revisits_are_due_until_every_batch_is_aligned_after_the_last_update():
    settings = Settings(stream_revisit=0.5)
    abinit = dataclasses.replace(record(2000), number=3, block="refinement")
    update = dataclasses.replace(record(3000, [(0, 2000, 4), (2000, 3000, 4)]), number=4)

    def revisit(number, batches):
        return dataclasses.replace(record(3000, batches), number=number, block=REVISIT_BLOCK)

    assert not spare_revisit_due([abinit], settings)  # no batches: the first update does it
    assert spare_revisit_due([abinit, update], settings)
    half = revisit(5, [(0, 2000, 5), (2000, 3000, 4)])
    assert spare_revisit_due([abinit, update, half], settings)
    swept = revisit(6, [(0, 2000, 5), (2000, 3000, 6)])
    assert not spare_revisit_due([abinit, update, half, swept], settings)  # rests
    newer = dataclasses.replace(record(4000, [(0, 2000, 5), (2000, 3000, 6), (3000, 4000, 7)]),
                                number=7)
    assert spare_revisit_due([abinit, update, half, swept, newer], settings)
    assert not spare_revisit_due([abinit, update], Settings(stream_revisit=0.0))


def test_a_stream_job_is_one_update_at_the_final_limit():
    (spec,) = plan_job("stream", Settings(high_res_final=9.0), 10)
    assert (spec.kind, spec.block, spec.high_res, spec.fraction) == ("stream", "update", 9.0, 1.0)


def test_streaming_updates_trigger_on_new_particles_or_on_time():
    settings = Settings(mode="stream", stream_every=1000, stream_interval=300)
    assert automatic_job_due(settings, 51_000, 50_000)
    assert not automatic_job_due(settings, 50_500, 50_000, since_last_job=299)
    assert automatic_job_due(settings, 50_001, 50_000, since_last_job=301)
    assert not automatic_job_due(settings, 50_000, 50_000, since_last_job=10_000)
    assert not automatic_job_due(dataclasses.replace(settings, mode="seeded"), 51_000, 50_000)
    trigger = AutomaticTrigger()
    assert trigger.due(settings, 51_000, 50_000, False) == (True, "")


# ------------------------------------------------------------------ the engine's kept sums
def update_request(folder: Path, name: str, p, star, classes, batches, seed=5) -> CycleRequest:
    """An update of ``batches``; its input star holds the rows of those it classifies, as the
    session writes it, each batch's rows kept in a file of their own."""
    table = cistem_star.read_star(star)
    rows = [table.iloc[b.start:b.stop] for b in batches if b.classify]
    star_in = folder / f"{name}_input.star"
    cistem_star.write_star(star_in, pd.concat(rows, ignore_index=True))
    for b in batches:
        cistem_star.write_star(b.rows, table.iloc[b.start:b.stop])
    return CycleRequest(folder / "particles.mrcs", star_in, folder / f"{name}.star",
                        folder / f"{name}.mrc", p, K, classes_in=classes, threads=1, seed=seed,
                        batches=tuple(batches))


def batches_of(folder: Path, tag: str, edges, classify) -> list[StreamBatch]:
    return [StreamBatch(a, b, folder / f"{tag}_{a}.pt", folder / f"{tag}_{a}.pt", a in classify,
                        folder / f"{tag}_{a}_rows.star")
            for a, b in itertools.pairwise(edges)]


@pytest.fixture(scope="module")
def full_and_update(data, classified):  # noqa: F811
    """One full cycle and one update classifying every batch, same classes and seed."""
    folder, truth = data
    _, classes, star = classified
    engine, p = BuiltinEngine("cpu"), params(truth)
    full = CycleRequest(folder / "particles.mrcs", star, folder / "full.star",
                        folder / "full.mrc", p, K, classes_in=classes, threads=1, seed=5)
    engine.run_cycle(full, lambda _: None, threading.Event())
    edges = [0, 100, 250, N]
    update = update_request(folder, "all", p, star, classes,
                            batches_of(folder, "s", edges, set(edges)))
    result = engine.run_update(update, lambda _: None, threading.Event())
    return folder, engine, p, classes, star, edges, full, update, result


def test_an_update_of_every_batch_equals_a_full_cycle(full_and_update):
    *_, full, update, result = full_and_update
    a, b = read_images(full.classes_out), read_images(update.classes_out)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    full_rows, rows = cistem_star.read_star(full.star_out), cistem_star.read_star(update.star_out)
    for column in ("2DCLS", "PSI", "SHX", "SHY"):
        np.testing.assert_allclose(rows[column], full_rows[column], atol=1e-3)
    assert sum(result.class_counts) == N and result.particles_processed == N


def test_a_revisited_batch_replaces_its_sums_and_is_never_counted_twice(full_and_update):
    folder, engine, p, classes, star, edges, _, update, _ = full_and_update
    before = {b.start: torch.load(b.sums, weights_only=True)["mass"] for b in update.batches}
    again = update_request(folder, "again", p, star, classes,
                           batches_of(folder, "s", edges, {100}))
    result = engine.run_update(again, lambda _: None, threading.Event())
    # The same batch against the same classes: the same sums, so the same classes. Added a
    # second time, its particles would weigh double and the averages would move.
    a, b = read_images(update.classes_out), read_images(again.classes_out)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert result.particles_processed == 150 and sum(result.class_counts) == N
    assert torch.allclose(torch.load(folder / "s_100.pt", weights_only=True)["mass"],
                          before[100])
    # The star written holds the rows of the batch classified, and only those.
    rows = cistem_star.read_star(again.star_out)
    assert rows["POS"].tolist() == list(range(101, 251))
    before = cistem_star.read_star(update.star_out)["2DCLS"]
    assert rows["2DCLS"].tolist() == before[100:250].tolist()


def test_kept_sums_of_another_mask_are_remade_and_the_log_says_so(full_and_update):
    folder, engine, p, classes, star, edges, *_ = full_and_update
    wider = dataclasses.replace(p, mask_radius=p.mask_radius + 6.0)
    fresh = update_request(folder, "fresh", wider, star, classes,
                           batches_of(folder, "w", edges, set(edges)))
    engine.run_update(fresh, lambda _: None, threading.Event())
    stale = update_request(folder, "stale", wider, star, classes,
                           batches_of(folder, "s", edges, {250}))
    result = engine.run_update(stale, lambda _: None, threading.Event())
    assert result.rebuilt == Rebuilt((0, 100), 250, ("made with another mask",))
    assert set(result.batches_classified) == set(edges[:-1])
    assert result.particles_processed == N  # every batch, not only the one asked for
    a, b = read_images(fresh.classes_out), read_images(stale.classes_out)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    # The angle grid is not part of what kept sums must match: they are in the classes' frames.
    finer = dataclasses.replace(wider, angular_step=wider.angular_step / 2)
    kept = update_request(folder, "finer", finer, star, classes,
                          batches_of(folder, "s", edges, {250}))
    result = engine.run_update(kept, lambda _: None, threading.Event())
    assert result.rebuilt is None and result.batches_classified == (250,)


def test_a_turned_moved_copy_is_a_duplicate_but_other_views_and_mirrors_are_not():
    phantom = Phantom(BOX, PIXEL, n_views=6, seed=3)
    views = torch.as_tensor(phantom.views)
    turned = rotate(views[:1], np.array([73.0])).roll((3, -2), dims=(1, 2))  # off any grid
    mirrored = views[:1].flip(-1)
    similarity = view_similarity(torch.cat([views, turned, mirrored]),
                                 0.6 * phantom.diameter / PIXEL)[0]
    assert similarity[6] >= DUPLICATE_SIMILARITY
    assert (similarity[[1, 2, 3, 4, 5, 7]] < DUPLICATE_SIMILARITY).all(), similarity


def duplicated_classes(classes: Path, folder: Path) -> Path:
    """``classes`` with the last class replaced by the one before it, turned: one view in two
    classes, as an update can leave them."""
    averages = torch.as_tensor(read_images(classes).copy())
    averages[K - 1] = rotate(averages[K - 2:K - 1], np.array([90.0]))[0]
    write_classes(folder / "duplicated.mrc", averages, PIXEL)
    return folder / "duplicated.mrc"


def test_a_class_duplicating_another_is_reseeded_and_its_kept_members_wait(
        data, classified, tmp_path, monkeypatch):  # noqa: F811
    folder, truth = data
    _, classes, star = classified
    engine, p = BuiltinEngine("cpu"), params(truth)
    edges = [0, 100, 250, N]
    # Every batch classified against two classes of one view, as before re-seeding existed:
    # each keeps about half of that view's particles.
    monkeypatch.setattr(averages_module, "DUPLICATE_SIMILARITY", 2.0)
    both = update_request(folder, "dup_all", p, star, duplicated_classes(classes, tmp_path),
                          batches_of(tmp_path, "d", edges, set(edges)))
    before = engine.run_update(both, lambda _: None, threading.Event())
    assert not before.reseeded and min(before.class_counts[K - 2:]) > 0
    monkeypatch.undo()
    rows = cistem_star.read_star(both.star_out)
    then = update_request(folder, "dup_then", p, both.star_out, both.classes_out,
                          batches_of(tmp_path, "d", edges, {250}))
    result = engine.run_update(then, lambda _: None, threading.Event())
    [reseeded] = result.reseeded
    assert {reseeded.cls, reseeded.duplicated} == {K - 2, K - 1}
    assert reseeded.similarity >= DUPLICATE_SIMILARITY
    assert reseeded.source not in (reseeded.cls, reseeded.duplicated)
    assert reseeded.sentence() == (f"class {reseeded.cls + 1} duplicated class "
                                   f"{reseeded.duplicated + 1} (similarity "
                                   f"{reseeded.similarity:.2f}): re-seeded from class "
                                   f"{reseeded.source + 1}")
    # The kept batches count nothing for the re-seeded class: their members of it wait.
    kept_members = int((rows["2DCLS"].iloc[:250] == reseeded.cls + 1).sum())
    assert result.waiting == kept_members > 0
    assert sum(result.class_counts) + result.waiting == N
    # The batch classified now was classified again against the re-seeded class: its rows
    # are what the class holds.
    now = cistem_star.read_star(then.star_out)
    assert result.class_counts[reseeded.cls] == int((now["2DCLS"] == reseeded.cls + 1).sum())
    assert result.particles_processed == 2 * (N - 250)
    assert any("classified twice" in line for line in result.log)


def test_engines_that_do_not_stream_say_so():
    from live2d.engines.base import Engine
    from live2d.engines.cistem import CistemEngine
    from live2d.errors import EngineError

    assert BuiltinEngine("cpu").streams and CistemEngine.streams and not Engine.streams
    with pytest.raises(EngineError, match="does not run streaming updates"):
        Engine.run_update(CistemEngine.__new__(CistemEngine), None, None, None)  # type: ignore
    assert next_job_type("abinit") == "stream"
    assert next_job_type("abinit", streams=False) == "seeded"


# --------------------------------------------------------------------------- in a session
def grow(warp: Path, particles: int) -> None:
    simulate(warp, particles=particles, per_micrograph=60, box=48, pixel_size=3.0, snr=0.5,
             views=4, seed=0)


STREAM = {"classes": 4, "particles_per_class": 40, "startup_cycles": 1, "refinement_cycles": 1,
          "high_res_initial": 20.0, "high_res_final": 12.0, "threads": 1,
          "first_job_at": 200, "stream_every": 100, "stream_revisit": 0.5}


def exported_rows(out: Path, tmp: Path, classes: int) -> int:
    star = tmp / "all.star"
    assert cli_main(["export", str(out), "--to", str(star), "--whole-classes", "--classes",
                     ",".join(str(k + 1) for k in range(classes))]) == 0
    return len(starfile.read(star)["particles"])


def test_updates_after_abinit_keep_every_particle_in_the_classes_once(tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 240)
    started = time.time()
    session = Session(warp, settings=Settings(**STREAM), engine="builtin")
    assert session.run_job("abinit") and session.settings.mode == "stream"
    for particles in (360, 420, 420):
        grow(warp, particles)
        assert session.run_job()
        latest = session.history[-1]
        assert latest.job_type == "stream" and latest.particles == particles
        covered = sorted(i for a, b, _ in latest.batches for i in range(a, b))
        assert covered == list(range(particles))  # each one, once
        assert sum(latest.class_counts) == particles
        if latest.new_particles:  # from their stacks being written to the classes
            p50, p99, longest = latest.latency
            assert 0 < p50 <= p99 <= longest < time.time() - started
        assert exported_rows(session.output_dir, tmp_path, 4) == particles
        # The class quality adds up the batches' kept half-set sums: as if made from scratch.
        halves = sum(torch.load(session.output_dir / "stream" / batch_halves_name(a, c),
                                weights_only=True)["sums"] for a, _, c in latest.batches)
        full = half_set_sums(open_images(session.store.images_path),
                             particle_table(session.output_dir, latest), 4, 3.0,
                             halves.shape[-1], invert=True)
        assert torch.allclose(halves, full, atol=1e-4 * float(full.abs().max()))
        # Only the latest update's batch sums are kept, one file per batch.
        kept = sorted(p.name for p in (session.output_dir / "stream").iterdir())
        assert kept == sorted(name(a, c) for a, _, c in latest.batches
                              for name in (batch_sums_name, batch_halves_name, batch_rows_name))
        assert latest.star == ""  # its star is made from the batches' rows when asked
    first, second, third = session.history[-3:]
    assert first.new_particles == 120 and second.new_particles == 60
    assert third.new_particles == 0 and third.revisited > 0  # nothing new: re-aligns the oldest
    session.close()


def check_every_particle_counted_once(session: Session, tmp_path: Path) -> CycleRecord:
    """The latest update's invariant: its class counts, the particles in its classes and the
    rows an export of every class writes agree; the rest wait, in no class."""
    latest = session.history[-1]
    table = particle_table(session.output_dir, latest)
    in_classes = int((table["2DCLS"] > 0).sum())
    assert sum(latest.class_counts) == in_classes == latest.particles - latest.waiting
    assert exported_rows(session.output_dir, tmp_path, 4) == in_classes
    return latest


def test_a_duplicated_class_in_a_session_is_reseeded_and_its_old_members_revisited_first(
        tmp_path, monkeypatch, caplog):
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**{**STREAM, "stream_revisit": 2.0}),
                      engine="builtin")
    assert session.run_job("abinit")
    abinit = session.history[-1]
    shutil.copyfile(duplicated_classes(session.output_dir / abinit.classes, tmp_path),
                    session.output_dir / abinit.classes)
    # The first update puts every particle into batches with one view in two classes, as
    # updates did before re-seeding existed.
    monkeypatch.setattr(averages_module, "DUPLICATE_SIMILARITY", 2.0)
    assert session.run_job()
    monkeypatch.undo()
    grow(warp, 300)
    with caplog.at_level(logging.INFO, logger="live2d"):
        assert session.run_job()
    update = check_every_particle_counted_once(session, tmp_path)
    assert update.reseeded and update.waiting > 0
    assert [update.class_valid_from[c - 1] for c in update.reseeded] == \
        [update.number] * len(update.reseeded)
    assert any(f"class {update.reseeded[0]} duplicated class" in r.getMessage()
               for r in caplog.records)
    # Only particles classified against the re-seeded class are in it.
    table = particle_table(session.output_dir, update)
    aligned = np.concatenate([[cycle] * (b - a) for a, b, cycle in update.batches])
    assert (aligned[table["2DCLS"].isin(update.reseeded).to_numpy()] == update.number).all()
    waiting = {a for a, _, cycle in update.batches if cycle < update.number}
    grow(warp, 360)  # re-visits 160 particles: the two batches whose particles wait, first
    assert session.run_job()
    latest = check_every_particle_counted_once(session, tmp_path)
    assert waiting == {a for a, _, cycle in latest.batches
                       if cycle == latest.number and a < update.particles}
    assert latest.waiting == 0 and latest.class_valid_from == []
    assert sum(latest.class_counts) == latest.particles


def session_log(session: Session) -> list[str]:
    """The messages of the session's log file, at its own level: what the user reads."""
    text = session.output.log.read_text(encoding="utf-8")
    return [line.split(" ", 3)[3] for line in text.splitlines()]  # date time LEVEL message


@pytest.mark.parametrize("change, why", [
    ({"mask_radius": 40.0}, "mask"),
    ({"high_res_final": 20.0}, "working box and band"),  # 12 Å to 20 Å: a smaller working box
])
def test_kept_sums_made_unfit_by_a_changed_setting_are_remade_and_the_session_log_says_so(
        tmp_path, change, why):
    """The class count cannot change within streaming (an update keeps its classes; only an
    ab initio job makes new ones, and the update after it classifies every particle): the
    mask and the limit, through the band and the working box, can."""
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**STREAM), engine="builtin")
    assert session.run_job("abinit")
    assert session.run_job()  # the first update: every particle into batches
    first = session.history[-1]
    session.update_settings(change)
    grow(warp, 300)
    assert session.run_job()
    latest = check_every_particle_counted_once(session, tmp_path)
    assert all(c == latest.number for _, _, c in latest.batches)  # every kept batch remade
    lines = session_log(session)
    [planned] = [re.fullmatch(rf"cycle {latest.number} \(job \d+, streaming update\) at "
                              r"[\d.]+ Å: (\d+) new particles, (\d+) re-visited, \d+ batches "
                              "in the classes", line) for line in lines
                 if line.startswith(f"cycle {latest.number} (") and "streaming" in line]
    [remade] = [re.fullmatch(rf"cycle {latest.number}: kept class sums of (\d+) batch\(es\) "
                             rf"do not fit this update \(made with another {why}\): their "
                             r"(\d+) particles were classified again, (\d+) re-visited in all",
                             line) for line in lines
                if line.startswith(f"cycle {latest.number}: kept")]
    assert planned and remade, lines
    assert 0 < int(remade[1]) <= len(first.batches) and int(remade[2]) > 0
    # The plan's re-visits and the remade batches' particles: what the record counts.
    assert int(planned[1]) == latest.new_particles == 60
    assert int(planned[2]) + int(remade[2]) == int(remade[3]) == latest.revisited == 240
    session.close()


def test_a_class_left_empty_in_a_session_is_reseeded_and_the_log_says_which(tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**STREAM), engine="builtin")
    assert session.run_job("abinit")
    abinit = session.output_dir / session.history[-1].classes
    averages = torch.as_tensor(read_images(abinit).copy())
    averages[2] = 0.0  # attracts nobody: the first update, classifying every particle, empties it
    write_classes(tmp_path / "blank.mrc", averages, PIXEL)
    shutil.copyfile(tmp_path / "blank.mrc", abinit)
    assert session.run_job()
    update = check_every_particle_counted_once(session, tmp_path)
    assert update.class_counts[2] == 0 and update.particles == 240
    assert (f"cycle {update.number}: class 3 was empty: re-seeded from the particles that fit "
            "worst") in session_log(session)
    assert read_images(session.output_dir / update.classes)[2].std() > 0  # can attract some
    grow(warp, 300)
    assert session.run_job()
    check_every_particle_counted_once(session, tmp_path)
    session.close()


def test_an_idle_engine_revisits_every_batch_once_then_rests_and_new_particles_wait(
        tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**STREAM), engine="builtin",
                      particle_feed=lambda store: ClosedFolder(warp, store))
    assert session.run_job("abinit")
    assert not session.spare_revisit_due()  # ab initio classes: the first update comes first
    grow(warp, 420)
    # A closed source: its last update, then spare-time re-visits until swept, then it ends.
    assert session.run_automatic(raise_failures=True) is True
    history = session.history
    update = next(r for r in history if r.job_type == "stream" and r.block == "update")
    spare = [r for r in history if r.number > update.number]
    assert spare and all(r.block == REVISIT_BLOCK and r.new_particles == 0 for r in spare)
    assert min(aligned for _, _, aligned in history[-1].batches) > update.number
    # One batch a cycle (150 particles' budget, batches of 84), least recently aligned first:
    # each batch once, in stack order as they were aligned together.
    assert [r.revisited for r in spare] == [84] * 5
    assert [next(a for a, _, c in r.batches if c == r.number) for r in spare] == \
        [0, 84, 168, 252, 336]
    assert not session.spare_revisit_due()
    jobs = session.state.jobs_started
    assert session.run_automatic(raise_failures=True) is True  # swept: nothing runs
    assert session.state.jobs_started == jobs
    grow(warp, 480)  # particles waiting for an update of their own are not taken in
    assert session.run_job(spare=True) and session.store.count == 480
    revisit = session.history[-1]
    assert revisit.block == REVISIT_BLOCK and revisit.new_particles == 0
    assert revisit.particles == 420 == sum(revisit.class_counts) and revisit.latency == []
    assert exported_rows(session.output_dir, tmp_path, 4) == 420
    session.close()


def test_a_killed_update_runs_again_and_its_left_over_sums_go(tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**STREAM), engine="builtin")
    assert session.run_job("abinit")
    assert session.run_job()  # the first update: every particle into batches
    grow(warp, 330)
    assert session.run_job()
    session.close()
    out = session.output_dir
    history = out / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text("".join(lines[:-1]))  # killed before the update's record was appended
    state = json.loads((out / "session.json").read_text())
    state["job"] = {"number": state["jobs_started"], "job_type": "stream",
                    "plan": [dataclasses.asdict(s) for s in plan_job("stream", Settings(), 1)],
                    "next_index": 0, "failures": 0}
    (out / "session.json").write_text(json.dumps(state))
    orphans = {p.name for p in (out / "stream").iterdir()}
    session = Session(warp, engine="builtin")
    named = {name(a, c) for a, _, c in session.history[-1].batches
             for name in (batch_sums_name, batch_halves_name, batch_rows_name)}
    assert {p.name for p in (out / "stream").iterdir()} == named != orphans
    assert session.run_job()  # the job in progress: the killed update, again
    latest = session.history[-1]
    assert sum(latest.class_counts) == 330 == latest.particles
    assert exported_rows(out, tmp_path, 4) == 330
    session.close()


def test_run_once_streaming_without_classes_says_to_start_ab_initio(tmp_path, capsys):
    warp = tmp_path / "warp"
    grow(warp, 240)
    assert cli_main(["run", str(warp), "--once", "--mode", "stream", "--engine", "builtin",
                     "--classes", "4", "--threads", "1"]) == 1
    assert "run an ab initio job first" in capsys.readouterr().err


def test_keeping_up_from_the_records_and_the_stacks_times():
    # Particles written at t = 0..99 s; cycles ended at 150 s (60 particles) and 400 s (100).
    records = [dataclasses.replace(record(60), number=0, finished=150.0),
               dataclasses.replace(record(100, [(0, 60, 0), (60, 100, 1)]), number=1,
                                   finished=400.0, class_counts=[97])]
    written = np.concatenate([np.arange(100.0), [np.nan] * 20])  # 20 more, not yet classified
    state = keeping_up(records, written)
    assert (state.in_classes, state.imported, state.backlog) == (97, 120, 23)
    assert state.latest_latency == 400.0 - 60.0  # the longest wait among cycle 1's new ones
    latencies = np.concatenate([150.0 - np.arange(60.0), 400.0 - np.arange(60.0, 100.0)])
    assert state.p50 == pytest.approx(np.percentile(latencies, 50))
    assert state.p99 == pytest.approx(np.percentile(latencies, 99))
    assert state.oldest_alignment == 250.0  # batch 0 was classified in cycle 0
    assert "23 waiting" in state.lines()[0] and "p99" in state.lines()[1]


def test_status_shows_whether_a_streaming_session_keeps_up(tmp_path, capsys):
    warp = tmp_path / "warp"
    grow(warp, 240)
    assert cli_main(["run", str(warp), "--once", "--engine", "builtin", "--classes", "4",
                     "--threads", "1", "--startup-cycles", "1", "--refinement-cycles", "1",
                     "--high-res-initial", "20", "--high-res-final", "12"]) == 0
    grow(warp, 300)
    assert cli_main(["run", str(warp), "--once", "--engine", "builtin"]) == 0
    capsys.readouterr()
    assert cli_main(["status", str(warp)]) == 0
    out = capsys.readouterr().out
    assert "streaming: 300 of 300 particles in the classes, 0 waiting" in out
    assert "latency (stack written to particles in the classes)" in out


def test_a_spare_revisit_left_unfinished_is_not_resumed_before_new_particles(tmp_path):
    """A kill during a spare-time re-visit leaves it as the unfinished job: the next run does
    what is due (the new particles' update), not that optional work first."""
    warp = tmp_path / "warp"
    grow(warp, 240)
    session = Session(warp, settings=Settings(**STREAM), engine="builtin")
    assert session.run_job("abinit") and session.run_job("stream")
    session.start_job(spare=True)  # planned, then the process "dies" before its cycle
    session.close()
    grow(warp, 300)
    session = Session(warp, engine="builtin")
    assert session.run_job("stream")
    latest = session.history[-1]
    assert latest.block == "update" and latest.particles == 300 and latest.new_particles == 60
    assert any("spare-time re-visit) left unfinished: not resumed" in line
               for line in session.log_lines)
    session.close()
