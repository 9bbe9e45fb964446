"""Live2DViewer: class galleries of any cycle and the evolution of class populations, drawn with
matplotlib (no Java viewer needed)."""

from __future__ import annotations

import shutil
import sqlite3
import time
import webbrowser
from pathlib import Path
from typing import ClassVar

import pyworkflow.protocol.params as params
import pyworkflow.viewer as pwviewer
from pwem.protocols import ProtUserSubSet

from live2d.atomic import atomic_write_text
from live2d.collection_yield import read_grid_map
from live2d.history import CycleRecord, read_history, thinned_words
from live2d.output_folder import OutputFolder
from live2d.report import ReportError, session_report
from live2d.session_state import read_state
from live2d_plugin.protocols.protocol_classify2d import ProtLive2DClassify2D, cycle_set_path
from live2d_plugin.quality import cycle_selection
from live2d_plugin.viewers.plots import (
    caption_lines,
    draw_evolution,
    draw_gallery,
    draw_grid_map,
    gallery_figsize,
)

REPORT_NAME = "live2d_report.html"  # in the run's extra folder, replaced by each new report


def gallery_window_title(cycle: CycleRecord) -> str:
    return f"Live2D – class averages, cycle {cycle.number}"


def evolution_window_title(history: list[CycleRecord]) -> str:
    cycles = "1 cycle" if len(history) == 1 else f"{len(history)} cycles"
    return f"Live2D – class populations over {cycles}"


class Live2DViewer(pwviewer.ProtocolViewer):
    """Class averages of any cycle (with particle counts, sortable by count; with each class's
    resolution estimate, score and its reason, the selected classes framed) and how the class
    populations and the resolution limit evolved over the session."""

    _label = "viewer live 2D classification"
    _targets: ClassVar[list] = [ProtLive2DClassify2D]
    _environments: ClassVar[list] = [pwviewer.DESKTOP_TKINTER]

    def _defineParams(self, form) -> None:
        history = self._cycles()
        last = history[-1].number if history else 0
        numbers = ", ".join(str(c.number) for c in history[-12:]) or "none yet"
        form.addSection(label="Visualization")
        form.addParam("cycle", params.IntParam, default=last, label="Cycle",
                      help=f"Cycle whose class averages to show (latest: {last}; recent: "
                           f"{numbers}).")
        form.addParam("sortByCount", params.BooleanParam, default=True,
                      label="Sort classes by particle count",
                      help="Largest classes first; No shows them in class order.")
        form.addParam("displayGallery", params.LabelParam, label="Class averages of the cycle")
        form.addParam("displayEvolution", params.LabelParam,
                      label="Evolution of class populations")
        form.addParam("displaySquares", params.LabelParam,
                      label="Good particles per grid square (map)",
                      help="Each grid square as a tile coloured by its share of good particles "
                           "and sized by its particles, by the latest scored cycle: where to "
                           "collect more.")
        form.addParam("displayReport", params.LabelParam, label="Session report (HTML)",
                      help="One self-contained HTML file for the facility's records: summary, "
                           "good particles over time, the grid squares, forecast, alerts, the "
                           "latest classes with their scores, settings and versions. Written "
                           "into the run's extra folder and opened in the web browser.")
        form.addParam("subsetClasses", params.StringParam, default="",
                      label="Classes for a subset",
                      help="Class numbers of the cycle above, e.g. 1 4 7; empty: the classes "
                           "selected in that cycle (scored good, with the marks made in "
                           "Live2D's page).")
        form.addParam("createSubset", params.LabelParam,
                      label="Create a subset of their particles",
                      help="Runs Scipion's subset protocol on the members these classes had "
                           "in that cycle, with that cycle's 2D alignment, whatever cycles "
                           "came since.")

    def _getVisualizeDict(self):
        return {"displayGallery": self._showGallery, "displayEvolution": self._showEvolution,
                "displaySquares": self._showSquares, "displayReport": self._writeReport,
                "createSubset": self._createSubset}

    # ------------------------------------------------------------------------------ data
    def _sessionDir(self) -> Path:
        return Path(self.protocol._sessionDir())

    def _cycles(self) -> list[CycleRecord]:
        return read_history(self._sessionDir())

    def _chosenCycle(self) -> CycleRecord | None:
        history = self._cycles()
        wanted = self.cycle.get()
        return next((c for c in history if c.number == wanted), None)

    # ------------------------------------------------------------------------------ views
    def _plotter(self, figsize: tuple[float, float], title: str):
        from pyworkflow.gui.plotter import Plotter

        plotter = Plotter(figsize=figsize, windowTitle=title)
        # The drawings lay themselves out for their number of classes; Plotter.show()'s
        # tight_layout would undo that.
        plotter.tightLayoutOn = False
        return plotter

    def _showGallery(self, _param=None):
        cycle = self._chosenCycle()
        if cycle is None:
            numbers = [c.number for c in self._cycles()]
            return [self.errorMessage(f"There is no cycle {self.cycle.get()}; cycles on disk: "
                                      f"{numbers or 'none yet'}", "No such cycle")]
        if not cycle.averages_kept:
            return [self.errorMessage(f"{thinned_words(self._cycles(), cycle)}.",
                                      "Class averages thinned")]
        plotter = self._plotter(gallery_figsize(len(cycle.class_counts), caption_lines(cycle)),
                                gallery_window_title(cycle))
        draw_gallery(plotter.getFigure(), self._sessionDir(), cycle, bool(self.sortByCount))
        return [plotter]

    def _showEvolution(self, _param=None):
        history = self._cycles()
        plotter = self._plotter((9, 5), evolution_window_title(history))
        draw_evolution(plotter.getFigure(), history)
        return [plotter]

    def _showSquares(self, _param=None):
        plotter = self._plotter((8, 7), "Live2D – good particles per grid square")
        state = read_state(OutputFolder(self._sessionDir()))
        epu_dir = state.epu_dir if state is not None and state.epu_dir else None
        draw_grid_map(plotter.getFigure(), read_grid_map(self._sessionDir(), epu_dir))
        return [plotter]

    def _writeReport(self, _param=None):
        try:
            text = session_report(self._sessionDir())
        except ReportError as exc:
            return [self.errorMessage(str(exc), "No report")]
        path = Path(self.protocol._getExtraPath(REPORT_NAME)).resolve()
        atomic_write_text(path, text)
        webbrowser.open(path.as_uri())
        return [pwviewer.MessageView(f"The session report is {path}", "Session report",
                                     msgType=pwviewer.MSG_INFO, tkParent=self.getTkRoot())]

    def _createSubset(self, _param=None):
        """pwem's subset protocol, given the cycle's classes with the chosen ones enabled (as
        Scipion's Java viewer hands it a marked copy of the set), so that it takes that cycle's
        members, not those of outputClasses when it runs."""
        cycle = self._chosenCycle()
        if cycle is None:
            return [self.errorMessage(f"There is no cycle {self.cycle.get()}.", "No such cycle")]
        try:
            chosen = self._subsetClassNumbers(cycle)
        except ValueError as exc:
            return [self.errorMessage(str(exc), "Which classes?")]
        project = self.getProject()
        source = Path(project.getPath(cycle_set_path(self.protocol, "classes2D", cycle.number)))
        if not source.exists():
            kept = sorted(int(p.stem.rsplit("cycle", 1)[1]) for p in source.parent.glob(
                "classes2D_cycle*.sqlite"))
            return [self.errorMessage(
                f"Scipion's classes of cycle {cycle.number} are no longer on disk (a cycle's "
                f"set is kept for an hour after the next one replaced it); cycles with a set: "
                f"{', '.join(map(str, kept)) or 'none'}.", "Cycle no longer published")]
        marked = Path(project.getPath("Tmp"),
                      f"live2d_cycle{cycle.number:03d}_{time.strftime('%Y%m%d%H%M%S')}.sqlite")
        marked.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, marked)
        with sqlite3.connect(marked) as connection:
            connection.execute("UPDATE Objects SET enabled = 0")
            connection.executemany("UPDATE Objects SET enabled = 1 WHERE id = ?",
                                   [(n,) for n in chosen])
        subset = project.newProtocol(ProtUserSubSet)
        subset.inputObject.set(self.protocol)
        subset.inputObject.setExtended("outputClasses")
        subset.sqliteFile.set(f"{marked},")
        subset.outputClassName.set("SetOfParticles")
        numbers = " ".join(map(str, chosen))
        subset.setObjLabel(f"cycle {cycle.number} classes {numbers}")
        project.launchProtocol(subset)
        self.subsetProtocol = subset
        return [pwviewer.MessageView(
            f"Subset of the particles of classes {numbers} of cycle {cycle.number} launched: "
            f"'{subset.getObjLabel()}' in the project.", "Subset created",
            msgType=pwviewer.MSG_INFO, tkParent=self.getTkRoot())]

    def _subsetClassNumbers(self, cycle: CycleRecord) -> list[int]:
        text = (self.subsetClasses.get() or "").replace(",", " ").split()
        if not text:
            chosen = sorted(cycle_selection(self._sessionDir(), cycle))
            if not chosen:
                raise ValueError(f"No class of cycle {cycle.number} is selected: give the "
                                 "class numbers.")
            return chosen
        try:
            chosen = sorted({int(word) for word in text})
        except ValueError:
            raise ValueError(f"'{self.subsetClasses.get()}' is not a list of class numbers "
                             "(e.g. 1 4 7).") from None
        populated = {n for n, count in enumerate(cycle.class_counts, start=1) if count}
        missing = [n for n in chosen if n not in populated]
        if missing:
            raise ValueError(f"Cycle {cycle.number} has no class {', '.join(map(str, missing))} "
                             f"with particles (its classes with particles: "
                             f"{', '.join(map(str, sorted(populated)))}).")
        return chosen

    def errorMessage(self, message: str, title: str):
        return pwviewer.MessageView(message, title, msgType=pwviewer.MSG_ERROR,
                                   tkParent=self.getTkRoot())
