"""A session's report for the facility's records: one self-contained HTML page (CSS inline,
every image a base64 PNG data URI, no link out) from an output folder.

It holds the session's summary, the good particles over time, the yield per grid square (else
per foil hole, else per micrograph), the forecast, the alerts in force, the latest classes,
the settings and the versions. It only reads the folder, through the same readers as ``live2d
status`` and ``live2d yield`` (another process may be classifying into it), and its cost does
not grow with the number of cycles beyond one read of the history: only the latest classes are
drawn, and the store is read once for the yield and the forecast.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
import os
import platform
import re
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from live2d import __version__
from live2d.alerts import read_alerts
from live2d.cistem_star import StarFormatError
from live2d.collection_yield import (
    YieldError,
    latest_scored_cycle,
    score_particles,
    yield_tables,
)
from live2d.epu import epu_folder_problem, read_hole_squares
from live2d.errors import SelectionError
from live2d.forecast import forecast, particle_times
from live2d.history import CycleRecord, read_class_table, read_history
from live2d.mrc import read_images
from live2d.output_folder import DEFAULT_OUTPUT, YIELD_TABLES, OutputFolder
from live2d.schedule import JOB_LABELS, Settings
from live2d.selection import (
    SelectionState,
    good_particles_history,
    selected,
    selected_particles,
)
from live2d.session_state import SessionState, read_state
from live2d.store import StoreError, read_committed_table
from live2d.thumbnails import display_image

# Rows of a yield table shown in the page; the session's CSVs beside the classes have them all
# (a session of 10,000 micrographs would otherwise make a page nobody reads).
MAX_TABLE_ROWS = 200
CLASS_IMAGE_PX = 128  # each class average is drawn at least this wide, for a readable gallery

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; } td.n { text-align: right; }
.note { color: #666; } .alert { color: #a00; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; }
.class { border: 3px solid #ddd; padding: 0.3em; font-size: 0.8em; width: 10em; }
.class.selected { border-color: #2ca02c; }
.class img { width: 100%; image-rendering: pixelated; }
"""


class ReportError(RuntimeError):
    """The folder holds no Live2D session; the message says so."""


def session_report(folder: str | os.PathLike, epu_dir: str | os.PathLike | None = None,
                   now: float | None = None) -> str:
    """The report of the session in the output folder ``folder`` as one HTML page.
    ``epu_dir``: the EPU session folder for the grid squares (default: the one the session
    keeps). Raises ReportError where ``folder`` holds no session."""
    output = OutputFolder(folder)
    state = read_state(output)
    if state is None:
        raise ReportError(f"{output.session_state} is missing or unreadable: {folder} is not "
                          "a Live2D session's output folder")
    history = read_history(output.root)
    try:
        selection = SelectionState.load(output.root)
        selection_note = ""
    except SelectionError as exc:  # the session refuses to go on with it and says so too
        selection, selection_note = SelectionState(), f"The marks are left out: {exc}"
    epu = Path(epu_dir) if epu_dir else (Path(state.epu_dir) if state.epu_dir else None)
    epu_note = epu_folder_problem(epu) if epu else ""
    hole_squares = read_hole_squares(epu) if epu and not epu_note else None
    now = time.time() if now is None else now
    sections = [
        f"<h1>Live2D session report</h1><p class='note'>{_e(output.root.resolve())}, made "
        f"{_when(now)} by live2d {_e(__version__)}</p>",
        _summary(output, state, history),
        _alerts(output.root),
        _yield_over_time(history, selection),
        *_scored_sections(output.root, state, hole_squares, epu_note),
        _classes(output.root, history, selection, selection_note),
        _settings(state.settings),
        _versions(history),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Live2D session report: {_e(output.root.name)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(sections)
            + "\n</body></html>\n")


def report_name(folder: str | os.PathLike, now: float) -> str:
    """A file name for the report of the session in ``folder`` made at ``now``: the Warp
    folder's name (the output folder's is usually "classification") and the time."""
    folder = Path(folder)
    named = folder.parent if folder.name == DEFAULT_OUTPUT else folder
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", named.name) or "session"
    return f"live2d_report_{stem}_{time.strftime('%Y%m%d_%H%M', time.localtime(now))}.html"


def _summary(output: OutputFolder, state: SessionState, history: list[CycleRecord]) -> str:
    try:
        imported = int(json.loads(output.store_state.read_text(encoding="utf-8"))["count"])
    except (OSError, ValueError, KeyError, TypeError):
        imported = 0  # no particle imported yet
    jobs = collections.Counter(JOB_LABELS.get(t, t) for t in
                               dict((r.job, r.job_type) for r in history).values())
    engines = list(dict.fromkeys(r.engine for r in history))
    rows = [("Warp folder", state.warp_dir),
            ("EPU session folder", state.epu_dir or "none given"),
            ("Particles imported", f"{imported:,}"),
            ("Particles in the latest cycle", f"{history[-1].particles:,}" if history else "–"),
            ("Cycles", f"{len(history):,}"),
            ("Jobs", ", ".join(f"{n} {label}" for label, n in jobs.items()) or "none yet"),
            ("Engine", "; ".join(engines) or "none yet"),
            ("First cycle started", _when(history[0].started) if history else "–"),
            ("Latest cycle finished", _when(history[-1].finished) if history else "–"),
            ("Job in progress", f"{JOB_LABELS.get(state.job.job_type, state.job.job_type)}, "
                                f"cycle {state.job.next_index + 1} of {len(state.job.plan)}"
             if state.job else "none")]
    return "<h2>Session</h2>" + _table(("", ""), rows, header=False)


def _alerts(folder: Path) -> str:
    alerts = read_alerts(folder)
    if not alerts:
        return "<h2>Alerts</h2><p>No alert in force.</p>"
    items = "".join(f"<li class='alert'>{_e(a.message)} <span class='note'>(since "
                    f"{_when(a.since)})</span></li>" for a in alerts)
    return f"<h2>Alerts</h2><ul>{items}</ul>"


def _yield_over_time(history: list[CycleRecord], selection: SelectionState) -> str:
    points = good_particles_history(history, selection)
    if not points:
        return "<h2>Good particles over time</h2><p>No cycle with class scores yet.</p>"
    finished = {r.number: r.finished for r in history}
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    figure = _figure(7.0, 3.0)
    axes = figure.add_subplot()
    times = [datetime.fromtimestamp(finished[p["cycle"]]) for p in points]  # local, as _when
    axes.plot(times, [p["imported"] for p in points], marker=".", label="particles")
    axes.plot(times, [p["good"] for p in points], marker=".", color="#2ca02c",
              label="good particles (selected classes)")
    axes.set_ylabel("particles")
    axes.set_ylim(bottom=0)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    latest = points[-1]
    return ("<h2>Good particles over time</h2>" + _img(_png(figure), "good particles by cycle")
            + f"<p>By cycle {latest['cycle']}: {latest['good']:,} good particles of "
              f"{latest['imported']:,} classified.</p>")


def _scored_sections(folder: Path, state: SessionState, hole_squares: dict[str, str] | None,
                     epu_note: str) -> list[str]:
    """The forecast and the yield on the grid: both from the store read once and the latest
    scored cycle."""
    try:
        record = latest_scored_cycle(folder)
        table = read_committed_table(folder)
        particles = score_particles(folder, table, record)
    except YieldError as exc:
        return [f"<h2>Forecast and yield on the grid</h2><p>{_e(exc)}.</p>"]
    except (StoreError, StarFormatError, SelectionError, OSError, ValueError) as exc:
        # the store is being replaced, or a file went: say so, the rest of the report stands
        return ["<h2>Forecast and yield on the grid</h2>"
                f"<p>Not readable now: {_e(exc)}</p>"]
    times, what = particle_times(table)
    lines = forecast(particles, times, state.settings.target_good_particles, what).lines()
    forecast_html = "<h2>Forecast</h2><pre>" + _e("\n".join(lines)) + "</pre>"
    return [forecast_html, _grid_yield(yield_tables(particles, hole_squares), record.number,
                                       epu_note)]


def _grid_yield(tables: dict[str, list[dict]], cycle: int, epu_note: str) -> str:
    level = next((lv for lv in ("square", "hole") if tables[lv]), "micrograph")
    rows = tables[level]
    names = {"square": "grid square", "hole": "foil hole", "micrograph": "micrograph"}
    parts = [f"<h2>Yield per {names[level]}</h2>",
             f"<p>Good particles by the classes selected in cycle {cycle}; particles not "
             "classified yet count as particles only.</p>"]
    if epu_note:
        parts.append(f"<p class='note'>{_e(epu_note)}: grid squares come from the movie paths "
                     "only.</p>")
    if level == "micrograph":
        parts.append("<p class='note'>The micrographs' names are not EPU's (or no EPU session "
                     "folder was given): figures per micrograph only.</p>")
    if not rows:
        return "".join([*parts, "<p>No particle yet.</p>"])
    labels = [_row_name(row, level) for row in rows]
    fractions = [row["good_fraction"] for row in rows]
    figure = _figure(7.0, 2.6)
    axes = figure.add_subplot()
    colours = [_fraction_colour(f) for f in fractions]
    axes.bar(range(len(rows)), fractions, color=colours, width=0.9)
    axes.set_ylim(0, 1)
    axes.set_ylabel("good fraction")
    axes.set_xlabel(f"{names[level]}, in the order collected")
    if level != "micrograph" and len(rows) <= 30:  # micrograph names are too long to label
        axes.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize="x-small")
    figure.tight_layout()
    parts.append(_img(_png(figure), f"good fraction per {names[level]}"))
    shown = rows[:MAX_TABLE_ROWS]
    table_rows = [(label, row["micrographs"], row["particles"], row["good_particles"],
                   f"{row['good_fraction']:.0%}", row["first_seen"] or "–",
                   row["last_seen"] or "–") for label, row in zip(labels, shown, strict=False)]
    parts.append(_table((names[level], "micrographs", "particles", "good particles",
                         "good fraction", "first seen", "last seen"), table_rows))
    if len(rows) > len(shown):
        parts.append(f"<p class='note'>The first {len(shown)} of {len(rows)} are listed: "
                     f"{YIELD_TABLES[level]} in the output folder has them all.</p>")
    return "".join(parts)


def _row_name(row: dict, level: str) -> str:
    if level == "square":
        return f"GridSquare_{row['grid_square']}"
    if level == "hole":
        return f"FoilHole_{row['foil_hole']}" + (f" (GridSquare_{row['grid_square']})"
                                                 if row["grid_square"] else "")
    return Path(str(row["micrograph"]).replace("\\", "/")).name


def _fraction_colour(fraction: float) -> tuple[float, float, float, float]:
    import matplotlib

    return matplotlib.colormaps["RdYlGn"](float(fraction))


def _classes(folder: Path, history: list[CycleRecord], selection: SelectionState,
             selection_note: str) -> str:
    if not history:
        return "<h2>Classes</h2><p>No classes yet: no classification cycle has finished.</p>"
    record = history[-1]
    try:
        images = read_images(folder / record.classes)
    except (OSError, ValueError) as exc:
        return f"<h2>Classes</h2><p>The classes of cycle {record.number} are not readable " \
               f"now: {_e(exc)}</p>"
    try:
        rows = {int(row["number"]): row for row in read_class_table(folder, record) or []}
    except (OSError, ValueError):
        rows = {}
    chosen = set(selected(record, selection)) if record.assessed else set()
    cards = []
    for number, image in enumerate(images, start=1):
        row = rows.get(number, {})
        count = record.class_counts[number - 1] if number <= len(record.class_counts) else 0
        resolution = row.get("resolution")
        lines = [f"<b>class {number}</b>{' ✓ selected' if number in chosen else ''}",
                 f"{count:,} particles"]
        if row:
            estimate = (f"{resolution:.1f} Å" if resolution is not None
                        else "no resolution estimate")
            lines.append(("≤ " if row.get("at_limit") else "") + estimate)
            # the reason starts with the estimate where there is one: said once, above
            reason = str(row.get("reason", "")).removeprefix(f"{estimate}, ")
            lines.append(f"score {float(row['score']):.2f}: {_e(reason)}")
        cards.append(f"<div class='class{' selected' if number in chosen else ''}'>"
                     + _img(_class_png(image), f"class {number}") + "<br>"
                     + "<br>".join(lines) + "</div>")
    heading = (f"<h2>Classes of cycle {record.number}</h2><p>{len(chosen)} selected (framed "
               "green: the proposal with the marks over it), "
               f"{selected_particles(record, sorted(chosen)):,} particles in them.</p>")
    if not record.assessed:
        heading += "<p class='note'>This cycle's classes are not scored (the random start).</p>"
    if selection_note:
        heading += f"<p class='note'>{_e(selection_note)}</p>"
    return heading + "<div class='gallery'>" + "".join(cards) + "</div>"


def _settings(settings: Settings) -> str:
    values = settings.to_dict()
    rows = []
    for spec in Settings.specs():
        value = values[spec["name"]]
        unit = f" {spec['unit']}" if spec["unit"] and value is not None else ""
        rows.append((spec["label"], f"{'default' if value is None else value}{unit}",
                     spec["name"]))
    return "<h2>Settings</h2>" + _table(("setting", "value", "name"), rows)


def _versions(history: list[CycleRecord]) -> str:
    import matplotlib
    import torch

    rows = [("live2d", __version__), ("Python", platform.python_version()),
            ("torch", torch.__version__), ("numpy", np.__version__),
            ("matplotlib", matplotlib.__version__),
            ("engine (latest cycle)", history[-1].engine if history else "none yet"),
            ("machine", f"{platform.node()} ({platform.platform()})")]
    return "<h2>Versions</h2>" + _table(("", ""), rows, header=False)


# ------------------------------------------------------------------------------ HTML pieces
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def _table(columns: tuple[str, ...], rows: Iterable[tuple], header: bool = True) -> str:
    head = ("<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>") if header else ""
    body = "".join("<tr>" + "".join(
        f"<td class='n'>{v:,}</td>" if isinstance(v, int) else f"<td>{_e(v)}</td>"
        for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return (f"<img src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}' "
            f"alt='{_e(alt)}'>")


def _class_png(image: np.ndarray) -> bytes:
    picture = Image.fromarray(display_image(image))
    if picture.width < CLASS_IMAGE_PX:
        scale = -(-CLASS_IMAGE_PX // picture.width)
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    # A Figure of its own, not pyplot's: no global state, no GUI backend, safe in the server.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
