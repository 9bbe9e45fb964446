"""The plugin as Scipion sees it: entry point, variables, forms, citations, workflow template."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pwem
import pytest
import pyworkflow.protocol.params as params
from plugin_test_helpers import ProjectTestCase
from pwem.objects import SetOfParticles
from pyworkflow.object import Integer, String
from pyworkflow.template import LocalTemplate
from pyworkflow.viewer import DESKTOP_TKINTER

import live2d_plugin
from live2d.history import CycleRecord
from live2d.schedule import Settings
from live2d.simulate import default_settings, write_settings
from live2d_plugin.convert import EPU_FOLDER_ATTRIBUTE
from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp
from live2d_plugin.protocols.protocol_classify2d import (
    PARAM_SETTINGS,
    SCIPION_NOTES,
    engine_text,
)
from live2d_plugin.protocols.protocol_import_warp import CONTRAST_NOTE
from live2d_plugin.viewers import Live2DViewer

REAL_ENTRY_POINT = os.environ.get("LIVE2D_PLUGIN_ENTRY_POINT") == "installed"
TEMPLATE = Path(live2d_plugin.__file__).parent / "templates" / "warp_live2d.json.template"
# Sections pyworkflow's form window (pyworkflow/gui/form.py, _createSections) shows no tab for:
# it renders only its own widgets for them, so a parameter added to them is never seen.
NO_TAB = ("General", "Parallelization")
# In a fresh interpreter: imports the plugin as Scipion's discovery does and says whether torch
# was loaded, with the import chain that first asked for it.
TORCH_PROBE = """
import json, sys, traceback

class Watch:
    chain = ""
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not Watch.chain:
            Watch.chain = "".join(traceback.format_stack())
        return None

sys.meta_path.insert(0, Watch())
import live2d_plugin, live2d_plugin.protocols, live2d_plugin.viewers
print(json.dumps({"torch": "torch" in sys.modules, "chain": Watch.chain}))
"""


def shown_sections(prot) -> list:
    return [s for s in prot.iterDefinitionSections() if s.getLabel() not in NO_TAB]


def shown_params(prot) -> dict:
    return {name: param for section in shown_sections(prot)
            for name, param in section.iterParams()}


def help_without_default_and_range(text: str) -> str:
    return re.sub(r"\b(Default|Allowed|Range)\b.*$", "", text, flags=re.S).strip()


@pytest.mark.skipif(not REAL_ENTRY_POINT, reason="the pyworkflow.plugin entry point is not "
                    "installed yet: add it to setup.py and reinstall (pip install -e .)")
def test_entry_point_registers_the_plugin_with_scipion() -> None:
    (entry,) = [ep for ep in entry_points(group="pyworkflow.plugin")
                if ep.name == "live2d_plugin"]
    assert entry.load() is live2d_plugin
    assert "live2d_plugin" in pwem.Domain.getPlugins()
    protocols = pwem.Domain.getProtocols()
    assert protocols["ProtLive2DImportWarp"] is ProtLive2DImportWarp
    assert protocols["ProtLive2DClassify2D"] is ProtLive2DClassify2D
    viewers = pwem.Domain.findViewers(ProtLive2DClassify2D.__name__, DESKTOP_TKINTER)
    assert Live2DViewer in viewers


def test_the_plugin_loads_through_discovery() -> None:
    """Whatever provides the entry point (the real one or the test shim), pyworkflow's own
    discovery imports the plugin without errors and defines its optional variables."""
    plugins = pwem.Domain.getPlugins()
    assert "live2d_plugin" in plugins
    assert plugins["live2d_plugin"]._pluginInstance is not None
    variables = live2d_plugin.Plugin.getVars()
    assert "LIVE2D_CISTEM_BIN" in variables and "LIVE2D_DEVICE" in variables


def test_importing_the_plugin_loads_no_torch() -> None:
    """Every Scipion process (the scheduler, each protocol, the subset and split tools)
    imports the plugin, its protocols and viewers: torch, about half of that import's time,
    is imported only where a cycle or a measure of images needs it."""
    repo_root = Path(live2d_plugin.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True,
                            cwd=repo_root, check=True)
    probe = json.loads(result.stdout.splitlines()[-1])
    assert not probe["torch"], f"importing the plugin imported torch:\n{probe['chain']}"


def test_scipion_lists_the_workflow_template() -> None:
    """The template launcher (scipion template) offers the plugin's workflow."""
    plugin = pwem.Domain.getPlugins()["live2d_plugin"]._pluginInstance
    assert [t.name for t in plugin.getTemplates()] == ["warp_live2d"]


def test_missing_cistem_never_fails_plugin_validation(monkeypatch) -> None:
    monkeypatch.setenv("LIVE2D_CISTEM_BIN", "/no/such/cistem")
    pwem.Domain.getProtocols()  # registers the protocol classes with their plugin
    assert live2d_plugin.Plugin.validateInstallation() == []
    assert live2d_plugin.Plugin._pathVars == []
    assert ProtLive2DImportWarp.validateInstallation() == []
    assert ProtLive2DClassify2D.validateInstallation() == []


def test_bibtex_has_the_three_citations() -> None:
    from pyworkflow.utils import parseBibTex

    from live2d_plugin import bibtex

    keys = set(parseBibTex(bibtex.__doc__))
    assert keys == {"Barad_Live2D", "Grant2018", "Tegunov2019"}


def test_summary_names_engines_with_their_labels() -> None:
    assert engine_text("builtin (torch 2.3.1, cpu, 2 threads)") == \
        "built-in (torch 2.3.1, cpu, 2 threads)"
    assert engine_text("cistem (refine2d 2.0.0, library 2.0.0, OpenMP)").startswith("cisTEM (")
    assert engine_text("builtin") == "built-in"


def test_past_cycle_999_the_oldest_cycle_sets_are_dropped_not_the_newest(tmp_path) -> None:
    """Streaming sessions pass 1,000 cycles: cycle1000 sorts before cycle999 as text."""
    names = [f"{kind}_cycle{n:03d}.sqlite" for kind in ("classes2D", "averages", "particles")
             for n in (998, 999, 1000, 1001)]
    two_hours_ago = time.time() - 2 * 3600  # replaced long ago: no window can show them
    for name in names:
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (two_hours_ago, two_hours_ago))

    ProtLive2DClassify2D._dropOldCycleSets(ProtocolIn(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{kind}_cycle{n}.sqlite" for kind in ("classes2D", "averages", "particles")
        for n in (1000, 1001))


class ProtocolIn:
    """Stands in for a classification run whose run folder is ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _getPath(self, name: str) -> str:
        return str(self.folder / name)


def test_a_cycle_set_stays_an_hour_after_the_next_cycle_replaced_it(tmp_path) -> None:
    """Scipion's project window opens the file of the outputs as it last refreshed them, up to
    30 minutes ago: a replaced cycle's sets stay 60 minutes, then go (one cycle every 16
    minutes here: cycle 10 now, cycle 9 16 minutes ago, ...)."""
    now = time.time()
    for number in range(1, 11):
        published = now - (10 - number) * 16 * 60
        for kind in ("classes2D", "averages", "particles"):
            path = tmp_path / f"{kind}_cycle{number:03d}.sqlite"
            path.touch()
            os.utime(path, (published, published))

    ProtLive2DClassify2D._dropOldCycleSets(ProtocolIn(tmp_path))
    # Cycle 6 was replaced by cycle 7, 48 minutes ago; cycle 5 by cycle 6, 64 minutes ago.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{kind}_cycle{n:03d}.sqlite" for kind in ("classes2D", "averages", "particles")
        for n in range(6, 11))


class TestForms(ProjectTestCase):
    def test_normal_level_shows_classes_and_when_jobs_start_in_every_tab(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        normal = {name for name, p in shown_params(prot).items()
                  if p.expertLevel.get() == params.LEVEL_NORMAL}
        self.assertTrue({"inputParticles", "classificationType", "numberOfClasses",
                         "maskRadius", "firstJobAt", "updateEvery"} <= normal, normal)
        for section in shown_sections(prot):  # no tab is empty at the Normal level
            levels = [p.expertLevel.get() for _, p in section.iterParams()]
            self.assertIn(params.LEVEL_NORMAL, levels, section.getLabel())
        schedule = next(s for s in shown_sections(prot) if s.getLabel() == "Schedule")
        self.assertIn("firstJobAt", dict(schedule.iterParams()))
        # The page's grouping stays: these are Expert Settings there.
        specs = {spec["name"]: spec for spec in Settings.specs()}
        self.assertEqual({specs[n]["level"] for n in ("classes", "first_job_at",
                                                      "update_every")}, {"expert"})

    def test_every_parameter_has_a_real_help(self) -> None:
        for prot in (self.new(ProtLive2DClassify2D),
                     self.new(ProtLive2DImportWarp, warpFolder=str(self.work))):
            for name, param in shown_params(prot).items():
                text = param.help.get() or ""
                self.assertFalse(text.strip().startswith(("Range", "Allowed")), name)
                self.assertGreater(len(help_without_default_and_range(text)), 60,
                                   f"{name}: {text!r}")
                self.assertLessEqual(text.count("Default:"), 1, name)
        prot = self.new(ProtLive2DClassify2D)
        for param, setting in PARAM_SETTINGS.items():
            self.assertEqual(prot.getParam(param).help.get(),
                             Settings.describe(setting, SCIPION_NOTES.get(setting, "")), param)
        mode = prot.getParam("classificationType")
        self.assertEqual(mode.help.get(), Settings.describe("mode", SCIPION_NOTES["mode"]))
        self.assertEqual(list(mode.choices),
                         ["Ab initio", "Seeded startup", "Refinement", "Streaming"])
        mask = prot.getParam("maskRadius").help.get()
        self.assertEqual(mask.count("empty"), 1, mask)  # one statement of what empty means
        engine = prot.getParam("engine").help.get()
        self.assertTrue(all(label + ":" in engine for label in ("built-in", "cisTEM", "auto")))

    def test_dask_scheduler_is_in_a_visible_tab_before_the_parallel_section(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        labels = [s.getLabel() for s in prot.iterDefinitionSections()]
        holder = next(s.getLabel() for s in prot.iterDefinitionSections()
                      if "daskScheduler" in dict(s.iterParams()))
        self.assertNotIn(holder, NO_TAB)
        self.assertLess(labels.index(holder), labels.index("Parallelization"))
        self.assertEqual(prot.getParam("daskScheduler").expertLevel.get(),
                         params.LEVEL_ADVANCED)

    def test_citations_and_methods_render_without_errors(self) -> None:
        for prot in (self.new(ProtLive2DClassify2D),
                     self.new(ProtLive2DImportWarp, warpFolder=str(self.work))):
            bibtex = prot.getClassPackage()._bibtex
            self.assertIn("Barad_Live2D", bibtex)
            for entry in bibtex.values():  # as Scipion's Cite and Methods tabs render them
                for text in (prot._getCiteText(entry), prot._getCiteText(entry, True)):
                    self.assertNotIn("Error with citation", text)
            cited = "\n".join(prot.citations())
            self.assertNotIn("Error with citation", cited)
            self.assertNotIn("not found", cited)
        self.assertIn("2020", ProtLive2DClassify2D()._getCiteText(bibtex["Barad_Live2D"]))

    def test_the_epu_folder_is_the_forms_else_the_imports(self) -> None:
        particles = SetOfParticles(filename=str(self.work / "particles.sqlite"))
        setattr(particles, EPU_FOLDER_ATTRIBUTE, String("/data/epu_from_import"))
        prot = self.new(ProtLive2DClassify2D)
        prot.inputParticles.set(particles)
        self.assertEqual(prot._epuFolder(), "/data/epu_from_import")
        prot.epuFolder.set(" /data/epu_of_the_form ")
        self.assertEqual(prot._epuFolder(), "/data/epu_of_the_form")
        prot.epuFolder.set("")
        setattr(particles, EPU_FOLDER_ATTRIBUTE, String(""))
        self.assertIsNone(prot._epuFolder())

    def test_summary_uses_the_job_and_engine_labels(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        summary = " ".join(prot.summary())
        self.assertIn("first job (ab initio)", summary)
        record = CycleRecord(
            number=3, job=1, job_type="seeded", block="startup", block_cycle=2, job_cycle=2,
            job_cycles=20, high_res=37.7, fraction=1.0, particles=900, class_counts=[300] * 3,
            started=0.0, finished=1.0, engine="builtin (torch 2.3.1, cpu, 2 threads)",
            generation=0, particles_per_second=10.0, classes="c.mrc", star="c.star",
            thumbnails="t")
        prot._history = lambda: [record]
        prot.outputClasses = Integer(1)  # only its presence matters to the summary
        prot.publishedCycle.set(3)
        prot.publishedParticles.set(900)
        prot.publishedClassified.set(900)
        summary = " ".join(prot._summary())
        self.assertIn("(seeded startup)", summary)
        self.assertIn("engine: built-in (torch 2.3.1", summary)
        self.assertNotIn("builtin", summary)
        self.assertIn("(built-in engine)", " ".join(prot._methods()))
        # A streaming update says what it took in and what waits for the next one.
        update = dataclasses.replace(record, number=4, job=2, job_type="stream",
                                     block="update", particles=1000, class_counts=[330] * 3,
                                     batches=[[0, 900, 3], [900, 1000, 4]], new_particles=100,
                                     revisited=0, latency=[192.0, 290.0, 306.0])
        prot._history = lambda: [record, update]
        prot.publishedCycle.set(4)
        prot.publishedParticles.set(1000)
        prot.exportedParticles.set(1250)
        summary = " ".join(prot._summary())
        self.assertIn("Streaming update (job 2): 100 new and 0 re-visited particles "
                      "classified, 990 in the classes", summary)
        self.assertIn("250 input particles arrived since and wait for the next streaming "
                      "update", summary)
        self.assertIn("Its new particles were in the classes 3.2 min (median), at most 5.1 min, "
                      "after Warp wrote their stack", summary)

    def test_classify_form_has_the_issue_parameters_with_live2d_defaults(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        names = {name for name, _ in prot._definition.iterAllParams()}
        expected = {"inputParticles", "engine", "classificationType", *PARAM_SETTINGS}
        self.assertTrue(expected <= names, expected - names)
        defaults = Settings()
        for param, setting in PARAM_SETTINGS.items():
            self.assertEqual(prot.getAttributeValue(param), getattr(defaults, setting), param)
        levels = {name: p.expertLevel.get() for name, p in prot._definition.iterAllParams()}
        self.assertEqual(levels["maskRadius"], params.LEVEL_NORMAL)
        self.assertEqual(levels["highResInitial"], params.LEVEL_ADVANCED)
        self.assertEqual(ProtLive2DClassify2D._label, "live 2D classification")

    def test_the_classification_form_has_scipion_s_gpu_fields(self) -> None:
        import torch

        prot = self.new(ProtLive2DClassify2D)
        names = {name for name, _ in prot._definition.iterAllParams()}
        self.assertTrue({params.USE_GPU, params.GPU_LIST} <= names)
        self.assertTrue(prot.usesGpu())
        prot.useGpu.set(False)
        self.assertEqual(prot._device(), "cpu")
        prot.useGpu.set(True)
        prot.gpuList.set("1")
        expected = "cuda:1" if torch.cuda.device_count() > 1 else "cpu"
        self.assertEqual(prot._device(), expected)

    def test_new_runs_are_named_without_the_package_name_s_underscores(self) -> None:
        # As the project window names them: no markup in Methods, whole in the graph's boxes.
        for cls in (ProtLive2DImportWarp, ProtLive2DClassify2D):
            label = self.proj.newProtocol(cls).getObjLabel()
            self.assertEqual(label, f"live2d - {cls._label}")
            self.assertLessEqual(len(label), 40, label)

    def test_import_form_and_its_validation(self) -> None:
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(self.work))
        names = {name for name, _ in prot._definition.iterAllParams()}
        self.assertTrue({"warpFolder", "particleStar", "particleFile", "proteinContrast",
                         "streamTimeout"} <= names)
        self.assertEqual(ProtLive2DImportWarp._label, "import warp particles (live)")
        # The same inputs as `live2d run DIR --star STAR --contrast ...`.
        contrast = prot.getParam("proteinContrast")
        self.assertEqual(contrast.help.get(),
                         Settings.describe("contrast", CONTRAST_NOTE, live=False))
        self.assertNotIn("restarts", contrast.help.get())  # a change here is a new run
        self.assertEqual(list(contrast.choices), ["auto", "white", "black"])
        self.assertEqual(contrast.expertLevel.get(), params.LEVEL_ADVANCED)
        self.assertEqual(prot._contrast(), Settings().contrast)
        self.assertIsNone(prot._star())  # empty: the folder's layout decides
        self.assertIn("fs_export_particles", prot.getParam("particleStar").help.get())
        # Scipion's usual choice, in the Input section, off by default: no duplicate.
        copy = prot.getParam("copyFiles")
        self.assertEqual(copy.label.get(), "Copy files?")
        self.assertFalse(prot.copyFiles.get())
        inputs = next(s for s in prot.iterDefinitionSections() if s.getLabel() == "Input")
        self.assertIn("copyFiles", dict(inputs.iterParams()))
        self.assertIn("WarpTools 2 project or of a RELION particle star are always copied",
                      copy.help.get())
        # A folder Warp has not started in yet is accepted: the import waits for it.
        self.assertEqual(prot.validate(), [])
        missing = self.new(ProtLive2DImportWarp, warpFolder=str(self.work / "typo"))
        self.assertIn("does not exist", "\n".join(missing.validate()))
        # A Warp folder that will never export particles is refused.
        write_settings(self.work, default_settings(48, 3.0, 100.0), DoExport=False)
        errors = "\n".join(prot.validate())
        self.assertIn("particle export is off", errors)

    def test_classify_validation_names_bad_settings(self) -> None:
        prot = self.new(ProtLive2DClassify2D, highResInitial=8.0, highResFinal=20.0)
        errors = "\n".join(prot.validate())
        self.assertIn("final high-res limit (20.0 Å) must not be coarser", errors)

    def test_workflow_template_defaults_are_the_forms(self) -> None:
        # A user starting from the template gets what the forms would give (threads included).
        text = re.sub(r"~[^|~]*\|([^|~]*)\|[^~]*~", r"\1", TEMPLATE.read_text().split("\n", 1)[1])
        runs = {run["object.className"]: run for run in json.loads(text)}
        for cls in (ProtLive2DImportWarp, ProtLive2DClassify2D):
            form = self.new(cls)
            for name, value in runs[cls.__name__].items():
                param = form.getParam(name) if "." not in name else None
                if param is None or name in ("runName", "runMode", "inputParticles",
                                             "warpFolder"):
                    continue
                self.assertEqual(getattr(form, name).get(), value, f"{cls.__name__}.{name}")

    def test_workflow_template_loads_into_a_project(self) -> None:
        template = LocalTemplate("live2d_plugin", str(TEMPLATE))
        self.assertIn("live 2D classification", template.description)
        template.replaceEnvVariables()  # as Scipion's template launcher does
        template.parseContent()
        aliases = {p.getAlias() for p in template.getParams().values()}
        self.assertEqual(aliases, {"warpFolder", "timeout", "classes", "firstJobAt",
                                   "updateEvery", "threads"})
        template.setParamValue("warpFolder", str(self.work))
        template.setParamValue("classes", "20")
        workflow = template.createTemplateFile()
        try:
            json.loads(Path(workflow).read_text())  # valid JSON once filled in
            self.proj.loadProtocols(workflow)
        finally:
            os.remove(workflow)
        runs = {type(p).__name__: p for p in self.proj.getRuns()}
        importer, classify = runs["ProtLive2DImportWarp"], runs["ProtLive2DClassify2D"]
        self.assertEqual(importer.warpFolder.get(), str(self.work))
        self.assertEqual(classify.numberOfClasses.get(), 20)
        self.assertIs(classify.inputParticles.getObjValue().getObjId(), importer.getObjId())
        self.assertEqual(classify.inputParticles.getExtended(), "outputParticles")
