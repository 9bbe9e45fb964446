"""Live2DViewer and its drawings, headless (Agg), on synthetic cycle files: galleries with each
class's count, resolution estimate, score and reason, the selection framed, and the evolution of
class populations."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from unittest import mock

import matplotlib.figure
import mrcfile
import numpy as np
import pytest
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from PIL import Image
from plugin_test_helpers import ProjectTestCase

from live2d.history import CycleRecord, read_history
from live2d.selection import SelectionState, mark
from live2d.thumbnails import write_thumbnails
from live2d_plugin.protocols import ProtLive2DClassify2D
from live2d_plugin.viewers import Live2DViewer
from live2d_plugin.viewers.plots import (
    SELECTED_COLOR,
    caption_lines,
    class_colors,
    class_order,
    draw_evolution,
    draw_gallery,
    draw_grid_map,
    gallery_figsize,
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


def discs(k: int) -> np.ndarray:
    """k images, image i a disc of radius 3(i + 1) px (so a drawn panel traces back to its
    class)."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    return np.stack([(np.hypot(x, y) < 3 * (i + 1)).astype(np.float32) for i in range(k)])


def write_stack(path: Path, stack: np.ndarray, header: str = "volume") -> None:
    """An MRC file of ``stack`` with an image-stack (ispg 0, mz 1) or a volume header."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(stack)
        if header == "image stack":
            mrc.set_image_stack()
        else:
            mrc.set_volume()


# Scores of the classes of a scored session (class 1, 2, ...): 2 and 4 are junk.
SCORES = [0.91, 0.2, 0.74, 0.3]
JUNK_REASON = "signal off centre or spread out: contamination or aggregates"


def quality_table(counts: list[int]) -> list[dict]:
    """A class table as live2d.class_quality writes one: class k at 10 + 2k Å (class 1 at the
    limit of its box), scores from SCORES, empty classes without an estimate."""
    total = sum(counts)
    rows = []
    for k, count in enumerate(counts):
        if not count:
            rows.append({"number": k + 1, "particles": 0, "resolution": None,
                         "at_limit": False, "score": 0.0, "reason": "empty class"})
            continue
        resolution, at_limit, score = 10.0 + 2 * k, k == 0, SCORES[k % len(SCORES)]
        where = f"{'≤ ' if at_limit else ''}{resolution:.1f} Å"
        reason = f"{where}, centred, {count / total:.0%} of particles" if score >= 0.5 \
            else JUNK_REASON
        rows.append({"number": k + 1, "particles": count, "resolution": resolution,
                     "at_limit": at_limit, "score": score, "reason": reason})
    return rows


def write_session(folder: Path, cycles=CYCLES, stack=discs, header: str = "volume",
                  scored: bool = False) -> None:
    """session.json and cycle_NNN.mrc as a Live2D session leaves them, the averages of a cycle of
    K classes being ``stack(K)``; ``scored``: with every classified cycle's class table and its
    scores in the record, as sessions since class quality have them."""
    folder.mkdir(parents=True, exist_ok=True)
    history = []
    for number, job, block, high_res, counts in cycles:
        write_stack(folder / f"cycle_{number:03d}.mrc", stack(len(counts)), header)
        table = quality_table(counts) if scored and block != "start" else []
        if table:
            (folder / f"cycle_{number:03d}_classes.json").write_text(json.dumps(table))
        # Every field the session writes, so the protocol's summary reads it as a real one.
        history.append(dataclasses.asdict(CycleRecord(
            number=number, job=job, job_type="abinit", block=block, block_cycle=1,
            job_cycle=number + 1, job_cycles=len(cycles), high_res=high_res, fraction=1.0,
            particles=sum(counts) or 160, class_counts=counts, started=0.0, finished=1.0,
            engine="builtin (test)", generation=1, particles_per_second=100.0,
            classes=f"cycle_{number:03d}.mrc", star=f"cycle_{number:03d}.star",
            thumbnails=f"thumbnails/cycle_{number:03d}",
            class_resolution=[row["resolution"] for row in table],
            class_score=[row["score"] for row in table],
            class_table=f"cycle_{number:03d}_classes.json" if table else "")))
    (folder / "session.json").write_text(json.dumps({"history": history}))


def test_class_order_sorts_by_count_and_keeps_ties_in_class_order() -> None:
    assert class_order([5, 70, 25, 70], sort_by_count=True) == [1, 3, 2, 0]
    assert class_order([5, 70, 25, 70], sort_by_count=False) == [0, 1, 2, 3]


def test_gallery_draws_every_class_with_its_count(tmp_path) -> None:
    write_session(tmp_path)
    cycle = read_history(tmp_path)[2]
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


def captions_of(figure: matplotlib.figure.Figure) -> list[str]:
    """The text under each panel, in the order drawn."""
    return ["".join(text.get_text() for text in axes.texts) for axes in figure.axes]


def framed(figure: matplotlib.figure.Figure) -> list[bool]:
    """Whether each panel, in the order drawn, has the selection's green frame."""
    return [to_hex(axes.spines["left"].get_edgecolor()) == SELECTED_COLOR
            for axes in figure.axes]


def test_gallery_shows_each_class_quality_and_frames_the_selected_classes(tmp_path) -> None:
    write_session(tmp_path, scored=True)
    cycle = read_history(tmp_path)[2]  # counts [5, 70, 25]
    assert cycle.assessed and caption_lines(cycle) == 4
    figure = matplotlib.figure.Figure(figsize=gallery_figsize(3, caption_lines(cycle)))
    assert draw_gallery(figure, tmp_path, cycle) == [2, 3, 1]
    # First line the estimate and the score, then the reason (wrapped to the panel's width)
    # without the resolution it starts with.
    captions = [caption.split("\n", 1) for caption in captions_of(figure)]
    assert [first for first, _ in captions] == ["12.0 Å · score 0.20", "14.0 Å · score 0.74",
                                                "≤ 10.0 Å · score 0.91"]
    assert [reason.replace("\n", " ") for _, reason in captions] == [
        JUNK_REASON, "centred, 25% of particles", "centred, 5% of particles"]
    # The proposal (scored 0.5 or more): classes 3 and 1.
    assert framed(figure) == [False, True, True]
    heading = figure._suptitle.get_text()
    assert "Green frame: selected, 2 classes, 30 particles" in heading

    # A mark made in the page (here: class 2 good, class 1 junk) is the selection shown.
    state = SelectionState()
    record = read_history(tmp_path)[2]
    mark(state, record, {2: "good", 1: "junk"})
    state.save(tmp_path)
    draw_gallery(figure, tmp_path, cycle)
    assert framed(figure) == [True, True, False]
    assert "selected, 2 classes, 95 particles" in figure._suptitle.get_text()
    # A cycle the marks do not refer to shows its own proposal.
    draw_gallery(figure, tmp_path, read_history(tmp_path)[1])  # counts [10, 50, 40]
    assert framed(figure) == [False, True, True]


def test_gallery_of_a_session_without_scores_has_no_captions(tmp_path) -> None:
    write_session(tmp_path)
    cycle = read_history(tmp_path)[2]
    assert not cycle.assessed and caption_lines(cycle) == 0
    figure = matplotlib.figure.Figure()
    draw_gallery(figure, tmp_path, cycle)
    assert captions_of(figure) == ["", "", ""]
    assert not any(framed(figure))
    assert "selected" not in figure._suptitle.get_text()


def test_evolution_stacks_populations_and_plots_the_resolution_limit(tmp_path) -> None:
    write_session(tmp_path)
    history = read_history(tmp_path)
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
    history = read_history(tmp_path / "session")
    save_gallery_png(tmp_path / "gallery.png", tmp_path / "session", history[-1])
    save_evolution_png(tmp_path / "evolution.png", history)
    for name in ("gallery.png", "evolution.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
            assert image.width > 400 and image.height > 300
            assert len(set(image.convert("L").getdata())) > 10  # something was drawn


# ------------------------------------------------------------------ one orientation everywhere
def marked(k: int) -> np.ndarray:
    """k grey images, class 2 with a bright "L" in the first rows and columns of its data."""
    stack = np.zeros((k, BOX, BOX), dtype=np.float32)
    stack[1, 2:12, 2:4] = 1.0
    stack[1, 10:12, 2:8] = 1.0
    return stack


def bright_corner(pixels: np.ndarray) -> str:
    """The quarter of a grey image where its bright pixels are, e.g. "top-left"."""
    pixels = np.asarray(pixels, dtype=np.float32)
    rows, cols = np.nonzero(pixels > (pixels.min() + pixels.max()) / 2)
    assert len(rows), "no bright pixels"
    vertical = "top" if rows.mean() < pixels.shape[0] / 2 else "bottom"
    return vertical + ("-left" if cols.mean() < pixels.shape[1] / 2 else "-right")


def rendered(figure: matplotlib.figure.Figure) -> np.ndarray:
    """The figure as drawn, grey pixels, first row at the top of the picture."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., 0]


def inside(pixels: np.ndarray, axes) -> np.ndarray:
    """The pixels of ``rendered`` inside ``axes``' frame (its spines cropped off)."""
    box = axes.get_window_extent()
    top = pixels.shape[0] - int(np.ceil(box.y1))  # display y runs upwards, rows downwards
    bottom = pixels.shape[0] - int(np.floor(box.y0))
    return pixels[top + 2: bottom - 2, int(np.ceil(box.x0)) + 2: int(np.floor(box.x1)) - 2]


@pytest.mark.parametrize("header", ["image stack", "volume"])
def test_a_class_is_the_same_way_up_on_the_page_in_the_viewer_and_in_scipion(tmp_path,
                                                                             header) -> None:
    from pwem.viewers.mdviewer.readers import ScipionImageReader

    session = tmp_path / "session"
    write_session(session, stack=marked, header=header)
    cycle = read_history(session)[-1]  # class 2 holds the most particles: drawn first
    path = session / cycle.classes
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack() if header == "image stack" else mrc.is_volume()

    # The page's thumbnail.
    with Image.open(write_thumbnails(path, tmp_path / "thumbnails")[1]) as thumbnail:
        assert bright_corner(np.asarray(thumbnail.convert("L"))) == "top-left"

    # The Scipion viewer's gallery, as drawn in pixels.
    figure = matplotlib.figure.Figure(figsize=gallery_figsize(4), dpi=100)
    assert draw_gallery(figure, session, cycle)[0] == 2
    panel = figure.axes[0]
    assert panel.images[0].origin == "upper"
    assert bright_corner(inside(rendered(figure), panel)) == "top-left"

    # Scipion's metadata viewer: N@file through pwem's ImageReadersRegistry (the Scipion form
    # "file.mrc:mrcs" is not a path that registry can open).
    shown = ScipionImageReader.open(f"2@{path}")
    assert bright_corner(np.asarray(shown.convert("L"))) == "top-left"


# ------------------------------------------------------------------ telling classes apart
def long_history(k: int, cycles: int = 12, seed: int = 3) -> list[CycleRecord]:
    """``cycles`` cycles of K classes with a few large and many small populations, over two
    jobs."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 0.4))
    history = []
    for number in range(cycles):
        drift = weights * np.exp(0.4 * rng.standard_normal(k))
        counts = rng.multinomial(20_000, drift / drift.sum()).tolist()
        history.append(CycleRecord(
            number=number, job=1 + (number >= cycles // 2), job_type="abinit",
            block="refinement", block_cycle=1, job_cycle=number + 1, job_cycles=cycles,
            high_res=40.0 - 2 * number, fraction=1.0, particles=20_000, class_counts=counts,
            started=0.0, finished=1.0, engine="builtin (test)", generation=1,
            particles_per_second=100.0, classes="", star="", thumbnails=""))
    return history


def test_evolution_gives_each_of_50_classes_its_colour_and_labels_the_largest() -> None:
    history = long_history(50)
    figure = matplotlib.figure.Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(figure)
    populations, limits = draw_evolution(figure, history)

    bands = [tuple(band.get_facecolor()[0][:3]) for band in populations.collections]
    assert len(bands) == 50
    assert len({to_hex(rgb) for rgb in bands}) == 50  # no colour repeats, even on screen
    steps = np.linalg.norm(np.diff(np.array(bands), axis=0), axis=1)
    assert steps.min() > 0.3  # neighbouring bands clearly differ
    for k in (200, 1000):
        assert len({to_hex(c) for c in class_colors(k)}) == k

    matrix = population_matrix(history)
    labels = {t.get_text(): t for t in populations.texts if t.get_text().isdigit()}
    thickest = int(np.argmax(matrix.max(axis=0))) + 1
    assert str(thickest) in labels and len(labels) >= 5
    boxes = [t.get_window_extent() for t in labels.values()]
    frame = populations.get_window_extent()
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))

    legend = figure.legends[0]
    assert legend.get_title().get_text() == "top 10 of 50 classes,\nlast cycle"
    largest = int(np.argmax(matrix[-1]))
    assert legend.get_texts()[0].get_text() == f"#{largest + 1}: {matrix[-1, largest]}"
    # The resolution limit and the job boundary stay.
    assert list(limits.get_lines()[0].get_ydata()) == [c.high_res for c in history]
    assert any(t.get_text() == " job 2" for t in populations.texts)


def gallery_of(tmp_path: Path, k: int, scored: bool = False) -> matplotlib.figure.Figure:
    counts = [int(c) for c in np.random.default_rng(k).integers(0, 2000, k)]
    folder = tmp_path / f"k{k}{'_scored' if scored else ''}"
    write_session(folder, cycles=[(0, 1, "startup", 20.0, counts)], scored=scored)
    cycle = read_history(folder)[0]
    figure = matplotlib.figure.Figure(figsize=gallery_figsize(k, caption_lines(cycle)), dpi=100)
    FigureCanvasAgg(figure)
    draw_gallery(figure, folder, cycle)
    figure.canvas.draw()
    return figure


def overlapping(boxes: list) -> list[tuple[int, int]]:
    """Pairs of boxes whose insides meet (touching edges allowed)."""
    a = np.array([[b.x0, b.x1, b.y0, b.y1] for b in boxes])
    meet = ((a[:, None, 0] < a[None, :, 1] - 0.5) & (a[None, :, 0] < a[:, None, 1] - 0.5)
            & (a[:, None, 2] < a[None, :, 3] - 0.5) & (a[None, :, 2] < a[:, None, 3] - 0.5))
    return [(i, j) for i, j in zip(*np.nonzero(np.triu(meet, 1)), strict=True)]


def test_gallery_titles_shrink_with_the_number_of_classes_and_never_overlap(tmp_path) -> None:
    sizes = {}
    for k in (4, 50, 200):
        figure = gallery_of(tmp_path, k)
        renderer = figure.canvas.get_renderer()
        titles = [axes.title for axes in figure.axes]
        assert len(titles) == k
        sizes[k] = titles[0].get_fontsize()
        boxes = [t.get_window_extent(renderer) for t in titles]
        assert overlapping(boxes) == [], f"titles overlap at {k} classes"
        # Nor does a title cover an image, or the figure's own title.
        images = [axes.get_window_extent(renderer) for axes in figure.axes]
        heading = figure._suptitle.get_window_extent(renderer)
        assert overlapping([*boxes, *images, heading]) == [], f"overlap at {k} classes"
        page = figure.bbox
        assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and b.y1 <= page.y1 for b in boxes)
        if k == 4:
            assert titles[0].get_text().endswith("%)")  # room for the share
        if k == 200:
            assert " · " in titles[0].get_text() and "%" not in titles[0].get_text()
    assert sizes[200] < sizes[50] < sizes[4]
    assert sizes[200] >= 6  # still legible
    # The page grows with the classes (up to a screen), rather than only the panels shrinking.
    (width4, _), (_, height50), (width200, height200) = map(gallery_figsize, (4, 50, 200))
    assert width200 > width4 and height200 > height50


def test_gallery_captions_fit_under_their_classes_at_any_number_of_classes(tmp_path) -> None:
    for k in (4, 50, 200):
        figure = gallery_of(tmp_path, k, scored=True)
        renderer = figure.canvas.get_renderer()
        captions = [axes.texts[0] for axes in figure.axes]
        assert len(captions) == k
        texts = [t.get_text() for t in captions]
        # Always the resolution estimate; the reason where there is room.
        assert all("Å" in t.splitlines()[0] for t in texts if not t.startswith("–"))
        if k == 4:
            assert all(len(t.splitlines()) >= 2 for t in texts), texts
            assert all("score" in t for t in texts)
        if k == 200:
            assert all(len(t.splitlines()) == 1 for t in texts)
        boxes = [t.get_window_extent(renderer) for t in captions]
        titles = [axes.title.get_window_extent(renderer) for axes in figure.axes]
        images = [axes.get_window_extent(renderer) for axes in figure.axes]
        heading = figure._suptitle.get_window_extent(renderer)
        assert overlapping([*boxes, *titles, *images, heading]) == [], f"overlap at {k} classes"
        page = figure.bbox
        assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 for b in boxes)
        assert page.x0 <= heading.x0 and heading.x1 <= page.x1, f"heading wider at {k} classes"
        # Each caption sits under its own image, centred on it.
        for box, image in zip(boxes, images, strict=True):
            assert box.y1 <= image.y0 and abs((box.x0 + box.x1) - (image.x0 + image.x1)) < 2


def test_gallery_heading_says_the_job_type_as_users_read_it(tmp_path) -> None:
    write_session(tmp_path)
    figure = matplotlib.figure.Figure()
    draw_gallery(figure, tmp_path, read_history(tmp_path)[2])
    heading = figure._suptitle.get_text()
    assert "Ab initio job 1" in heading and "abinit" not in heading


class TestViewerOnAProtocol(ProjectTestCase):
    def test_viewer_targets_the_protocol_and_renders_both_views(self) -> None:
        prot = self.new(ProtLive2DClassify2D)
        self.proj.saveProtocol(prot)
        write_session(Path(prot._getExtraPath("live2d")))
        viewer = Live2DViewer(project=self.proj)
        viewer.setProtocol(prot)
        self.assertEqual(viewer.cycle.get(), 3)  # the latest cycle by default
        views = viewer._getVisualizeDict()
        self.assertEqual(set(views), {"displayGallery", "displayEvolution", "displaySquares",
                                      "displayReport", "createSubset"})

        with mock.patch.object(FigureManagerBase, "set_window_title", autospec=True) as named:
            gallery = views["displayGallery"]("displayGallery")[0]
            evolution = views["displayEvolution"]("displayEvolution")[0]
        given = [call.args[1] for call in named.call_args_list]
        self.assertEqual([title for title in given if not title.startswith("Figure ")],
                         ["Live2D – class averages, cycle 3",
                          "Live2D – class populations over 4 cycles"])
        self.assertFalse(gallery.tightLayoutOn)  # the drawing's own layout is kept
        gallery.getFigure().savefig(self.work / "gallery.png")
        titles = [axes.get_title() for axes in gallery.getFigure().axes]
        self.assertEqual(titles[0], "#2: 90 (56.2%)")

        viewer.cycle.set(1)
        viewer.sortByCount.set(False)
        gallery = views["displayGallery"]("displayGallery")[0]
        self.assertEqual([a.get_title().split(":")[0] for a in gallery.getFigure().axes],
                         ["#1", "#2", "#3"])

        evolution.getFigure().savefig(self.work / "evolution.png")
        self.assertGreater((self.work / "evolution.png").stat().st_size, 5000)

        # A session with class scores: each class's resolution estimate, score and reason.
        write_session(Path(prot._getExtraPath("live2d")), scored=True)
        viewer.cycle.set(3)
        viewer.sortByCount.set(True)
        gallery = views["displayGallery"]("displayGallery")[0]
        figure = gallery.getFigure()
        gallery.getFigure().savefig(self.work / "gallery_scored.png")
        self.assertEqual(figure.axes[0].get_title(), "#2: 90 (56.2%)")
        self.assertEqual(captions_of(figure)[0].splitlines()[0], "12.0 Å · score 0.20")
        self.assertEqual(captions_of(figure)[1].splitlines()[0], "16.0 Å · score 0.30")
        self.assertEqual(framed(figure), [False, False, True, False])  # class 1 only
        self.assertIn("selected, 1 class, 30 particles", figure._suptitle.get_text())
        self.assertEqual(captions_of(figure)[3], "–\nempty class")  # class 3

        viewer.cycle.set(99)
        message = views["displayGallery"]("displayGallery")[0]
        self.assertIn("no cycle 99", message.getMessage())

        # A cycle whose averages were thinned (an older streaming update's): said, with the
        # nearest cycle that has them (the later of two as near).
        session = Path(prot._getExtraPath("live2d"))
        state = json.loads((session / "session.json").read_text())
        state["history"][2]["averages_kept"] = False
        (session / "session.json").write_text(json.dumps(state))
        (session / "cycle_002.mrc").unlink()
        viewer.cycle.set(2)
        message = views["displayGallery"]("displayGallery")[0]
        self.assertIn("class averages of cycle 2 (a streaming update) were thinned",
                      message.getMessage())
        self.assertIn("nearest kept: cycle 3", message.getMessage())

        # A subset of a cycle's classes: said plainly when it cannot be made.
        viewer.cycle.set(3)
        for classes, expected in (("one two", "'one two' is not a list of class numbers"),
                                  ("3", "Cycle 3 has no class 3 with particles"),
                                  ("1 2", "classes of cycle 3 are no longer on disk")):
            viewer.subsetClasses.set(classes)
            message = views["createSubset"]("createSubset")[0]
            self.assertIn(expected, message.getMessage())


def test_grid_map_without_squares_says_why_and_gives_the_totals() -> None:
    figure = matplotlib.figure.Figure()
    axes = draw_grid_map(figure, {"squares": [], "micrographs": 12, "particles": 2400,
                                  "good_particles": 600, "good_fraction": 0.25})
    text = " ".join(t.get_text() for t in axes.texts)
    assert "grid squares unknown" in text and "600 good of 2,400 particles" in text
    assert not axes.patches
    axes = draw_grid_map(figure, None)
    assert "no yield yet" in axes.texts[0].get_text()


def test_grid_map_tiles_follow_collection_order_colour_and_size() -> None:
    squares = [{"grid_square": "3", "particles": 400, "good_fraction": 0.9},
               {"grid_square": "1", "particles": 100, "good_fraction": 0.1}]
    axes = draw_grid_map(matplotlib.figure.Figure(), {"squares": squares})
    good, bad = axes.patches
    assert good.get_width() > bad.get_width()  # more particles, bigger tile
    assert good.get_facecolor()[1] > good.get_facecolor()[0]  # green
    assert bad.get_facecolor()[0] > bad.get_facecolor()[1]  # red
    assert [t.get_text().split("\n")[0] for t in axes.texts] == ["3", "1"]


def test_grid_map_tiles_sit_at_the_squares_stage_positions() -> None:
    squares = [{"grid_square": name, "particles": 100, "good_fraction": 0.5, "x_um": x,
                "y_um": y}
               for name, x, y in (("a", 0.0, 0.0), ("b", 80.0, 0.0), ("c", 0.0, -80.0))]
    axes = draw_grid_map(matplotlib.figure.Figure(), {"squares": squares})
    centres = {t.get_text().split("\n")[0]: t.get_position() for t in axes.texts}
    assert centres == {"a": (0.0, 0.0), "b": (80.0, 0.0), "c": (0.0, -80.0)}
    assert "stage positions" in axes.figure._suptitle.get_text()
    # One square without a position: collection order for all.
    squares[1] = {**squares[1], "x_um": None}
    axes = draw_grid_map(matplotlib.figure.Figure(), {"squares": squares})
    assert "collection order" in axes.figure._suptitle.get_text()
