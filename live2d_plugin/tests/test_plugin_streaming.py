"""The classification as Scipion users run it: the workflow template's two chained protocols,
scheduled behind a streaming import, live while the import is still open, with particle subsets
made from chosen classes by pwem's own subset protocol, during the run and after it, next to the
selected classes' particles it publishes itself (outputParticles)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
from plugin_test_helpers import BOX, ProjectTestCase, output_size, simulate_warp
from pwem.emlib.image import ImageHandler
from pwem.objects import SetOfAverages, SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtUserSubSet
from pwem.viewers.mdviewer.readers import ScipionImageReader
from pyworkflow.template import LocalTemplate
from test_plugin_classify import SMALL_SCHEDULE, check_grown_particles, selected_members
from test_plugin_loading import TEMPLATE

from live2d_plugin.protocols import ProtLive2DClassify2D
from live2d_plugin.protocols.protocol_classify2d import _cycleOfSet
from live2d_plugin.viewers.viewer_classify2d import Live2DViewer

# pyworkflow's schedule script, run as `python -m` runs it, with the start of each protocol
# staggered by 12 s per level of the workflow instead of INITIAL_SLEEP_TIME's 30 s: the
# import (level 0) has its output by then, so the classification (level 1) starts at its
# scheduler's first look instead of idling 30 s. (Were the output later, the scheduler's next
# look would start it: slower, not wrong.)
SCHEDULE_SCRIPT = """
import runpy
import pyworkflow.protocol
pyworkflow.protocol.INITIAL_SLEEP_TIME = 12
runpy.run_module("pyworkflow.project.scripts.schedule", run_name="__main__", alter_sys=True)
"""


def members_by_class(classes_file: str) -> dict[int, dict[int, np.ndarray]]:
    """class id -> {particle id: 2D alignment matrix} of a SetOfClasses2D sqlite."""
    classes = SetOfClasses2D(filename=classes_file)
    try:
        return {cls.getObjId(): {p.getObjId(): p.getTransform().getMatrix().copy() for p in cls}
                for cls in classes.iterItems()}
    finally:
        classes.close()


def class_members(classes_file: str) -> dict[int, set[int]]:
    """class id -> the ids of its particles, of a SetOfClasses2D sqlite."""
    return {number: set(members) for number, members in members_by_class(classes_file).items()}


class StreamingTestCase(ProjectTestCase):
    def subset_from_classes(self, classify, class_ids: list[int], tag: str):
        """What Scipion's metadata viewer does on "select classes > + Particles": a selection
        file of class ids and a ProtUserSubSet whose input is the classes object as the project
        holds it (pyworkflow/gui/project/project.py handles the viewer's 'run protocol')."""
        self.proj.getRuns(refresh=True)  # what the project window's refresh does
        project_classes = self.proj.getProtocol(classify.getObjId()).outputClasses
        selection = Path(self.proj.path, "Logs", f"selection_{tag}.txt")
        selection.write_text("".join(f"{number} " for number in class_ids))
        subset = self.proj.newProtocol(ProtUserSubSet)
        subset.inputObject.set(self.proj.getObject(project_classes.getObjId()))
        subset.sqliteFile.set(f"{selection.relative_to(self.proj.path)},")
        subset.outputClassName.set("SetOfParticles")
        subset.setObjLabel(f"good classes {tag}")
        self.proj.launchProtocol(subset, wait=True)
        done = self.load(subset)
        self.assertTrue(done.isFinished(), f"{done.getErrorMessage()}\n{self.log_tail(subset)}")
        return done, project_classes.getFileName()

    def check_subset(self, subset, classes_file: str, class_ids: list[int]) -> None:
        """The subset holds exactly the chosen classes' particles, each with its alignment."""
        members = members_by_class(classes_file)
        expected = {pid: matrix for number in class_ids for pid, matrix in members[number].items()}
        self.assertGreater(len(expected), 0)
        self.assertTrue(subset.outputParticles.hasAlignment2D())
        particles = SetOfParticles(filename=subset.outputParticles.getFileName())
        particles.loadAllProperties()
        try:
            self.assertTrue(particles.hasAlignment2D())
            got = {p.getObjId(): p.getTransform().getMatrix().copy() for p in particles}
            self.assertTrue(all(p.hasCTF() for p in particles))
        finally:
            particles.close()
        self.assertEqual(set(got), set(expected))
        for pid, matrix in got.items():
            np.testing.assert_allclose(matrix, expected[pid], atol=1e-6)

    def check_averages_are_2d_stacks(self, classify) -> None:
        averages = SetOfAverages(filename=classify.outputAverages.getFileName())
        try:
            items = [a.clone() for a in averages]
        finally:
            averages.close()
        handler = ImageHandler()
        self.assertGreater(len(items), 0)
        for number, average in enumerate(items, start=1):
            index, filename = average.getLocation()
            self.assertEqual(index, number)
            self.assertTrue(filename.endswith(".mrcs"), filename)
            self.assertEqual(average.getDim(), (BOX, BOX, 1))
            # Scipion's metadata viewer opens the image of that class, not a slice of a volume.
            shown = np.asarray(ScipionImageReader.open(f"{index}@{filename}"), dtype=float)
            with mrcfile.open(filename, permissive=True) as mrc:
                written = np.asarray(mrc.data[index - 1], dtype=float)
            self.assertGreater(np.corrcoef(shown.ravel(), written.ravel())[0, 1], 0.99)
        self.assertEqual(handler.getDimensions(items[0].getFileName()), (BOX, BOX, 1, len(items)))
        classes = SetOfClasses2D(filename=classify.outputClasses.getFileName())
        try:
            for cls in classes.iterItems():
                representative = cls.getRepresentative()
                self.assertEqual(representative.getDim(), (BOX, BOX, 1))
                self.assertTrue(representative.getFileName().endswith(".mrcs"))
        finally:
            classes.close()

    def check_selected_particles(self, classify, closed: bool,
                                 earlier: dict | None = None) -> dict:
        """outputParticles: the members of the classes the run selected, closed with
        outputClasses; what an earlier look found there is there still, unchanged."""
        wanted, chosen = selected_members(self, classify, classify.publishedCycle.get())
        self.assertEqual(chosen, [int(n) for n in classify.publishedSelection.get().split(",")
                                  if n])
        self.assertEqual(output_size(classify, "outputParticles")[1], closed)
        got = check_grown_particles(self, classify, wanted, chosen)
        for pid, matrix in (earlier or {}).items():
            np.testing.assert_array_equal(got[pid], matrix)
        return got

    def run_live(self, importer, classify, warp_dir: Path) -> None:
        """The first classes appear while the import is open; more particles arrive, the import
        closes, and the classification then classifies them all and finishes."""
        first = self.wait_until(classify, lambda p: (p.publishedCycle.get() or 0) >= 2, 240,
                                "the first classes while the import is open")
        self.assertEqual(output_size(self.load(importer)), (120, False))  # still streaming
        self.assertEqual(first.publishedParticles.get(), 120)
        self.check_averages_are_2d_stacks(first)
        published = self.check_selected_particles(first, closed=False)

        chosen = sorted(members_by_class(first.outputClasses.getFileName()))[:2]
        subset, classes_file = self.subset_from_classes(first, chosen, "during")
        self.check_subset(subset, classes_file, chosen)
        # The file a project window that refreshed then holds and opens (issue 21, item 2).
        shown_cycle, shown_members = _cycleOfSet(classes_file), class_members(classes_file)
        shown_file = classes_file

        simulate_warp(warp_dir, particles=240)  # Warp keeps collecting
        self.wait_until(importer, lambda p: output_size(p)[0] == 240, 90,
                        "240 particles").stopStreaming()
        done = self.wait_until(classify, lambda p: p.isFinished()
                               and (p.publishedParticles.get() or 0) == 240, 240,
                               "all 240 particles classified")
        self.check_averages_are_2d_stacks(done)
        self.check_selected_particles(done, closed=True, earlier=published)
        # A cycle later (a streaming update; the hour sets are kept is tested on its own).
        self.assertGreaterEqual(done.publishedCycle.get(), shown_cycle + 1)
        self.assertTrue(Path(self.proj.path, classes_file).exists(), classes_file)
        self.assertEqual(class_members(classes_file), shown_members)
        log = Path(self.proj.path, done.getWorkingDir(), "logs", "run.stdout").read_text()
        self.assertIn("outputClasses: cycle", log)
        self.assertIn("outputParticles: cycle", log)
        self.assertNotIn("Getting the dimensions for the first item", log)  # once per class
        chosen = sorted(members_by_class(done.outputClasses.getFileName()))[1:]
        subset, classes_file = self.subset_from_classes(done, chosen, "after")
        self.check_subset(subset, classes_file, chosen)
        # Issue 21, item 1: a subset of the classes of the cycle shown in the viewer holds
        # that cycle's members, whatever cycles were published since.
        self.subset_of_cycle_in_viewer(done, shown_cycle, shown_file, sorted(shown_members)[:2])

    def subset_of_cycle_in_viewer(self, classify, cycle: int, classes_file: str,
                                  chosen: list[int]) -> None:
        self.proj.getRuns(refresh=True)
        viewer = Live2DViewer(project=self.proj)
        viewer.setProtocol(self.proj.getProtocol(classify.getObjId()))
        self.assertGreater(viewer.cycle.get(), cycle)  # the latest by default
        viewer.cycle.set(cycle)
        viewer.subsetClasses.set(" ".join(map(str, chosen)))
        message = viewer._getVisualizeDict()["createSubset"]("createSubset")[0]
        self.assertIn(f"classes {' '.join(map(str, chosen))} of cycle {cycle} launched",
                      message.getMessage())
        subset = viewer.subsetProtocol
        self.launched.append(subset)
        done = self.wait_until(subset, lambda p: p.isFinished(), 60, "the viewer's subset")
        self.check_subset(done, classes_file, chosen)
        newest = members_by_class(classify.outputClasses.getFileName())
        self.assertNotEqual({n: set(newest[n]) for n in chosen},
                            {n: set(m) for n, m in members_by_class(classes_file).items()
                             if n in chosen}, "a later cycle had the same members")


class TestScheduled(StreamingTestCase):
    def test_classification_works_in_streaming(self) -> None:
        # What the scheduler checks before launching a consumer of an open set.
        self.assertTrue(ProtLive2DClassify2D.worksInStreaming())

    def test_workflow_template_scheduled_classifies_while_warp_collects(self) -> None:
        """The template's two chained protocols, scheduled by the schedule script (through
        Project.scheduleProtocol, as the project window's Schedule button), classify while the
        import is open, then every particle once it closes. (One test: a second one scheduling
        the same protocols by hand took as long and covered nothing more.)"""
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=120)
        template = LocalTemplate("live2d_plugin", str(TEMPLATE))
        template.replaceEnvVariables()
        template.parseContent()
        for alias, value in {"warpFolder": str(warp_dir), "timeout": "30", "classes": "4",
                             "firstJobAt": "100", "updateEvery": "1000", "threads": "2"}.items():
            template.setParamValue(alias, value)
        workflow = Path(template.createTemplateFile())
        try:
            # Keep the template's wiring; shorten only its schedule so the test is quick.
            runs = json.loads(workflow.read_text())
            runs[1].update({k: v for k, v in SMALL_SCHEDULE.items()
                            if k not in ("numberOfClasses", "numberOfThreads")})
            workflow.write_text(json.dumps(runs))
            self.proj.loadProtocols(str(workflow))
        finally:
            workflow.unlink()
        # Scheduled as `scipion python -m pyworkflow.project.scripts.schedule NAME` does it.
        # Its schedulers fork off and keep its output open: log to a file, not a pipe.
        with open(self.work / "schedule.log", "wb") as log:
            subprocess.run([sys.executable, "-c", SCHEDULE_SCRIPT, self.proj.getShortName()],
                           check=True, env=os.environ.copy(), stdout=log,
                           stderr=subprocess.STDOUT, timeout=60)
        self.proj = self.reload_project()  # the script changed the project's database
        found = {type(p).__name__: p for p in self.proj.getRuns()}
        importer, classify = found["ProtLive2DImportWarp"], found["ProtLive2DClassify2D"]
        self.launched += [importer, classify]
        self.assertTrue(classify.isScheduled() or classify.isActive())
        self.run_live(importer, classify, warp_dir)

    def reload_project(self):
        from pyworkflow.project import Manager

        self.proj.closeMapper()
        return Manager().loadProject(self.proj.getShortName())
