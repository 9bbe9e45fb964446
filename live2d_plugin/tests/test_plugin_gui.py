"""Scipion's real Tk project window, under Xvfb: "Analyze Results" on a live 2D classification
opens Live2DViewer, and both of its displays open windows showing non-empty images.

The GUI runs in a subprocess (gui_driver.py, under ``xvfb-run``) on a project made here: one
ProtLive2DClassify2D, marked finished, with a synthetic Live2D session in its extra folder, so no
classification engine runs. The driver clicks through the GUI and writes a JSON report and
screenshots (kept in a ``live2d-gui-*`` folder of the temp dir, printed by the test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
from gui_driver import distinct_colours
from PIL import Image
from plugin_test_helpers import ProjectTestCase
from pyworkflow.protocol import STATUS_FINISHED
from test_plugin_viewer import write_session

from live2d_plugin.protocols import ProtLive2DClassify2D

DRIVER = Path(__file__).with_name("gui_driver.py")
TIMEOUT = 120  # seconds for the whole GUI run
SCREEN = "1600x1200x24"


def _xvfb_missing() -> str | None:
    missing = [tool for tool in ("xvfb-run", "Xvfb", "xauth") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (Debian: apt-get install xvfb xauth)" \
        if missing else None


def _distinct_colours(path: Path) -> int:
    with Image.open(path) as image:
        return distinct_colours(np.asarray(image.convert("RGB")))


@unittest.skipIf(_xvfb_missing(), _xvfb_missing() or "")
@unittest.skipIf(shutil.which("import") is None,
                 "ImageMagick's import (screenshots) not installed (apt-get install imagemagick)")
class TestProjectWindow(ProjectTestCase):
    def run_gui(self, prot) -> tuple[dict, Path]:
        out = Path(tempfile.mkdtemp(prefix="live2d-gui-"))
        print(f"GUI report and screenshots in {out}")
        command = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}",
                   sys.executable, str(DRIVER), self.proj.path, str(prot.getObjId()), str(out)]
        env = dict(os.environ)  # the Scipion environment of conftest.py
        env.pop("MPLBACKEND", None)  # as a user has it: the project window picks TkAgg itself
        proc = subprocess.Popen(command, env=env, cwd=self.proj.path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # xvfb-run, its Xvfb and the driver
            output, _ = proc.communicate()
            self.fail(f"the GUI did not finish in {TIMEOUT} s (screenshots in {out})\n"
                      f"{output[-4000:]}")
        (out / "driver.log").write_text(output)
        report_file = out / "report.json"
        if not report_file.exists():
            self.fail(f"the GUI driver left no report (exit {proc.returncode})\n{output[-4000:]}")
        report = json.loads(report_file.read_text())
        report["output_tail"] = output[-4000:]
        return report, out

    def test_analyze_results_opens_the_viewer_and_both_displays(self) -> None:
        prot = self.new(ProtLive2DClassify2D, label="live 2D under Xvfb")
        self.proj.saveProtocol(prot)
        write_session(Path(prot._getExtraPath("live2d")))
        prot.setStatus(STATUS_FINISHED)
        self.proj._storeProtocol(prot)

        report, out = self.run_gui(prot)
        shown = {k: v for k, v in report.items() if k != "output_tail"}
        context = (f"\nscreenshots in {out}\nreport: {json.dumps(shown, indent=1)}\n"
                   f"{report['output_tail']}")
        self.assertEqual(report["errors"], [], context)

        # "Analyze Results" opened Live2DViewer's form from the project window.
        self.assertEqual(report["selected"], prot.getRunName(), context)
        # The run's summary pane reads its session (4 cycles on disk), without an error.
        self.assertIn("4 cycles on disk", report["summary"], context)
        self.assertEqual(report["viewer_form"]["viewer"], "Live2DViewer", context)
        self.assertIn("Live2DViewer", report["viewer_form"]["title"], context)
        titles = [w["title"] for w in report["tk_windows"] if w["mapped"]]
        self.assertIn(report["viewer_form"]["title"], titles, context)

        # Each eye button opened a matplotlib window (loosely: titles may name the cycle).
        figures = report["figures"]
        self.assertEqual(set(figures), {"displayGallery", "displayEvolution"}, context)
        for figure in figures.values():
            self.assertTrue(figure["mapped"], context)
            self.assertEqual(figure["canvas"], "FigureCanvasTkAgg", context)
            self.assertTrue("Live2D" in figure["title"] or "cycle" in figure["title"].lower(),
                            context)
            self.assertGreater(figure["pixel_values"], 20, context)
            self.assertGreater(figure["pixel_std"], 10, context)

        # The gallery shows the latest cycle's 4 class averages, not flat images, largest first.
        gallery = figures["displayGallery"]
        self.assertGreaterEqual(gallery["images_not_flat"], 4, context)
        self.assertTrue(gallery["axes_titles"][0].startswith("#2:"), context)
        self.assertIn("3", gallery["suptitle"], context)
        evolution = figures["displayEvolution"]
        self.assertGreaterEqual(evolution["axes"], 2, context)
        self.assertGreater(evolution["artists"], 10, context)

        # What is on the X screen: the root window and each window alone are not blank.
        shots = report["screenshots"]
        for name in ("screen", "project", "viewer_form", "displayGallery", "displayEvolution"):
            path = Path(shots.get(name, ""))
            self.assertTrue(path.is_file(), f"screenshot {name}: {shots.get(name)}{context}")
            self.assertGreater(_distinct_colours(path), 50, f"{name} looks blank{context}")
        # and the figure windows' screenshots show what their canvases rendered
        for name, figure in figures.items():
            self.assertGreater(figure.get("screenshot_matches_canvas", 0), 0.95,
                               f"{name} on screen{context}")
