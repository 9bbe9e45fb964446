"""Matplotlib drawings of a Live2D session folder: the class gallery of a cycle (each class with
its particle count, resolution estimate, score and the reason for it, the selected classes
framed) and the evolution of class populations. Pure matplotlib on a given Figure (no
pyworkflow, no Tk), so they render headless to PNG and inside Scipion's Tk windows alike. Both
lay their figure out themselves (callers should not apply tight_layout on top) so that text
sizes follow the number of classes."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.figure
import matplotlib.patches
import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator

from live2d.history import CycleRecord
from live2d.mrc import read_images
from live2d.schedule import JOB_LABELS
from live2d.selection import selected_particles
from live2d.thumbnails import display_image
from live2d_plugin.quality import (
    class_table_by_number,
    cycle_selection,
    reason_text,
    resolution_text,
)


def class_order(counts: list[int], sort_by_count: bool) -> list[int]:
    """0-based class indices in display order: by descending count (ties by number) or by
    number."""
    indices = list(range(len(counts)))
    if sort_by_count:
        indices.sort(key=lambda i: (-counts[i], i))
    return indices


# ------------------------------------------------------------------------------ gallery layout
# All in inches / points: text sizes are physical, so the layout is worked out in physical units.
MARGIN_IN = 0.15
SUPTITLE_IN = 0.5  # two lines of the figure title
HEADING_LINE_IN = 0.17  # its third line, about the selection, for assessed cycles
ROW_GAP_IN = 0.04
REASON_LINES = 3  # of the reason under each class, where it fits at all
CAPTION_LINE = 1.45  # height of a caption line in font sizes
SELECTED_COLOR = "#2ca02c"
MAX_TITLE_PT, MIN_TITLE_PT, FLOOR_TITLE_PT = 10.0, 6.0, 3.5
SCREEN_IN = (14.0, 9.6)  # the largest window that fits a 1080p screen at 100 dpi, with toolbar
_TEXT = TextToPath()


@dataclass(frozen=True)
class GalleryLayout:
    """How a cycle's class gallery fills the viewer's window: the grid, each image's size and the
    titles' and captions' fonts."""

    columns: int
    rows: int
    side: float  # of each image, inches
    fontsize: float  # of the panel titles (and captions), points
    caption_lines: int = 0  # under each image: resolution estimate and score, then the reason

    @property
    def title_in(self) -> float:
        """Height of a title with its pad above the image."""
        return 1.6 * self.fontsize / 72

    @property
    def caption_in(self) -> float:
        """Height of a caption with its pad below the image."""
        return _caption_in(self.caption_lines, self.fontsize)

    @property
    def heading_in(self) -> float:
        return _heading_in(self.caption_lines)

    @property
    def row_in(self) -> float:
        return self.title_in + self.side + self.caption_in + ROW_GAP_IN


def _caption_in(lines: int, fontsize: float) -> float:
    return (CAPTION_LINE * lines + 0.4) * fontsize / 72 if lines else 0.0


def _heading_in(caption_lines: int) -> float:
    return SUPTITLE_IN + (HEADING_LINE_IN if caption_lines else 0.0)


def gallery_layout(n: int, width: float, height: float, columns: int | None = None,
                   caption_lines: int = 0) -> GalleryLayout:
    """The grid that gives ``n`` panels the largest images on a ``width`` x ``height`` inch page,
    with title text scaled to the column width (so crowded galleries get smaller titles), and
    room for ``caption_lines`` under every image."""
    free_w, free_h = width - 2 * MARGIN_IN, height - _heading_in(caption_lines) - MARGIN_IN
    best: GalleryLayout | None = None
    for cols in [columns] if columns else range(1, max(1, n) + 1):
        rows = max(1, math.ceil(n / cols))
        cell_w = free_w / cols
        fontsize = float(np.clip(cell_w * 72 * 0.08, MIN_TITLE_PT, MAX_TITLE_PT))
        side = min(cell_w * 0.94, free_h / rows - 1.6 * fontsize / 72
                   - _caption_in(caption_lines, fontsize) - ROW_GAP_IN)
        if best is None or side > best.side:
            best = GalleryLayout(cols, rows, max(side, 0.05), fontsize, caption_lines)
    assert best is not None
    return best


def caption_lines(cycle: CycleRecord) -> int:
    """Caption lines a gallery of ``cycle`` makes room for: none for a cycle without scores."""
    return 1 + REASON_LINES if cycle.assessed else 0


def gallery_figsize(n: int, captions: int = 0) -> tuple[float, float]:
    """A figure size for ``n`` class panels (with ``captions`` lines under each, see
    :func:`caption_lines`): wider and taller as classes are added, up to the size of a screen
    (beyond that the panels shrink, and the window's zoom takes over)."""
    # Columns grow as sqrt(n): so does the width, from a laptop-sized 8 in to a full screen.
    width = float(np.clip(4 + 1.5 * math.sqrt(max(n, 1)), 8.0, SCREEN_IN[0]))
    layout = gallery_layout(n, width, SCREEN_IN[1], caption_lines=captions)
    used = layout.heading_in + MARGIN_IN + layout.rows * layout.row_in
    return width, float(np.clip(used, 4.0, SCREEN_IN[1]))


def _title_forms(number: int, count: int, total: int) -> list[str]:
    """One panel's title, longest first: the full form while it fits, shorter ones for crowded
    galleries (the share in % is dropped first, then the "#"; the class number always stays)."""
    share = f" ({100 * count / total:.1f}%)" if total else ""
    return [f"#{number}: {count}{share}", f"#{number} · {count}", f"{number}·{count}",
            f"{number}"]


def _fit_titles(numbers: list[int], counts: list[int], total: int, cell_pt: float,
                fontsize: float) -> tuple[list[str], float]:
    """The longest title form whose widest title fits ``cell_pt`` points at ``fontsize``; the
    shortest form, at a smaller size if need be, when none does. One form for all panels, so the
    gallery reads uniformly."""
    return _fit_forms([_title_forms(n, c, total) for n, c in zip(numbers, counts, strict=True)],
                      cell_pt, fontsize)


def _fit_forms(per_panel: list[list[str]], cell_pt: float,
               fontsize: float) -> tuple[list[str], float]:
    """Of the panels' texts (each longest first), the longest form that fits ``cell_pt`` in
    every panel; the shortest, at a smaller size if need be, when none does."""
    forms = list(zip(*per_panel, strict=True))
    prop = FontProperties(size=fontsize)
    widest = [max(_text_width(t, prop) for t in form) for form in forms]
    for form, width in zip(forms, widest, strict=True):
        if width <= 0.95 * cell_pt:
            return list(form), fontsize
    return list(forms[-1]), max(FLOOR_TITLE_PT, fontsize * 0.95 * cell_pt / widest[-1])


def _text_width(text: str, prop: FontProperties) -> float:
    return _TEXT.get_text_width_height_descent(text, prop, ismath=False)[0]


# ------------------------------------------------------------------------------ class captions
def class_rows(session_dir: str | Path, cycle: CycleRecord) -> dict[int, dict]:
    """Per class number: resolution, at_limit, score and reason, from the cycle's class table
    (from its record where the table is missing: without the reasons)."""
    table = class_table_by_number(session_dir, cycle)
    if table:
        return table
    resolutions = cycle.class_resolution + [None] * len(cycle.class_score)
    return {k + 1: {"number": k + 1, "resolution": resolutions[k], "at_limit": False,
                    "score": score, "reason": ""}
            for k, score in enumerate(cycle.class_score)}


def _caption_forms(row: dict | None) -> list[str]:
    """The first caption line of a class, longest first: resolution estimate and score ("–"
    for a class without an estimate: empty, or a single particle)."""
    if not row or row.get("score") is None:
        return ["", "", ""]
    if row.get("resolution") is None:
        return ["–", "–", "–"]
    where, score = resolution_text(row), float(row["score"])
    short = f"{'≤' if row.get('at_limit') else ''}{float(row['resolution']):.0f}Å"
    return [f"{where} · score {score:.2f}", f"{where} · {score:.2f}", f"{short}·{score:.1f}"]


def _wrap(text: str, width_pt: float, prop: FontProperties) -> list[str] | None:
    """``text`` broken at spaces into lines of at most ``width_pt``; None if a word is wider."""
    lines: list[str] = []
    for word in text.split():
        if _text_width(word, prop) > width_pt:
            return None
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and _text_width(trial, prop) <= width_pt:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def _fit_captions(rows: list[dict | None], cell_pt: float, fontsize: float,
                  with_reasons: bool) -> tuple[list[str], float] | None:
    """The captions of the panels: with the reason (wrapped, at most :data:`REASON_LINES`
    lines), or None where a reason does not fit; without reasons, the longest first line that
    fits every panel, as the titles."""
    if not with_reasons:
        return _fit_forms([_caption_forms(row) for row in rows], cell_pt, fontsize)
    prop = FontProperties(size=fontsize)
    width = 0.95 * cell_pt
    captions = []
    for row in rows:
        first = _caption_forms(row)[0]
        reason = _wrap(reason_text(row), width, prop)
        if _text_width(first, prop) > width or reason is None or len(reason) > REASON_LINES:
            return None
        captions.append("\n".join([first, *reason]))
    return captions, fontsize


def draw_gallery(figure: matplotlib.figure.Figure, session_dir: str | Path, cycle: CycleRecord,
                 sort_by_count: bool = True, columns: int | None = None) -> list[int]:
    """Every class average of ``cycle`` with its particle count, each image drawn as
    :func:`live2d.thumbnails.display_image` decides (first MRC row at the top, as in the page and
    Scipion's own viewers); returns the 1-based class numbers in the order drawn.

    For a cycle with class scores, under every image its resolution estimate and score and,
    where there is room, the reason for the score; the selected classes (the proposal with the
    marks over it, as outputParticles holds them for the latest cycle) get a green frame."""
    averages = read_images(Path(session_dir) / cycle.classes)
    counts = (list(cycle.class_counts) + [0] * len(averages))[: len(averages)]
    order = class_order(counts, sort_by_count)
    width, height = (float(v) for v in figure.get_size_inches())
    total = sum(counts)
    rows = class_rows(session_dir, cycle) if cycle.assessed else {}
    chosen = cycle_selection(session_dir, cycle) if cycle.assessed else set()
    captions: list[str] = []
    caption_font = 0.0
    for lines in ((1 + REASON_LINES, 1) if cycle.assessed else (0,)):
        layout = gallery_layout(len(order), width, height, columns, lines)
        cell_in = (width - 2 * MARGIN_IN) / layout.columns
        if not lines:
            break
        fitted = _fit_captions([rows.get(i + 1) for i in order], cell_in * 72, layout.fontsize,
                               with_reasons=lines > 1)
        if fitted is not None:
            captions, caption_font = fitted
            break
    titles, fontsize = _fit_titles([i + 1 for i in order], [counts[i] for i in order], total,
                                   cell_in * 72, layout.fontsize)
    figure.clear()
    for position, index in enumerate(order):
        row, col = divmod(position, layout.columns)
        left = MARGIN_IN + col * cell_in + (cell_in - layout.side) / 2
        bottom = (height - layout.heading_in - row * layout.row_in - layout.title_in
                  - layout.side)
        axes = figure.add_axes((left / width, bottom / height, layout.side / width,
                                layout.side / height))
        axes.imshow(display_image(averages[index]), cmap="gray", origin="upper", vmin=0,
                    vmax=255, interpolation="nearest")
        axes.set_title(titles[position], fontsize=fontsize, pad=0.3 * fontsize)
        axes.set_xticks([])
        axes.set_yticks([])
        if captions:
            axes.annotate(captions[position], xy=(0.5, 0), xycoords="axes fraction",
                          xytext=(0, -0.4 * caption_font), textcoords="offset points",
                          ha="center", va="top", fontsize=caption_font, linespacing=1.15)
        if index + 1 in chosen:
            for spine in axes.spines.values():
                spine.set_edgecolor(SELECTED_COLOR)
                spine.set_linewidth(2.5)
    heading = _gallery_heading(cycle, total, len(order), sort_by_count)
    if cycle.assessed:
        picked = selected_particles(dataclasses.replace(cycle, class_counts=counts),
                                    sorted(chosen))
        classes = "1 class" if len(chosen) == 1 else f"{len(chosen)} classes"
        heading += (f"\nGreen frame: selected, {classes}, {picked} particles · "
                    "under each: resolution estimate (a guide), score")
    figure.suptitle(heading, fontsize=10, y=1 - MARGIN_IN / 2 / height, va="top")
    return [index + 1 for index in order]


def _gallery_heading(cycle: CycleRecord, total: int, n_classes: int, sort_by_count: bool) -> str:
    job = JOB_LABELS.get(cycle.job_type, cycle.job_type)
    order_text = "sorted by particle count" if sort_by_count else "in class order"
    return (f"Cycle {cycle.number} · {job} job {cycle.job}, {cycle.block} · "
            f"{cycle.high_res:.1f} Å\n{total} of {cycle.particles} particles in {n_classes} "
            f"classes, {order_text}")


# ------------------------------------------------------------------------------ evolution
LEGEND_TOP = 10  # classes listed in the legend of the evolution plot
LEGEND_IN = 1.9  # room right of the plot for the resolution axis and the legend


def population_matrix(history: list[CycleRecord]) -> np.ndarray:
    """(cycles, classes) particle counts, classes padded with zeros to the largest K."""
    width = max((len(c.class_counts) for c in history), default=0)
    matrix = np.zeros((len(history), width), dtype=np.int64)
    for row, cycle in enumerate(history):
        matrix[row, : len(cycle.class_counts)] = cycle.class_counts
    return matrix


def class_colors(k: int) -> list[tuple[float, float, float, float]]:
    """A distinct colour per class, neighbours (adjacent bands of the stack) far apart.

    Up to 10 classes tab10's colours, up to 20 then their light tab20 partners. Beyond that,
    turbo (perceptually ordered, bright over its whole range) interpolated at as many points as
    needed (its 256-entry table would repeat colours), visited with a stride near the golden
    ratio so that consecutive classes land far apart along it. Past 100 classes one curve gets
    too crowded to stay distinct even in 8-bit colour: a third of the classes take it plain,
    a third darker, a third lighter.
    """
    if k <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        return [(*rgb, 1.0) for rgb in [*tab20[0::2], *tab20[1::2]][:k]]
    shades = [1.0] if k <= 100 else [1.0, 0.65, -0.45]  # factor, or blend towards white if < 0
    hues = math.ceil(k / len(shades))
    table = np.asarray(matplotlib.colormaps["turbo"].colors)
    stride = next(s for s in itertools.count(round(hues * 0.382)) if math.gcd(s, hues) == 1)
    where = ((np.arange(hues) * stride) % hues) / (hues - 1)
    grid = np.linspace(0, 1, len(table))
    curve = np.stack([np.interp(where, grid, table[:, c]) for c in range(3)], axis=1)
    colors, seen = [], set()
    for index in range(k):
        shade, rgb = shades[index // hues], curve[index % hues]
        rgb = rgb * shade if shade > 0 else rgb + (1 - rgb) * -shade
        # Where turbo moves slowly two classes can still meet on screen (8-bit colour):
        # nudge the later one a level towards grey until it is unique there too.
        while (key := tuple(np.round(rgb * 255).astype(int))) in seen:
            rgb = rgb + np.where(rgb < 0.5, 1, -1) / 255
        seen.add(key)
        colors.append((*map(float, rgb), 1.0))
    return colors


def draw_evolution(figure: matplotlib.figure.Figure, history: list[CycleRecord]):
    """Stacked populations of every class per cycle, class numbers written on the bands wide
    enough to hold them and a legend of the largest classes, the high-resolution limit of each
    cycle on a second axis, job boundaries as dashed lines. Returns (population axes, limit
    axes)."""
    figure.clear()
    width, height = (float(v) for v in figure.get_size_inches())
    figure.subplots_adjust(left=0.75 / width, right=1 - LEGEND_IN / width, top=1 - 0.5 / height,
                           bottom=0.5 / height)
    axes = figure.add_subplot(1, 1, 1)
    if not history:
        axes.text(0.5, 0.5, "no cycles yet", ha="center", va="center",
                  transform=axes.transAxes)
        return axes, None
    cycles = [c.number for c in history]
    matrix = population_matrix(history)
    colors = class_colors(matrix.shape[1])
    # White seams tell bands apart while there are few; with hundreds they would be all you see.
    seam = 0.3 if matrix.shape[1] <= 100 else 0.0
    axes.stackplot(cycles, matrix.T, colors=colors, linewidth=seam, edgecolor="white")
    axes.set_xlabel("cycle")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # cycles are whole numbers
    axes.set_ylabel("particles per class (stacked)")
    axes.set_xlim(min(cycles), max(max(cycles), min(cycles) + 1))
    for previous, cycle in itertools.pairwise(history):
        if cycle.job != previous.job:
            axes.axvline(cycle.number - 0.5, color="black", linestyle="--", linewidth=0.8)
            axes.text(cycle.number - 0.5, 1.0, f" job {cycle.job}", fontsize=7, va="top",
                      transform=axes.get_xaxis_transform())
    label_bands(axes, cycles, matrix, colors)
    _legend_largest(figure, matrix[-1], colors)
    limits = axes.twinx()
    limits.plot(cycles, [c.high_res for c in history], color="black", marker="o",
                markersize=3, linewidth=1.2, label="high-res limit")
    limits.set_ylabel("high-resolution limit (Å)")
    limits.invert_yaxis()  # finer limits upwards: up means more detail
    limits.legend(loc="upper left", fontsize=7)
    figure.suptitle(f"Class populations over {len(history)} cycles "
                    f"({matrix.shape[1]} classes)", fontsize=10)
    return axes, limits


def label_bands(axes, cycles: list[int], matrix: np.ndarray, colors: list, fontsize: float = 7):
    """Each class's number on its band, at the cycle where the band is thickest: largest bands
    first, only where the band is taller than the text and the label covers no earlier one (so
    labels never pile up, however many classes). Returns the texts placed."""
    tops = matrix.cumsum(axis=1)
    middles = tops - matrix / 2
    axes.set_ylim(0, max(1, int(tops[:, -1].max())) * 1.02)  # fixes the scale labels rely on
    unit_px = abs(axes.transData.transform((0, 1))[1] - axes.transData.transform((0, 0))[1])
    text_px = fontsize * axes.figure.dpi / 72
    frame = axes.get_window_extent()
    placed, boxes = [], []
    for k in sorted(range(matrix.shape[1]), key=lambda k: (-matrix[:, k].max(), k)):
        row = len(cycles) - 1 - int(np.argmax(matrix[::-1, k]))  # the latest of equal maxima
        if matrix[row, k] * unit_px < 1.4 * text_px:
            break  # sorted by thickness: no later band is tall enough either
        ha = "left" if row == 0 else "right" if row == len(cycles) - 1 else "center"
        r, g, b, _ = colors[k]
        ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        text = axes.text(cycles[row], middles[row, k], str(k + 1), ha=ha, va="center",
                         fontsize=fontsize, color=ink, fontweight="bold")
        box = text.get_window_extent().expanded(1.15, 1.1)
        if not _inside(box, frame) or any(box.overlaps(other) for other in boxes):
            text.remove()
            continue
        placed.append(text)
        boxes.append(box)
    return placed


def _inside(box, frame) -> bool:
    return (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
            and box.y1 <= frame.y1)


def _legend_largest(figure: matplotlib.figure.Figure, final: np.ndarray, colors: list) -> None:
    """A key to the colours of the largest classes of the last cycle, saying how many of all
    are listed (the bands themselves carry the numbers where they have room)."""
    largest = [k for k in np.argsort(-final, kind="stable")[:LEGEND_TOP] if final[k] > 0]
    if not largest:
        return
    k = len(final)
    which = f"all {k}" if len(largest) == k else f"top {len(largest)} of {k}"
    handles = [Patch(facecolor=colors[i], label=f"#{i + 1}: {int(final[i])}") for i in largest]
    width, height = figure.get_size_inches()
    figure.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - 0.1 / width,
                                                                      1 - 0.5 / height),
                  fontsize=7, title=f"{which} classes,\nlast cycle", title_fontsize=7,
                  frameon=False)


def save_gallery_png(path: str | Path, session_dir: str | Path, cycle: CycleRecord,
                     sort_by_count: bool = True) -> list[int]:
    figure = matplotlib.figure.Figure(figsize=gallery_figsize(len(cycle.class_counts),
                                                              caption_lines(cycle)), dpi=100)
    order = draw_gallery(figure, session_dir, cycle, sort_by_count)
    figure.savefig(path)
    return order


def save_evolution_png(path: str | Path, history: list[CycleRecord]) -> None:
    figure = matplotlib.figure.Figure(figsize=(9, 5), dpi=100)
    draw_evolution(figure, history)
    figure.savefig(path)


def draw_grid_map(figure: matplotlib.figure.Figure, grid: dict | None):
    """The grid squares (:func:`live2d.collection_yield.grid_map`) as tiles at their stage
    positions (in collection order where EPU's metadata gives none), coloured by their share of
    good particles (red 0 → green 1) and sized by their particles, each labelled with its id,
    share and count. Without squares, the session's totals and why. Returns the axes."""
    figure.clear()
    axes = figure.add_subplot(1, 1, 1)
    axes.set_axis_off()
    if grid is None:
        axes.text(0.5, 0.5, "no yield yet: it follows the first scored cycle", ha="center",
                  va="center", transform=axes.transAxes)
        return axes
    squares = grid["squares"]
    if not squares:
        axes.text(0.5, 0.5, f"grid squares unknown (no EPU session folder, or movie names that "
                            f"are not EPU's): {grid['good_particles']:,} good of "
                            f"{grid['particles']:,} particles over {grid['micrographs']:,} "
                            f"micrographs ({grid['good_fraction']:.0%})",
                  ha="center", va="center", wrap=True, transform=axes.transAxes)
        return axes
    largest = max(square["particles"] for square in squares) or 1
    colours = matplotlib.colormaps["RdYlGn"]
    centres, cell, where = _tile_centres(squares)
    for square, (x, y) in zip(squares, centres, strict=True):
        side = cell * (0.25 + 0.7 * math.sqrt(square["particles"] / largest))
        axes.add_patch(matplotlib.patches.Rectangle(
            (x - side / 2, y - side / 2), side, side,
            facecolor=colours(square["good_fraction"]), edgecolor="black", linewidth=0.5))
        label = (f"{square['grid_square']}\n{square['good_fraction']:.0%} good\n"
                 f"{square['particles']:,}")
        axes.text(x, y, label, ha="center", va="center",
                  fontsize=max(5, 9 - int(math.sqrt(len(squares))) // 3))
    xs, ys = (np.array([c[i] for c in centres]) for i in (0, 1))
    axes.set_xlim(xs.min() - cell / 2, xs.max() + cell / 2)
    axes.set_ylim(ys.min() - cell / 2, ys.max() + cell / 2)
    axes.set_aspect("equal")
    figure.suptitle(f"Good particles per grid square ({len(squares)}, {where}; tile size: "
                    "particles)", fontsize=10)
    return axes


def _tile_centres(squares: list[dict]) -> tuple[list[tuple[float, float]], float, str]:
    """Where each square's tile goes, the cell size, and what the layout follows: the stage
    positions EPU's metadata gives (``x_um``, ``y_um``; every square needs one), else
    collection order on a grid, row by row from the top."""
    positions = [(square.get("x_um"), square.get("y_um")) for square in squares]
    if all(x is not None and y is not None for x, y in positions):
        points = np.array(positions, dtype=float)
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
        gaps = gaps[gaps > 0]
        cell = float(gaps.min()) if gaps.size else 1.0
        return [tuple(point) for point in points.tolist()], cell, "at their stage positions"
    columns = math.ceil(math.sqrt(len(squares)))
    rows = math.ceil(len(squares) / columns)
    return ([(index % columns + 0.5, rows - index // columns - 0.5)
             for index in range(len(squares))], 1.0, "in collection order")
