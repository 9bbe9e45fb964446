"""Streaming import of the particles Warp exports, with their CTF, while Warp is collecting."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import ClassVar

import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImport
from pyworkflow import BETA
from pyworkflow.object import Set

from live2d import warp
from live2d.atomic import atomic_write_json
from live2d.importer import Importer
from live2d.schedule import Settings
from live2d.store import ParticleStore
from live2d_plugin.constants import PARTICLE_FILE_LABELS, STOP_ACTION, STOP_FILE
from live2d_plugin.convert import acquisition_from_warp, particles_from_store_rows

PARTICLE_FILES = ("allparticles", "goodparticles")
OUTPUT_NAME = "outputParticles"
SOURCE_FILE = "warp_source.json"
# Seconds between polls of the Warp folder: a poll reads only what Warp added (O(new particles)),
# so polling often is cheap; short timeouts poll a few times within the timeout.
MAX_POLL_SECONDS = 3.0
MIN_POLL_SECONDS = 0.5


class StoreResetRefused(Exception):
    """The importer wanted to empty a store whose particles are already in the output."""


class PublishedStore(ParticleStore):
    """A particle store whose images a Scipion output points to: the core's importer empties
    its store when Warp's settings change (and imports everything again), which would swap the
    images under the published particles. Here that ends the import instead."""

    def reset(self, pixel_size: float, box: int) -> None:
        if self.count:
            raise StoreResetRefused()
        super().reset(pixel_size, box)


class ProtLive2DImportWarp(ProtImport):
    """Imports the particles Warp picks and exports while it is still collecting.

    The output set stays open and grows as Warp writes new particles; it closes when the
    protocol is stopped (right click > STOP STREAMING, or the Stop button) or when no new
    particle arrived for the timeout. Every particle carries its CTF from Warp's star file.
    """

    _label = "import warp particles (live)"
    _devStatus = BETA
    _possibleOutputs: ClassVar[dict] = {OUTPUT_NAME: SetOfParticles}

    # ------------------------------------------------------------------------------ form
    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("warpFolder", params.PathParam, important=True,
                      label="Warp folder",
                      help="The folder Warp processes: it holds previous.settings and the "
                           "particle star files (Warp > Picking > Export particles on). The "
                           "import may start before Warp does: on a folder without "
                           "previous.settings yet it waits for it, up to the Timeout.")
        form.addParam("particleFile", params.EnumParam, choices=list(PARTICLE_FILE_LABELS),
                      default=0, display=params.EnumParam.DISPLAY_HLIST,
                      label="Particles", help=Settings.describe("particle_file"))
        form.addParam("streamTimeout", params.FloatParam, default=120.0,
                      validators=[params.Positive],
                      label="Timeout (minutes)",
                      help="Minutes without new particles after which the output is closed "
                           "and the protocol finishes. Right click > STOP STREAMING closes it "
                           "at once.")

    # ------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.importStep, needsGPU=False)

    def importStep(self) -> None:
        store = PublishedStore(self._getExtraPath("store"))
        importer = Importer(self._warpDir(), store, which=self._which())
        published = self._publishedCount()
        timeout = float(self.streamTimeout.get()) * 60.0
        poll = min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, timeout / 6.0))
        last_new = time.monotonic()
        try:
            while True:
                report = importer.poll()
                for message in report.messages:
                    self.info(message)
                if store.count > published:
                    published = self._publish(store, published)
                    last_new = time.monotonic()
                if self._stopRequested():
                    self.info("STOP STREAMING requested: closing the output")
                    break
                if time.monotonic() - last_new > timeout:
                    self.info(f"no new particles for {self.streamTimeout.get()} min: "
                              "closing the output")
                    break
                time.sleep(poll)
        except StoreResetRefused:
            self._closeOutput()
            raise RuntimeError(self._changeMessage(store)) from None
        self._closeOutput()

    # ------------------------------------------------------------------------------ output
    def _publish(self, store: ParticleStore, published: int) -> int:
        """Append the store's particles beyond ``published`` to the open output set."""
        rows = store.read_table().iloc[published:]
        settings = warp.read_settings(self._warpDir())
        output = self._openOutput(store, settings)
        stack = str(store.stack_path)
        if not published:
            self._recordSource(settings)
        acquisition = acquisition_from_warp(settings)
        for particle in particles_from_store_rows(rows, stack, store.pixel_size, acquisition):
            output.append(particle)
        self._updateOutputSet(OUTPUT_NAME, output, Set.STREAM_OPEN)
        self.info(f"{len(rows)} new particles; {published + len(rows)} in {OUTPUT_NAME}")
        return published + len(rows)

    def _openOutput(self, store: ParticleStore, settings: warp.WarpSettings) -> SetOfParticles:
        path = self._getPath("particles.sqlite")
        if os.path.exists(path):
            output = SetOfParticles(filename=path)
            output.loadAllProperties()
            output.enableAppend()
            return output
        output = SetOfParticles(filename=path)
        output.setStreamState(Set.STREAM_OPEN)
        output.setSamplingRate(store.pixel_size)
        output.setAcquisition(acquisition_from_warp(settings))
        output.setHasCTF(True)
        return output

    def _publishedCount(self) -> int:
        output = getattr(self, OUTPUT_NAME, None)
        return int(output.getSize()) if output is not None else 0

    def _closeOutput(self) -> None:
        output = getattr(self, OUTPUT_NAME, None)
        if output is None:
            return
        output = SetOfParticles(filename=output.getFileName())
        output.loadAllProperties()
        output.enableAppend()
        self._updateOutputSet(OUTPUT_NAME, output, Set.STREAM_CLOSED)

    def _recordSource(self, settings: warp.WarpSettings) -> None:
        """What the published particles were imported with, to name a later change."""
        atomic_write_json(Path(self._getExtraPath(SOURCE_FILE)), {
            "box": settings.box, "model": settings.model, "min_score": settings.min_score,
            "pixel_size": settings.pixel_size, "particles": self._which()})

    def _changeMessage(self, store: ParticleStore) -> str:
        changes = []
        try:
            now = warp.read_settings(self._warpDir())
            before = json.loads(Path(self._getExtraPath(SOURCE_FILE)).read_text())
        except (OSError, ValueError, warp.WarpFolderError):
            now, before = None, {}
        if now is not None:
            names = {"box": "box size", "model": "BoxNet model",
                     "min_score": "picking threshold", "pixel_size": "pixel size"}
            changes = [f"Warp's {label} changed {before[key]} -> {getattr(now, key)}"
                       for key, label in names.items()
                       if key in before and before[key] != getattr(now, key)]
        reason = "; ".join(changes) or (
            f"rows already imported from Warp's {self._which()} star file changed (Warp's "
            "filters or picking changed)")
        return (f"{reason}. The {store.count} particles already in {OUTPUT_NAME} came from "
                "the previous settings and cannot be mixed with new ones: the output is closed. "
                "Start a new 'import warp particles (live)' protocol for the particles of the "
                "new settings.")

    # ------------------------------------------------------------------------------ stop
    def _stopFile(self) -> str:
        return self._getExtraPath(STOP_FILE)

    def _stopRequested(self) -> bool:
        return os.path.exists(self._stopFile())

    def getActions(self):
        """Right-click action in the project GUI (the GUI runs in another process)."""
        return [(STOP_ACTION, self.stopStreaming)] if self.isRunning() else []

    def stopStreaming(self, *_args) -> None:
        Path(self._stopFile()).touch()

    # ------------------------------------------------------------------------------ helpers
    def _warpDir(self) -> str:
        return os.path.abspath(self.warpFolder.get())

    def _which(self) -> str:
        return PARTICLE_FILES[self.particleFile.get()]

    # ------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        errors = []
        try:
            settings = warp.read_settings(self._warpDir())
        except (warp.WarpSettingsUnreadable, warp.WarpSettingsMissing):
            return errors  # Warp may be writing it, or not have started yet: the import waits
        except warp.WarpFolderError as exc:
            return [str(exc)]
        if settings.box < 8:
            errors.append(f"Warp's box of {settings.box} px is too small")
        return errors

    def _summary(self) -> list[str]:
        lines = [f"Warp folder: {self.warpFolder.get()} ({self._which()})"]
        output = getattr(self, OUTPUT_NAME, None)
        if output is not None:
            state = "open, growing" if output.isStreamOpen() else "closed"
            lines.append(f"{output.getSize()} particles imported (output {state}), "
                         f"{output.getSamplingRate():.3f} Å/px")
        else:
            lines.append("No particles imported yet.")
        return lines

    def _methods(self) -> list[str]:
        output = getattr(self, OUTPUT_NAME, None)
        if output is None:
            return []
        return [f"{output.getSize()} particles picked and exported by Warp [Tegunov2019] were "
                f"imported with Live2D at {output.getSamplingRate():.3f} Å/px, with their CTF."]

    def _citations(self) -> list[str]:
        return ["Tegunov2019"]
