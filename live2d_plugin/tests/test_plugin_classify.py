"""ProtLive2DClassify2D: the built-in engine on a growing set, and the cisTEM path with the
stand-in programs of tests/cistem_standin; outputParticles (the selected classes' particles) and
the quality of every class, and a later protocol taking those particles; the input's particles
read in place, from Warp's stacks or from a copying import's growing store, never copied."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import sys
import unittest
from pathlib import Path
from unittest import mock

import mrcfile
import numpy as np
from plugin_test_helpers import BOX, PIXEL_SIZE, ProjectTestCase, output_size, simulate_warp
from pwem.objects import SetOfAverages, SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtSplitSet
from pyworkflow.protocol.constants import MODE_RESUME

from live2d.collection_yield import read_table
from live2d.curation import curate_cycle
from live2d.history import CycleRecord, particle_table, read_history
from live2d.mrc import HEADER_BYTES
from live2d.output_folder import SESSION_STATE
from live2d.schedule import Settings, plan_job
from live2d.selection import SelectionState, mark, selected, selected_particles
from live2d.session import Session
from live2d.session_state import JobState, SessionState
from live2d.store import ParticleStore, read_committed_table
from live2d.warp import split_image_name, stack_stamp
from live2d_plugin.convert import (
    AT_LIMIT_ATTRIBUTE,
    KEPT_ATTRIBUTE,
    REASON_ATTRIBUTE,
    RESOLUTION_ATTRIBUTE,
    SCORE_ATTRIBUTE,
    SELECTED_ATTRIBUTE,
    cycle_assignments,
)
from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp
from live2d_plugin.viewers.viewer_classify2d import REPORT_NAME, Live2DViewer

STANDIN_PARENT = Path(__file__).resolve().parents[2] / "tests"

# Tiny sessions: 4 classes, a 1-cycle startup ramp and 1 refinement cycle per job.
SMALL_SCHEDULE = {
    "numberOfClasses": 4, "particlesPerClass": 25, "highResInitial": 20.0, "highResFinal": 12.0,
    "startupCycles": 1, "refinementCycles": 1, "maskRadius": 50.0, "numberOfThreads": 2,
}


def classes_of(prot) -> SetOfClasses2D:
    return SetOfClasses2D(filename=prot.outputClasses.getFileName())


def session_state(prot) -> dict:
    state = Path(prot._getExtraPath("live2d", "session.json"))
    return json.loads(state.read_text()) if state.exists() else {}


def history_of(prot) -> list[CycleRecord]:
    return read_history(prot._getExtraPath("live2d"))


def class_members(prot) -> dict[int, dict[int, np.ndarray]]:
    """class id -> {particle id: 2D alignment matrix} of a protocol's outputClasses."""
    classes = classes_of(prot)
    try:
        return {c.getObjId(): {p.getObjId(): p.getTransform().getMatrix().copy() for p in c}
                for c in classes.iterItems()}
    finally:
        classes.close()


def session_log(prot) -> str:
    return Path(prot._getExtraPath("live2d", "live2d.log")).read_text()


def selected_members(test: unittest.TestCase, prot, cycle: int
                     ) -> tuple[dict[int, np.ndarray], list[int]]:
    """id -> alignment of the particles of cycle ``cycle``'s selected classes that the particle
    curation keeps (its junk stays out of outputParticles, in the classes still), and the
    selected classes, from the session files."""
    session_dir = Path(prot._getExtraPath("live2d"))
    record = next(r for r in history_of(prot) if r.number == cycle)
    chosen = sorted(selected(record, SelectionState.load(session_dir)))
    members = class_members(prot)
    star = particle_table(session_dir, record)
    kept = curate_cycle(session_dir, record, Settings().curation_cut, star).keep
    assignments = cycle_assignments(star, read_committed_table(session_dir), kept)
    curated = set(assignments.index[~assignments["kept"]])
    in_classes = {pid: matrix for number in chosen for pid, matrix in members[number].items()}
    test.assertEqual(len(in_classes), selected_particles(record, chosen))
    wanted = {pid: matrix for pid, matrix in in_classes.items() if pid not in curated}
    test.assertEqual(len(wanted), int((kept & star["2DCLS"].isin(chosen)).sum()))
    return wanted, chosen


def check_grown_particles(test: unittest.TestCase, prot, wanted: dict[int, np.ndarray],
                          chosen) -> dict[int, np.ndarray]:
    """outputParticles only grow: they hold every particle of the selected classes of the
    published cycle (``wanted``: id -> alignment) and those that were selected earlier
    (``publishedUnselected`` of them); after the first published cycle, exactly ``wanted``,
    each with that alignment. Returns id -> alignment of the set."""
    test.assertTrue(prot.outputParticles.hasAlignment2D())
    particles = SetOfParticles(filename=prot.outputParticles.getFileName())
    particles.loadAllProperties()
    try:
        test.assertTrue(particles.hasAlignment2D())
        test.assertAlmostEqual(particles.getSamplingRate(), PIXEL_SIZE, places=4)
        got = {}
        for particle in particles:
            test.assertTrue(particle.hasCTF())
            got[particle.getObjId()] = particle.getTransform().getMatrix().copy()
        test.assertEqual(particles.getSize(), len(got))
    finally:
        particles.close()
    test.assertEqual(prot.publishedSelected.get(), len(got))
    test.assertLessEqual(set(wanted), set(got))
    test.assertEqual(prot.publishedUnselected.get(), len(set(got) - set(wanted)))
    cycle = prot.publishedCycle.get()
    if not any(r.number < cycle and r.block != "start" for r in history_of(prot)):
        test.assertEqual(set(got), set(wanted))
        for pid, matrix in got.items():
            np.testing.assert_allclose(matrix, wanted[pid], atol=1e-6)
    summary = "\n".join(prot.summary())
    test.assertIn(f"outputParticles: {len(got)} particles", summary)
    test.assertIn(f"Selected classes of cycle {prot.publishedCycle.get()}: "
                  f"{', '.join(map(str, sorted(chosen))) or '(none)'}", summary)
    return got


class TestClassify(ProjectTestCase):
    def import_protocol(self, warp_dir: Path, timeout_minutes: float, copy: bool = False,
                        epu_dir: Path | None = None):
        return self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                    streamTimeout=timeout_minutes, copyFiles=copy,
                                    epuFolder=str(epu_dir or "")))

    def classify_protocol(self, importer, **params):
        classify = self.new(ProtLive2DClassify2D, engine=1, **{**SMALL_SCHEDULE, **params})
        classify.inputParticles.set(importer)
        classify.inputParticles.setExtended("outputParticles")
        self.proj.saveProtocol(classify)
        return classify

    def check_read_in_place(self, classify, count: int) -> list[str]:
        """The classification's store holds no pixels: its rows name the input's stacks. Every
        particle was in the last cycle (none left out); returns the stacks named."""
        store = ParticleStore(classify._getExtraPath("live2d"))
        self.assertFalse(store.copies_images)
        self.assertEqual(store.count, count)
        self.assertFalse(store.stack_path.exists())  # no pixels, so no stack
        last = history_of(classify)[-1]
        self.assertEqual((last.particles, sum(last.class_counts)), (count, count))
        log = session_log(classify)
        self.assertNotIn("left out", log)
        self.assertIn("the input particles are read where they are, not copied",
                      self.log_tail(classify, 10**6))
        return [split_image_name(name)[1] for name in store.read_table()["ORIGNAME"]]

    def test_an_import_without_copy_is_read_from_warps_stacks_by_either_engine(self) -> None:
        """Two classifications of one closed import, run side by side: the built-in engine's
        reads the particles from Warp's stacks (nothing copied); the cisTEM engine's runs the
        stand-in programs of tests/cistem_standin. (One import for both: each needed the same
        import of the same particles.)"""
        sys.path.insert(0, str(STANDIN_PARENT))
        try:
            from cistem_standin import make_bin_dir
        finally:
            sys.path.remove(str(STANDIN_PARENT))
        bin_dir = make_bin_dir(self.work / "cistem_bin")
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        importer = self.import_protocol(warp_dir, timeout_minutes=0.02)
        self.wait_finished(importer, timeout=90)

        builtin = self.launch(self.classify_protocol(importer))
        cistem = self.new(ProtLive2DClassify2D, engine=2, **SMALL_SCHEDULE)
        cistem.inputParticles.set(importer)
        cistem.inputParticles.setExtended("outputParticles")
        previous = os.environ.get("LIVE2D_CISTEM_BIN")
        os.environ["LIVE2D_CISTEM_BIN"] = str(bin_dir)  # the protocol process inherits it
        try:
            self.assertEqual(cistem.validate(), [])
            self.proj.saveProtocol(cistem)
            self.launch(cistem)
        finally:
            if previous is None:
                os.environ.pop("LIVE2D_CISTEM_BIN")
            else:
                os.environ["LIVE2D_CISTEM_BIN"] = previous

        done = self.wait_finished(builtin, timeout=150)
        stacks = self.check_read_in_place(done, 80)
        self.assertEqual(set(stacks), {str(p.resolve())
                                       for p in (warp_dir / "particles").glob("*.mrcs")})
        self.assertEqual(done.publishedParticles.get(), 80)
        self.check_classes(done, 2, sum(history_of(done)[-1].class_counts))

        done = self.wait_finished(cistem, timeout=150)
        history = history_of(done)
        self.assertEqual(len(history), 3)  # closed input below firstJobAt: one job, whole set
        self.assertTrue(all("refine2d" in record.engine for record in history[1:]),
                        [r.engine for r in history])
        self.check_classes(done, 2, sum(history[-1].class_counts))
        self.assertEqual(done.publishedParticles.get(), 80)

    def test_a_copying_import_is_read_in_place_while_it_still_grows(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        importer = self.import_protocol(warp_dir, timeout_minutes=30.0, copy=True)
        self.wait_until(importer, lambda p: output_size(p)[0] == 80, 90, "80 particles")
        classify = self.launch(self.classify_protocol(importer, firstJobAt=60,
                                                      updateEvery=60))
        first = self.wait_until(classify, lambda p: (p.publishedCycle.get() or 0) >= 2, 120,
                                "the classes of the first job")
        self.assertEqual(first.publishedParticles.get(), 80)

        simulate_warp(warp_dir, particles=160)  # the import appends to its store meanwhile
        self.wait_until(importer, lambda p: output_size(p)[0] == 160, 60,
                        "160 particles").stopStreaming()
        done = self.wait_until(classify, lambda p: p.isFinished()
                               and (p.publishedParticles.get() or 0) == 160, 150,
                               "all 160 particles classified")
        store_stack = Path(self.load(importer)._getExtraPath("store", "particles.mrcs"))
        stacks = self.check_read_in_place(done, 160)  # the first 80 too, after the appends
        self.assertEqual(set(stacks), {str(store_stack.resolve())})
        stamps = set(ParticleStore(done._getExtraPath("live2d")).read_table()["SRCSTAMP"])
        self.assertEqual(stamps, {stack_stamp(store_stack)})
        self.assertTrue(stack_stamp(store_stack).startswith("store:"))
        self.check_classes(done, done.publishedCycle.get(),
                           sum(history_of(done)[-1].class_counts))

    def test_a_stack_opened_in_scipions_viewer_keeps_its_particles_and_a_rewritten_one_is_said(
            self) -> None:
        """pwem's MRC reader maps stacks r+ (their time changes, not their bytes): their
        particles stay in. A stack Warp rewrote since: its particles are left out, and the
        summary and log say so instead of "all classified"."""
        from pwem.emlib.image.image_readers import MRCImageReader

        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        importer = self.import_protocol(warp_dir, timeout_minutes=30.0)
        self.wait_until(importer, lambda p: output_size(p)[0] == 80, 90, "80 particles")
        classify = self.launch(self.classify_protocol(importer, firstJobAt=60,
                                                      updateEvery=60))
        self.wait_until(classify, lambda p: (p.publishedCycle.get() or 0) >= 2, 120,
                        "the classes of the first job")
        viewed, rewritten = sorted((warp_dir / "particles").glob("*.mrcs"))[:2]
        MRCImageReader.getMrcImage(str(viewed)).close()  # what Scipion's viewer does
        pixels = mrcfile.read(rewritten) + 1.0  # Warp re-processed that movie
        with open(rewritten, "r+b") as handle:
            handle.seek(HEADER_BYTES)
            handle.write(pixels.astype("<f4").tobytes())
        os.utime(rewritten, ns=(1, 10**18))  # (a rewrite within a clock tick keeps its time)

        simulate_warp(warp_dir, particles=160)
        self.wait_until(importer, lambda p: output_size(p)[0] == 160, 60,
                        "160 particles").stopStreaming()
        done = self.wait_until(classify, lambda p: p.isFinished()
                               and (p.publishedParticles.get() or 0) == 160, 150,
                               "the last job on 160 particles")
        self.assertNotIn("all 160 particles classified", self.log_tail(done, 10**6))
        self.assertIn("120 of 160 particles classified: 40 were left out",
                      self.log_tail(done, 10**6))
        log = session_log(done)
        self.assertIn("40 particles are left out of this cycle", log)
        self.assertIn(rewritten.name, log)
        self.assertNotIn(viewed.name, log)
        summary = "\n".join(done.summary())
        self.assertIn("40 particles were left out of that cycle", summary)
        last = history_of(done)[-1]
        self.assertEqual((last.particles, last.left_out), (160, 40))

    def check_classes(self, prot, cycle: int, classified: int) -> None:
        """outputClasses hold the given cycle's classes: representatives are that cycle's
        averages, members carry a 2D alignment, and they add up to the particles classified."""
        classes = classes_of(prot)
        try:
            members = 0
            session_dir = Path(prot._getExtraPath("live2d"))
            for class_item in classes.iterItems():
                representative = class_item.getRepresentative()
                index, filename = representative.getLocation()
                self.assertEqual(Path(filename).name, f"cycle_{cycle:03d}.mrcs")
                self.assertEqual(index, class_item.getObjId())
                with mrcfile.open(session_dir / f"cycle_{cycle:03d}.mrc") as mrc:
                    self.assertEqual(mrc.data.shape[-1], BOX)
                self.assertTrue(class_item.hasAlignment2D())
                for particle in class_item:
                    matrix = particle.getTransform().getMatrix()
                    rotation = matrix[:2, :2]
                    np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-6)
                    members += 1
            self.assertEqual(members, classified)
        finally:
            classes.close()
        averages = prot.outputAverages
        self.assertAlmostEqual(averages.getSamplingRate(), PIXEL_SIZE, places=4)
        self.check_class_quality(prot, cycle)
        self.check_selected_particles(prot, cycle)

    def check_class_quality(self, prot, cycle: int) -> None:
        """Every class carries the resolution estimate, score and reason of the cycle's class
        table, whether it is selected, and for a selected class how many of its particles the
        curation keeps."""
        record = next(r for r in history_of(prot) if r.number == cycle)
        session_dir = Path(prot._getExtraPath("live2d"))
        kept = curate_cycle(session_dir, record, Settings().curation_cut).by_number()
        table = json.loads(Path(prot._getExtraPath("live2d", record.class_table))
                           .read_text())
        rows = {row["number"]: row for row in table}
        chosen = selected(record, SelectionState.load(Path(prot._getExtraPath("live2d"))))
        classes = classes_of(prot)
        try:
            seen = 0
            for class_item in classes.iterItems():
                row = rows[class_item.getObjId()]
                resolution = getattr(class_item, RESOLUTION_ATTRIBUTE).get()
                if row["resolution"] is None:
                    self.assertIsNone(resolution)
                else:
                    self.assertAlmostEqual(resolution, row["resolution"], places=3)
                    self.assertGreater(resolution, 0)
                self.assertEqual(getattr(class_item, AT_LIMIT_ATTRIBUTE).get(), row["at_limit"])
                score = getattr(class_item, SCORE_ATTRIBUTE).get()
                self.assertAlmostEqual(score, row["score"], places=3)
                self.assertTrue(0.0 <= score <= 1.0)
                self.assertEqual(getattr(class_item, REASON_ATTRIBUTE).get(), row["reason"])
                self.assertTrue(row["reason"])
                self.assertEqual(getattr(class_item, SELECTED_ATTRIBUTE).get(),
                                 class_item.getObjId() in chosen)
                self.assertEqual(getattr(class_item, KEPT_ATTRIBUTE).get(),
                                 kept[class_item.getObjId()].kept
                                 if class_item.getObjId() in chosen else None)
                seen += 1
            self.assertEqual(seen, sum(1 for c in record.class_counts if c))
        finally:
            classes.close()
        self.check_quality_columns_shown(prot)

    def check_quality_columns_shown(self, prot) -> None:
        """Scipion's metadata viewer, opened on outputClasses, is told to show each class's
        selection, the particles the curation keeps, score and resolution beside its size, and
        they are columns of the file."""
        from pwem.viewers.mdviewer.viewer import MDView

        import live2d_plugin.viewers  # noqa: F401  (Scipion loads it with the plugin's viewers)

        visible, order, _render = MDView(prot.outputClasses, prot, 1).getVisibleAndOrderLabels()
        wanted = [SELECTED_ATTRIBUTE, KEPT_ATTRIBUTE, SCORE_ATTRIBUTE, RESOLUTION_ATTRIBUTE]
        for labels in (visible.split(), order.split()):
            self.assertEqual(labels[labels.index("_size") + 1:][:4], wanted)
        with sqlite3.connect(prot.outputClasses.getFileName()) as connection:
            stored = {label for (label,) in connection.execute(
                "SELECT label_property FROM Classes")}
        self.assertLessEqual(set(wanted), stored)

    def check_selected_particles(self, prot, cycle: int) -> None:
        """outputParticles hold the members of the selected classes of the cycle, as
        live2d.selection counts them from the session files, each with its alignment."""
        wanted, chosen = selected_members(self, prot, cycle)
        self.assertEqual(output_size(prot, "outputClasses")[1],
                         output_size(prot, "outputParticles")[1])  # closed together
        check_grown_particles(self, prot, wanted, chosen)

    def check_downstream(self, classify) -> None:
        """pwem's "split sets" on outputParticles: both halves together are the selected
        particles, with their alignment."""
        self.proj.getRuns(refresh=True)
        particles = self.proj.getProtocol(classify.getObjId()).outputParticles
        expected = classify.publishedSelected.get()
        self.assertGreaterEqual(expected, 2, "the simulated particles make no good class")
        split = self.new(ProtSplitSet, label="split the good particles", numberOfSets=2)
        split.inputSet.set(classify)
        split.inputSet.setExtended("outputParticles")
        self.assertEqual(split.validate(), [])
        # outputAverages too: each class average once, as an image of the cycle's stack. (Both
        # splits run at once: neither needs the other.)
        split_averages = self.new(ProtSplitSet, label="split the averages", numberOfSets=2)
        split_averages.inputSet.set(classify)
        split_averages.inputSet.setExtended("outputAverages")
        self.launch(split)
        self.launch(split_averages)
        done = self.wait_finished(split, timeout=120)
        halves = []
        for name in ("outputParticles01", "outputParticles02"):
            half = SetOfParticles(filename=getattr(done, name).getFileName())
            half.loadAllProperties()
            try:
                self.assertTrue(half.hasAlignment2D())
                halves.append({p.getObjId(): p.getTransform().getMatrix().copy() for p in half})
            finally:
                half.close()
        self.assertEqual(len(halves[0]) + len(halves[1]), expected)
        self.assertEqual(particles.getSize(), expected)
        published = SetOfParticles(filename=particles.getFileName())
        try:
            wanted = {p.getObjId(): p.getTransform().getMatrix().copy() for p in published}
        finally:
            published.close()
        got = {**halves[0], **halves[1]}
        self.assertEqual(set(got), set(wanted))
        for pid, matrix in got.items():
            np.testing.assert_allclose(matrix, wanted[pid], atol=1e-6)
        done = self.wait_finished(split_averages, timeout=120)
        locations = []
        for name in ("outputAverages01", "outputAverages02"):
            half = SetOfAverages(filename=getattr(done, name).getFileName())
            try:
                locations += [average.getLocation() for average in half]
            finally:
                half.close()
        cycle = classify.publishedCycle.get()
        classes = len(next(r for r in history_of(classify) if r.number == cycle).class_counts)
        self.assertEqual(sorted(index for index, _ in locations), list(range(1, classes + 1)))
        self.assertEqual({Path(name).name for _, name in locations}, {f"cycle_{cycle:03d}.mrcs"})

    def test_builtin_engine_on_a_growing_set_republishes_classes(self) -> None:
        warp_dir, epu_dir = self.work / "warp", self.work / "epu"
        # 10 to a micrograph: 24 micrographs in the end, on 2 grid squares of EPU's folder.
        simulate_warp(warp_dir, particles=120, per_micrograph=10, epu_dir=epu_dir)
        # The EPU folder named once, in the import: the classification takes it from there.
        importer = self.import_protocol(warp_dir, timeout_minutes=30.0, epu_dir=epu_dir)
        self.wait_until(importer, lambda p: output_size(p)[0] == 120, 90, "120 particles")
        classify = self.new(ProtLive2DClassify2D, engine=1, firstJobAt=100, updateEvery=100,
                            streamEvery=100, **SMALL_SCHEDULE)
        classify.inputParticles.set(importer)
        classify.inputParticles.setExtended("outputParticles")
        self.proj.saveProtocol(classify)
        self.launch(classify)

        # Job 1 (ab initio: start, 1 startup, 1 refinement cycle) on the first 120 particles.
        first = self.wait_until(classify, lambda p: (p.publishedCycle.get() or 0) >= 2, 120,
                                "the classes of the first job")
        self.assertEqual(first.publishedParticles.get(), 120)
        self.assertIn("cycle 2", "\n".join(first.summary()))
        self.assertEqual(output_size(first, "outputClasses")[1], False)  # still open
        self.check_selected_particles(first, first.publishedCycle.get())
        # A later protocol takes the good particles while the classification goes on.
        self.check_downstream(first)
        # The user marks the largest class junk in Live2D's page: the mark carries over to the
        # next job's cycles, and outputParticles leave that class out from then on.
        session_dir = Path(first._getExtraPath("live2d"))
        record = history_of(first)[-1]
        largest = int(np.argmax(record.class_counts)) + 1
        state = SelectionState.load(session_dir)
        mark(state, record, {largest: "junk"})
        state.save(session_dir)

        # Warp keeps collecting: 120 more
        simulate_warp(warp_dir, particles=240, per_micrograph=10, epu_dir=epu_dir)
        imported = self.wait_until(importer, lambda p: output_size(p)[0] == 240, 60,
                                   "240 particles")
        imported.stopStreaming()  # the session ends: the input set closes
        done = self.wait_finished(classify, timeout=150)

        history = history_of(done)
        self.assertGreaterEqual(len(history), 4)  # job 2 (a streaming update) on the grown set
        # The engine ran with the protocol's threads.
        self.assertEqual(session_state(done)["settings"]["threads"],
                         SMALL_SCHEDULE["numberOfThreads"])
        last = history[-1]
        self.assertEqual(last.particles, 240)
        self.assertEqual(last.job_type, "stream")
        self.assertEqual(done.publishedCycle.get(), last.number)
        self.assertEqual(done.publishedParticles.get(), 240)
        self.assertEqual(done.publishedClassified.get(), sum(last.class_counts))
        self.check_classes(done, last.number, sum(last.class_counts))
        marks = SelectionState.load(Path(done._getExtraPath("live2d")))
        self.assertEqual(marks.cycle, last.number)
        self.assertEqual(marks.marks, {str(largest): "junk"})
        self.assertNotIn(str(largest), done.publishedSelection.get().split(","))
        self.assertLess(done.publishedSelected.get(), sum(last.class_counts))
        summary = "\n".join(done.summary())
        self.assertIn(f"cycle {last.number}", summary)
        self.assertIn("of the 240 particles", summary)
        self.assertEqual(output_size(done, "outputClasses")[1], True)  # closed at the end
        self.check_collection_advice(done)
        # Every cycle's averages stay on disk for the viewer.
        for record in history:
            self.assertTrue(Path(done._getExtraPath("live2d", record.classes)).exists())

    def check_collection_advice(self, prot) -> None:
        """Issue 28 in Scipion: the particles keep their EPU micrograph names, so the yield goes
        by grid square (the form's EPU folder); the summary names the best and the worst
        square and gives the forecast; the viewer draws the squares and writes the report."""
        session_dir = Path(prot._getExtraPath("live2d"))
        squares = read_table(session_dir, "square")
        self.assertEqual(len(squares), 2)
        self.assertTrue(all(row["grid_square"].isdigit() for row in squares))  # EPU's ids
        self.assertEqual(sum(row["micrographs"] for row in squares), 24)
        ranked = sorted(squares, key=lambda row: row["good_fraction"])
        summary = "\n".join(prot.summary())
        self.assertIn(f"Grid squares: 2; the best, {ranked[-1]['grid_square']} "
                      f"({ranked[-1]['good_fraction']:.0%} good particles over "
                      f"{ranked[-1]['micrographs']} micrographs), the worst, "
                      f"{ranked[0]['grid_square']}", summary)
        self.assertIn("Forecast by the classes selected in cycle", summary)
        self.assertIn("good particles:", summary)

        viewer = Live2DViewer(project=self.proj)
        viewer.setProtocol(prot)
        views = viewer._getVisualizeDict()
        figure = views["displaySquares"]("displaySquares")[0].getFigure()
        tiles = [patch for patch in figure.axes[0].patches]
        self.assertEqual(len(tiles), 2)
        # EPU's square images give stage positions (the simulation's: 80 µm apart).
        self.assertIn("at their stage positions", figure._suptitle.get_text())
        centres = sorted(text.get_position() for text in figure.axes[0].texts)
        self.assertAlmostEqual(centres[1][0] - centres[0][0], 80.0, places=1)
        labels = " ".join(text.get_text() for text in figure.axes[0].texts)
        for row in squares:
            self.assertIn(f"{row['grid_square']}\n"
                          f"{row['good_fraction']:.0%} good", labels)
        with mock.patch("webbrowser.open") as opened:
            message = views["displayReport"]("displayReport")[0]
        report = Path(prot._getExtraPath(REPORT_NAME)).resolve()
        self.assertIn(str(report), message.getMessage())
        opened.assert_called_once_with(report.as_uri())
        text = report.read_text()
        self.assertIn("Live2D session report", text)
        for row in squares:
            self.assertIn(row["grid_square"], text)

    def test_stop_ends_after_the_current_cycle_and_continue_resumes(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=120)
        importer = self.import_protocol(warp_dir, timeout_minutes=30.0)
        self.wait_until(importer, lambda p: output_size(p)[0] == 120, 90, "120 particles")
        classify = self.new(ProtLive2DClassify2D, engine=1, firstJobAt=100, updateEvery=100,
                            **SMALL_SCHEDULE)
        classify.inputParticles.set(importer)
        classify.inputParticles.setExtended("outputParticles")
        self.proj.saveProtocol(classify)
        self.launch(classify)
        running = self.wait_until(classify, lambda p: (p.publishedCycle.get() or 0) >= 1, 120,
                                  "the first published cycle")
        running.stopStreaming()  # the right-click STOP STREAMING action
        stopped = self.wait_finished(classify, timeout=90)
        before = history_of(stopped)
        self.assertGreaterEqual(len(before), 2)
        self.assertEqual(output_size(stopped, "outputClasses")[1], True)  # final until resumed
        self.assertEqual(stopped.publishedCycle.get(), before[-1].number)

        simulate_warp(warp_dir, particles=240)
        self.wait_until(importer, lambda p: output_size(p)[0] == 240, 60,
                        "240 particles").stopStreaming()
        self.wait_finished(importer, timeout=60)
        classify.runMode.set(MODE_RESUME)  # the form's Continue
        self.proj.launchProtocol(classify, wait=False)
        done = self.wait_until(classify, lambda p: p.isFinished()
                               and (p.publishedParticles.get() or 0) == 240, 150,
                               "the resumed run to classify all 240 particles")
        after = history_of(done)
        # Resumed, not restarted: the cycles before the stop are kept as they were, numbering
        # goes on, and the run classified the grown set.
        self.assertEqual(after[: len(before)], before)
        self.assertEqual([r.number for r in after], list(range(len(after))))
        self.assertGreater(len(after), len(before))
        self.assertEqual(after[-1].particles, 240)
        self.assertEqual(done.publishedCycle.get(), after[-1].number)
        self.check_classes(done, after[-1].number, sum(after[-1].class_counts))

    def test_the_summary_of_a_run_stopped_part_way_says_where_continue_resumes(self) -> None:
        classify = self.new(ProtLive2DClassify2D, **SMALL_SCHEDULE)
        self.proj.saveProtocol(classify)
        folder = Path(classify._sessionDir())
        folder.mkdir(parents=True)
        plan = [dataclasses.asdict(spec) for spec in plan_job("abinit", Settings(), 1000)]
        state = SessionState(str(self.work), Settings(),
                             job=JobState(2, "abinit", plan, next_index=3), jobs_started=2)
        state.save(folder / SESSION_STATE)
        summary = "\n".join(classify.summary())
        self.assertIn(f"Stopped part-way: job 2 (ab initio) ran 3 of its {len(plan)} cycles; "
                      "Continue resumes it at its cycle 4 (session cycle 0).", summary)
        state.job = None  # the job finished before the stop: nothing left part-way
        state.save(folder / SESSION_STATE)
        self.assertNotIn("part-way", "\n".join(classify.summary()))

    def test_cistem_engine_missing_fails_validation_only_when_chosen(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=40)
        importer = self.import_protocol(warp_dir, timeout_minutes=0.02)
        self.wait_finished(importer, timeout=90)
        previous = os.environ.get("LIVE2D_CISTEM_BIN")
        os.environ["LIVE2D_CISTEM_BIN"] = str(self.work / "no_such_cistem")
        try:
            for engine, fails in ((1, False), (2, True)):
                classify = self.new(ProtLive2DClassify2D, engine=engine, **SMALL_SCHEDULE)
                classify.inputParticles.set(importer)
                classify.inputParticles.setExtended("outputParticles")
                errors = "\n".join(classify.validate())
                self.assertEqual("refine2d" in errors, fails, errors)
        finally:
            if previous is None:
                os.environ.pop("LIVE2D_CISTEM_BIN")
            else:
                os.environ["LIVE2D_CISTEM_BIN"] = previous


def test_session_api_used_by_the_protocol_exists() -> None:
    """The adapter relies on these core entry points; fail loudly if they move."""
    for name in ("import_new", "run_job", "request_stop", "add_listener", "update_settings"):
        assert callable(getattr(Session, name))
