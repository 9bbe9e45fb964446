"""Live2DViewer and its drawings, headless (Agg), on synthetic cycle files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import mrcfile
import numpy as np
from PIL import Image
from plugin_test_helpers import ProjectTestCase

from live2d_plugin.protocols import ProtLive2DClassify2D
from live2d_plugin.viewers import Live2DViewer
from live2d_plugin.viewers.plots import (
    class_order,
    draw_evolution,
    draw_gallery,
    load_history,
    population_matrix,
    save_evolution_png,
    save_gallery_png,
)

BOX = 32
# Three cycles of one ab initio job (K=3) and one of a second job with K=4.
CYCLES = [
    (0, 1, "start", 40.0, [0, 0, 0]),
    (1, 1, "startup", 20.0, [10, 50, 40]),
    (2, 1, "refinement", 12.0, [5, 70, 25]),
    (3, 2, "refinement", 12.0, [30, 90, 0, 40]),
]


def write_session(folder: Path) -> None:
    """session.json and cycle_NNN.mrc as a Live2D session leaves them; class k of every cycle is
    a disc of radius 3k px, so a drawn panel can be traced back to its class."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    history = []
    for number, job, block, high_res, counts in CYCLES:
        stack = np.stack([(np.hypot(x, y) < 3 * (k + 1)).astype(np.float32)
                          for k in range(len(counts))])
        with mrcfile.new(folder / f"cycle_{number:03d}.mrc", overwrite=True) as mrc:
            mrc.set_data(stack)
        history.append({"number": number, "job": job, "job_type": "abinit", "block": block,
                        "high_res": high_res, "particles": 160, "class_counts": counts,
                        "classes": f"cycle_{number:03d}.mrc", "star": f"cycle_{number:03d}.star"})
    (folder / "session.json").write_text(json.dumps({"history": history}))


def test_class_order_sorts_by_count_and_keeps_ties_in_class_order() -> None:
    assert class_order([5, 70, 25, 70], sort_by_count=True) == [1, 3, 2, 0]
    assert class_order([5, 70, 25, 70], sort_by_count=False) == [0, 1, 2, 3]


def test_gallery_draws_every_class_with_its_count(tmp_path) -> None:
    write_session(tmp_path)
    cycle = load_history(tmp_path)[2]
    figure = matplotlib.figure.Figure()
    order = draw_gallery(figure, tmp_path, cycle, sort_by_count=True)
    assert order == [2, 3, 1]
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["#2: 70 (70.0%)", "#3: 25 (25.0%)", "#1: 5 (5.0%)"]
    # The panel titled #2 shows class 2's average (a disc of radius 6 px).
    shown = np.asarray(figure.axes[0].images[0].get_array())
    disc = np.hypot(*(np.mgrid[:BOX, :BOX] - BOX // 2)) < 6
    assert (shown > 128).sum() == disc.sum()
    assert "Cycle 2" in figure._suptitle.get_text()


def test_evolution_stacks_populations_and_plots_the_resolution_limit(tmp_path) -> None:
    write_session(tmp_path)
    history = load_history(tmp_path)
    matrix = population_matrix(history)
    assert matrix.shape == (4, 4)
    assert matrix[1].tolist() == [10, 50, 40, 0]  # padded to the largest K
    figure = matplotlib.figure.Figure()
    populations, limits = draw_evolution(figure, history)
    assert len(populations.collections) == 4  # one stacked band per class
    line = limits.get_lines()[0]
    assert list(line.get_ydata()) == [40.0, 20.0, 12.0, 12.0]
    assert limits.yaxis_inverted()


def test_pngs_render_headless(tmp_path) -> None:
    write_session(tmp_path / "session")
    history = load_history(tmp_path / "session")
    save_gallery_png(tmp_path / "gallery.png", tmp_path / "session", history[-1])
    save_evolution_png(tmp_path / "evolution.png", history)
    for name in ("gallery.png", "evolution.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
            assert image.width > 400 and image.height > 300
            assert len(set(image.convert("L").getdata())) > 10  # something was drawn


class TestViewerOnAProtocol(ProjectTestCase):
    def test_viewer_targets_the_protocol_and_renders_both_views(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        self.proj.saveProtocol(prot)
        write_session(Path(prot._getExtraPath("live2d")))
        viewer = Live2DViewer(project=self.proj)
        viewer.setProtocol(prot)
        self.assertEqual(viewer.cycle.get(), 3)  # the latest cycle by default
        views = viewer._getVisualizeDict()
        self.assertEqual(set(views), {"displayGallery", "displayEvolution"})

        gallery = views["displayGallery"]("displayGallery")[0]
        gallery.getFigure().savefig(self.work / "gallery.png")
        titles = [axes.get_title() for axes in gallery.getFigure().axes]
        self.assertEqual(titles[0], "#2: 90 (56.2%)")

        viewer.cycle.set(1)
        viewer.sortByCount.set(False)
        gallery = views["displayGallery"]("displayGallery")[0]
        self.assertEqual([a.get_title().split(":")[0] for a in gallery.getFigure().axes],
                         ["#1", "#2", "#3"])

        evolution = views["displayEvolution"]("displayEvolution")[0]
        evolution.getFigure().savefig(self.work / "evolution.png")
        self.assertGreater((self.work / "evolution.png").stat().st_size, 5000)

        viewer.cycle.set(99)
        message = views["displayGallery"]("displayGallery")[0]
        self.assertIn("no cycle 99", message.getMessage())
