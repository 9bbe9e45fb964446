"""The plugin as Scipion sees it: entry point, variables, forms, citations, workflow template."""

from __future__ import annotations

import json
import os
from importlib.metadata import entry_points
from pathlib import Path

import pwem
import pytest
import pyworkflow.protocol.params as params
from plugin_test_helpers import ProjectTestCase
from pyworkflow.template import LocalTemplate
from pyworkflow.viewer import DESKTOP_TKINTER

import live2d_plugin
from live2d.schedule import Settings
from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp
from live2d_plugin.protocols.protocol_classify2d import PARAM_SETTINGS
from live2d_plugin.viewers import Live2DViewer

REAL_ENTRY_POINT = os.environ.get("LIVE2D_PLUGIN_ENTRY_POINT") == "installed"
TEMPLATE = Path(live2d_plugin.__file__).parent / "templates" / "warp_live2d.json.template"


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


class TestForms(ProjectTestCase):
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

    def test_import_form_and_its_validation(self) -> None:
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(self.work))
        names = {name for name, _ in prot._definition.iterAllParams()}
        self.assertTrue({"warpFolder", "particleFile", "streamTimeout"} <= names)
        self.assertEqual(ProtLive2DImportWarp._label, "import warp particles (live)")
        errors = "\n".join(prot.validate())
        self.assertIn("previous.settings", errors)  # not a Warp folder: says what is missing

    def test_classify_validation_names_bad_settings(self) -> None:
        prot = self.new(ProtLive2DClassify2D, highResInitial=8.0, highResFinal=20.0)
        errors = "\n".join(prot.validate())
        self.assertIn("final high-res limit (20.0 Å) must not be coarser", errors)

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
