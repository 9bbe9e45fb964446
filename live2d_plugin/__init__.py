"""Scipion plugin of Live2D: streaming import of Warp's particles, live 2D classification and a
class-evolution viewer. A thin adapter over the framework-free ``live2d`` package: everything that
classifies lives there; this package only moves data between Scipion objects and Live2D files.
"""

from __future__ import annotations

import os
from typing import ClassVar

import pwem
import pyworkflow.utils as pwutils

from live2d_plugin.constants import LIVE2D_CISTEM_BIN, LIVE2D_DEVICE

__version__ = "0.1.0"
_logo = ""
_references = ["Barad_Live2D", "Grant2018", "Tegunov2019"]


class Plugin(pwem.Plugin):
    """Live2D's Scipion plugin: its configuration variables (cisTEM's folder, the built-in
    engine's device) and references."""
    # Deliberately no _homeVar / _pathVars: pyworkflow fails the validation of every protocol of
    # a plugin whose path variables point nowhere, and the built-in engine needs no binaries.
    # The classification protocol checks cisTEM itself, and only when cisTEM is chosen.
    _pathVars: ClassVar[list[str]] = []
    _url = "https://github.com/bbarad/Live2D"
    _supportedVersions: ClassVar[list[str]] = [__version__]

    @classmethod
    def _defineVariables(cls) -> None:
        cls._defineVar(LIVE2D_CISTEM_BIN, "",
                       description="Folder with cisTEM 2's refine2d and merge2d (optional: "
                                   "empty = $CISTEM_HOME/bin, then PATH)")
        cls._defineVar(LIVE2D_DEVICE, "auto",
                       description="Device of the built-in engine: auto, cpu, cuda or cuda:N")

    @classmethod
    def getCistemBin(cls) -> str | None:
        value = cls.getVar(LIVE2D_CISTEM_BIN) or os.environ.get(LIVE2D_CISTEM_BIN, "")
        return value or None

    @classmethod
    def getDevice(cls) -> str:
        return cls.getVar(LIVE2D_DEVICE) or "auto"

    @classmethod
    def getEnviron(cls) -> pwutils.Environ:
        """The environment for external programs (a ``pwutils.Environ``: ``runJob`` needs one)."""
        environ = pwutils.Environ(os.environ)
        cistem_bin = cls.getCistemBin()
        if cistem_bin:
            environ.update({"PATH": cistem_bin}, position=pwutils.Environ.BEGIN)
        return environ

    @classmethod
    def validateInstallation(cls) -> list[str]:
        # Nothing to install beyond the Python package: the engine check is per protocol.
        return []

    @classmethod
    def defineBinaries(cls, env) -> None:
        # Live2D is pure Python (pip); cisTEM, when wanted, is installed by the user or by the
        # scipion-em-cistem plugin and found through LIVE2D_CISTEM_BIN, CISTEM_HOME or PATH.
        return None
