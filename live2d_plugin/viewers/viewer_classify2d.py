"""Live2DViewer: class galleries of any cycle and the evolution of class populations, drawn with
matplotlib (no Java viewer needed)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pyworkflow.protocol.params as params
import pyworkflow.viewer as pwviewer

from live2d.history import CycleRecord, read_history
from live2d_plugin.protocols.protocol_classify2d import ProtLive2DClassify2D
from live2d_plugin.viewers.plots import (
    caption_lines,
    draw_evolution,
    draw_gallery,
    gallery_figsize,
)


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

    def _getVisualizeDict(self):
        return {"displayGallery": self._showGallery, "displayEvolution": self._showEvolution}

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
        plotter = self._plotter(gallery_figsize(len(cycle.class_counts), caption_lines(cycle)),
                                gallery_window_title(cycle))
        draw_gallery(plotter.getFigure(), self._sessionDir(), cycle, bool(self.sortByCount))
        return [plotter]

    def _showEvolution(self, _param=None):
        history = self._cycles()
        plotter = self._plotter((9, 5), evolution_window_title(history))
        draw_evolution(plotter.getFigure(), history)
        return [plotter]

    def errorMessage(self, message: str, title: str):
        return pwviewer.MessageView(message, title, msgType=pwviewer.MSG_ERROR,
                                   tkParent=self.getTkRoot())
