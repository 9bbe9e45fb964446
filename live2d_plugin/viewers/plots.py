"""Matplotlib drawings of a Live2D session folder: the class gallery of a cycle and the evolution
of class populations. Pure matplotlib on a given Figure (no pyworkflow, no Tk), so they render
headless to PNG and inside Scipion's Tk windows alike."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.figure
import mrcfile
import numpy as np
from matplotlib.ticker import MaxNLocator

from live2d.thumbnails import to_8bit


@dataclass(frozen=True)
class CycleInfo:
    number: int
    job: int
    job_type: str
    block: str
    high_res: float
    particles: int
    class_counts: list[int]
    classes: str  # MRC stack of the averages, relative to the session folder


def load_history(session_dir: str | Path) -> list[CycleInfo]:
    """The cycles recorded in ``session.json`` (empty when there is none yet)."""
    path = Path(session_dir) / "session.json"
    if not path.exists():
        return []
    state = json.loads(path.read_text(encoding="utf-8"))
    return [CycleInfo(int(r["number"]), int(r["job"]), str(r["job_type"]), str(r["block"]),
                      float(r["high_res"]), int(r["particles"]), list(r["class_counts"]),
                      str(r["classes"]))
            for r in state.get("history", [])]


def class_order(counts: list[int], sort_by_count: bool) -> list[int]:
    """0-based class indices in display order: by descending count (ties by number) or by
    number."""
    indices = list(range(len(counts)))
    if sort_by_count:
        indices.sort(key=lambda i: (-counts[i], i))
    return indices


def draw_gallery(figure: matplotlib.figure.Figure, session_dir: str | Path, cycle: CycleInfo,
                 sort_by_count: bool = True, columns: int | None = None) -> list[int]:
    """Every class average of ``cycle`` with its particle count; returns the 1-based class
    numbers in the order drawn."""
    with mrcfile.open(Path(session_dir) / cycle.classes, permissive=True) as mrc:
        averages = np.asarray(mrc.data, dtype=np.float32).reshape((-1, *mrc.data.shape[-2:]))
    counts = list(cycle.class_counts) + [0] * (len(averages) - len(cycle.class_counts))
    order = class_order(counts[: len(averages)], sort_by_count)
    columns = columns or max(1, math.ceil(math.sqrt(len(order) * 1.5)))
    rows = max(1, math.ceil(len(order) / columns))
    figure.clear()
    total = sum(counts)
    for position, index in enumerate(order):
        axes = figure.add_subplot(rows, columns, position + 1)
        # MRC rows run bottom-up: draw with the origin at the lower left, as cisTEM shows them.
        axes.imshow(to_8bit(averages[index]), cmap="gray", origin="lower", vmin=0, vmax=255)
        share = f" ({100 * counts[index] / total:.1f}%)" if total else ""
        axes.set_title(f"#{index + 1}: {counts[index]}{share}", fontsize=7)
        axes.set_xticks([])
        axes.set_yticks([])
    order_text = "sorted by particle count" if sort_by_count else "in class order"
    figure.suptitle(f"Cycle {cycle.number} (job {cycle.job}, {cycle.job_type}, {cycle.block}) "
                    f"- {cycle.high_res:.1f} Å - {total} of {cycle.particles} particles, "
                    f"{order_text}", fontsize=9)
    return [index + 1 for index in order]


def population_matrix(history: list[CycleInfo]) -> np.ndarray:
    """(cycles, classes) particle counts, classes padded with zeros to the largest K."""
    width = max((len(c.class_counts) for c in history), default=0)
    matrix = np.zeros((len(history), width), dtype=np.int64)
    for row, cycle in enumerate(history):
        matrix[row, : len(cycle.class_counts)] = cycle.class_counts
    return matrix


def draw_evolution(figure: matplotlib.figure.Figure, history: list[CycleInfo]):
    """Stacked populations of every class per cycle, the high-resolution limit of each cycle on
    a second axis, job boundaries as dashed lines. Returns (population axes, limit axes)."""
    figure.clear()
    axes = figure.add_subplot(1, 1, 1)
    if not history:
        axes.text(0.5, 0.5, "no cycles yet", ha="center", va="center",
                  transform=axes.transAxes)
        return axes, None
    cycles = [c.number for c in history]
    matrix = population_matrix(history)
    colors = [_class_color(i) for i in range(matrix.shape[1])]
    axes.stackplot(cycles, matrix.T, colors=colors, linewidth=0.3, edgecolor="white")
    axes.set_xlabel("cycle")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # cycles are whole numbers
    axes.set_ylabel("particles per class (stacked)")
    axes.set_xlim(min(cycles), max(max(cycles), min(cycles) + 1))
    for previous, cycle in itertools.pairwise(history):
        if cycle.job != previous.job:
            axes.axvline(cycle.number - 0.5, color="black", linestyle="--", linewidth=0.8)
            axes.text(cycle.number - 0.5, 1.0, f" job {cycle.job}", fontsize=7, va="top",
                      transform=axes.get_xaxis_transform())
    limits = axes.twinx()
    limits.plot(cycles, [c.high_res for c in history], color="black", marker="o",
                markersize=3, linewidth=1.2, label="high-res limit")
    limits.set_ylabel("high-resolution limit (Å)")
    limits.invert_yaxis()  # finer limits upwards: up means more detail
    limits.legend(loc="upper left", fontsize=7)
    figure.suptitle(f"Class populations over {len(history)} cycles "
                    f"({matrix.shape[1]} classes)", fontsize=10)
    return axes, limits


def _class_color(index: int):
    import matplotlib

    return matplotlib.colormaps["tab20"](index % 20)


def save_gallery_png(path: str | Path, session_dir: str | Path, cycle: CycleInfo,
                     sort_by_count: bool = True) -> list[int]:
    figure = matplotlib.figure.Figure(figsize=(10, 8), dpi=100)
    order = draw_gallery(figure, session_dir, cycle, sort_by_count)
    figure.savefig(path)
    return order


def save_evolution_png(path: str | Path, history: list[CycleInfo]) -> None:
    figure = matplotlib.figure.Figure(figsize=(9, 5), dpi=100)
    draw_evolution(figure, history)
    figure.savefig(path)
