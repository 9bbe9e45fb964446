"""Streaming import of the particles Warp exports, with their CTF, while Warp is collecting.

Warp 1.x folders, WarpTools 2 projects and any RELION particle star: the core's importer tells
them apart (:mod:`live2d.layouts`), as ``live2d run DIR --star STAR --contrast ...`` does."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import ClassVar

import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImport
from pyworkflow import BETA
from pyworkflow.object import Set, String

from live2d import warp
from live2d.atomic import atomic_write_json
from live2d.importer import CONTRASTS, Importer, StartOver
from live2d.layouts import STAR, WARP, WARPTOOLS, Layout, detect_layout
from live2d.relion_star import is_particle_star
from live2d.schedule import Settings
from live2d.store import ParticleStore
from live2d_plugin.constants import PARTICLE_FILE_LABELS
from live2d_plugin.convert import (
    EPU_FOLDER_ATTRIBUTE,
    acquisition_from_warp,
    particles_from_store_rows,
)
from live2d_plugin.protocols.labels import Live2DLabel
from live2d_plugin.set_rows import holds_written_set
from live2d_plugin.stopping import StreamStopping

PARTICLE_FILES = ("allparticles", "goodparticles")
OUTPUT_NAME = "outputParticles"
SOURCE_FILE = "warp_source.json"
# Seconds between polls of the Warp folder: a poll reads only what Warp added (O(new particles)),
# so polling often is cheap; short timeouts poll a few times within the timeout.
MAX_POLL_SECONDS = 3.0
MIN_POLL_SECONDS = 0.5
# What the Scipion forms add to the shared help of the settings (Settings.describe).
PARTICLE_FILE_NOTE = "Warp 1.x folders only: a particle star is imported whole."
CONTRAST_NOTE = ("Here the import does not change the pixels: each output particle records "
                 "the contrast, and 'live 2D classification' classifies with it (other Scipion "
                 "protocols expect white protein).")
# The core's messages name the command line's option; the form calls it so.
CLI_WORDS = (("give --star", 'set "Particle star"'), ("--star", '"Particle star"'))
COPY_FILES_HELP = (
    "By default the particles are not copied into the project, to avoid data duplication and to "
    "save disk space: the output particles point at the stacks Warp 1.x wrote (each written "
    "once), which must then stay where they are while the project uses them. Yes: every "
    "particle is copied into this protocol's folder, so the project no longer needs Warp's "
    "folder. The particles of a WarpTools 2 project or of a RELION particle star are always "
    "copied: their stacks are rewritten when particles are exported again, which would change "
    "the images under the output.")


class ProtLive2DImportWarp(Live2DLabel, StreamStopping, ProtImport):
    """Imports the particles Warp picks and exports while it is still collecting.

    The folder may be Warp 1.x's (previous.settings), a WarpTools 2 project (its
    warp_frameseries.settings and the particle star fs_export_particles writes there) or hold
    any RELION particle star named in "Particle star". The output set stays open and grows as
    new particles are exported; it closes when the protocol is stopped (right click > STOP
    STREAMING, or the Stop button) or when no new particle arrived for the timeout. Every
    particle carries its CTF from the star file. With "Copy files?" No (the default) the
    particles of a Warp 1.x folder are not copied: they point at Warp's own stacks.
    """

    _label = "import warp particles (live)"
    _devStatus = BETA
    _possibleOutputs: ClassVar[dict] = {OUTPUT_NAME: SetOfParticles}

    # ------------------------------------------------------------------------------ form
    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("warpFolder", params.PathParam, important=True,
                      label="Warp folder",
                      help="The folder Warp processes: for Warp 1.x it holds previous.settings "
                           "and the particle star files (Warp > Picking > Export particles "
                           "on); for WarpTools 2, the project folder holding "
                           "warp_frameseries.settings and the star fs_export_particles writes; "
                           "else the folder that relative paths of the Particle star start "
                           "from. The import may start before Warp does: on a folder without "
                           "Warp's settings yet it waits for them, up to the Timeout.")
        form.addParam("particleStar", params.PathParam, allowsNull=True,
                      label="Particle star (optional)",
                      help="A RELION 3.0/3.1 particle star, as WarpTools 2's "
                           "fs_export_particles, RELION's Extract or a cryoSPARC export write "
                           "it, relative to the Warp folder or absolute. It may grow or be "
                           "rewritten whole while the import runs: only particles not imported "
                           "yet are added. Empty: Warp 1.x's own star files, or the single "
                           "particle star of a WarpTools 2 project.")
        form.addParam("copyFiles", params.BooleanParam, default=False,
                      expertLevel=params.LEVEL_ADVANCED, label="Copy files?",
                      help=COPY_FILES_HELP)
        form.addParam("particleFile", params.EnumParam, choices=list(PARTICLE_FILE_LABELS),
                      default=0, display=params.EnumParam.DISPLAY_HLIST,
                      label="Particles",
                      help=Settings.describe("particle_file", PARTICLE_FILE_NOTE, live=False))
        contrast = next(spec for spec in Settings.specs() if spec["name"] == "contrast")
        form.addParam("proteinContrast", params.EnumParam,
                      choices=[contrast["labels"][c] for c in contrast["choices"]],
                      default=list(contrast["choices"]).index(contrast["default"]),
                      display=params.EnumParam.DISPLAY_HLIST, expertLevel=params.LEVEL_ADVANCED,
                      label=contrast["label"],
                      help=Settings.describe("contrast", CONTRAST_NOTE, live=False))
        form.addParam("epuFolder", params.PathParam, default="",
                      expertLevel=params.LEVEL_ADVANCED,
                      label="EPU session folder (optional)",
                      help="The folder EPU writes the session into (with Images-Disc1/"
                           "GridSquare_*). The classification of these particles then gives "
                           "the yield, the map and the alerts by grid square (its own form "
                           "may name another folder). It may be given before EPU has "
                           "written anything.")
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
        store = ParticleStore(self._getExtraPath("store"))
        importer = Importer(self._warpDir(), store, which=self._which(), star=self._star(),
                            contrast=self._contrast(), copy_images=self._copyFiles())
        published = self._publishedCount()
        said_copy = False
        timeout = float(self.streamTimeout.get()) * 60.0
        poll = min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, timeout / 6.0))
        last_new = time.monotonic()
        said: set[str] = set()  # the last poll's messages: a problem that stays is said once
        problem = ""  # what the latest poll said kept particles out, for an empty ending
        while True:
            report = importer.poll()
            if report.start_over is not None:
                # Emptying the store would swap the images under the published particles:
                # the import ends instead.
                self._closeOutput()
                raise RuntimeError(self._changeMessage(store, report.start_over))
            for message in report.messages:
                if message not in said:
                    self.info(scipion_words(message))
            said = set(report.messages) | ({report.missing} if report.missing else set())
            problem = report.missing or (report.messages[-1] if report.messages else problem)
            if store.box and not said_copy:  # the store's mode is set once it has a box
                self.info(self._copyMessage(store))
                said_copy = True
            if store.count > published:
                published = self._publish(importer, published)
                last_new = time.monotonic()
            if self._stopRequested():
                self.info("STOP STREAMING requested: closing the output")
                break
            if time.monotonic() - last_new > timeout:
                self.info(f"no new particles for {self.streamTimeout.get()} min: "
                          "closing the output")
                break
            time.sleep(poll)
        self._closeOutput()
        if not store.count:
            raise RuntimeError(self._nothingImportedMessage(problem))

    def _nothingImportedMessage(self, problem: str) -> str:
        """Why an import that closed without a particle failed: a run that ends green with an
        empty output would let the classification downstream wait for nothing."""
        reason = scipion_words(problem) if problem else "no particle star had particles"
        return (f"no particles were imported from {self._warpDir()}: {reason}. Check the Warp "
                "folder (and the Particle star, if given), then run the protocol again")

    # ------------------------------------------------------------------------------ output
    def _publish(self, importer: Importer, published: int) -> int:
        """Append the store's particles beyond ``published`` to the open output set."""
        store = importer.store
        rows = store.read_table().iloc[published:]
        # Warp 1.x's settings, or what the particle star says (pixel size, box, microscope).
        settings = importer.source_settings()
        output = self._openOutput(store, settings)
        if not published or self._source().get("copied") != store.copies_images:
            self._recordSource(settings, self._layout(), store.copies_images)
        acquisition = acquisition_from_warp(settings)
        contrast = "white" if settings.invert else "black"
        for particle in particles_from_store_rows(rows, store.image_locations(rows),
                                                  store.pixel_size, acquisition, contrast):
            output.append(particle)
        self._updateOutputSet(OUTPUT_NAME, output, Set.STREAM_OPEN)
        self.info(f"{len(rows)} new particles; {published + len(rows)} in {OUTPUT_NAME}")
        return published + len(rows)

    def _openOutput(self, store: ParticleStore, settings: warp.WarpSettings) -> SetOfParticles:
        path = self._getPath("particles.sqlite")
        epu_folder = String((self.epuFolder.get() or "").strip())
        if holds_written_set(path):
            output = SetOfParticles(filename=path)
            output.loadAllProperties()
            output.enableAppend()
            setattr(output, EPU_FOLDER_ATTRIBUTE, epu_folder)  # the form may have changed
            return output
        if os.path.exists(path):  # made by a run stopped before its first particle: no set yet
            os.remove(path)
        output = SetOfParticles(filename=path)
        setattr(output, EPU_FOLDER_ATTRIBUTE, epu_folder)
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

    def _layout(self) -> Layout | None:
        try:
            return detect_layout(self._warpDir(), self._star())
        except warp.WarpFolderError:  # e.g. a second star appeared: the importer says so
            return None

    def _copyMessage(self, store: ParticleStore) -> str:
        """How the output particles hold their images, said once in the log."""
        if not store.copies_images:
            return (f"Copy files? No: the output particles point at Warp's own stacks in "
                    f"{self._warpDir()} (nothing copied); keep that folder while the project "
                    "uses them")
        if self._copyFiles():
            return f"Copy files? Yes: every particle is copied into {store.stack_path}"
        layout = self._layout()
        if layout is not None and layout.kind == WARP:  # a store made by a run with Yes
            return (f"Copy files? No, but this protocol's store holds copies already: the "
                    f"particles are copied into {store.stack_path} as before")
        return (f"Copy files? No, but the particles are copied into {store.stack_path} all the "
                "same: the stacks of a WarpTools 2 project or a RELION particle star are "
                "rewritten when particles are exported again, which would change the images "
                "under the output")

    def _recordSource(self, settings: warp.WarpSettings, layout: Layout | None,
                      copied: bool) -> None:
        """What the published particles were imported with, to name a later change, and
        whether their images are copied (summary and methods)."""
        if layout is None:  # only Warp 1.x's settings know the particle diameter
            layout = Layout(WARP if settings.diameter else STAR)
        atomic_write_json(Path(self._getExtraPath(SOURCE_FILE)), {
            "box": settings.box, "model": settings.model, "min_score": settings.min_score,
            "pixel_size": settings.pixel_size, "particles": self._which(),
            "layout": layout.kind, "star": str(layout.star) if layout.star else "",
            "contrast": "white" if settings.invert else "black", "copied": copied})

    def _source(self) -> dict:
        try:
            return json.loads(Path(self._getExtraPath(SOURCE_FILE)).read_text())
        except (OSError, ValueError):
            return {}

    def _changeMessage(self, store: ParticleStore, refused: StartOver) -> str:
        """Why the import ends rather than start over (``refused``: the start over a poll
        found needed), naming the change."""
        before = self._source()
        if before.get("layout", WARP) == WARP:
            try:
                now = warp.read_settings(self._warpDir())
            except warp.WarpFolderError:
                now = None
            changes = []
            if now is not None:
                names = {"box": "box size", "model": "BoxNet model",
                         "min_score": "picking threshold", "pixel_size": "pixel size"}
                changes = [f"Warp's {label} changed {before[key]} -> {getattr(now, key)}"
                           for key, label in names.items()
                           if key in before and before[key] != getattr(now, key)]
            reason = "; ".join(changes) or (
                f"rows already imported from Warp's {self._which()} star file changed (Warp's "
                "filters or picking changed)")
        else:
            star = Path(before.get("star") or "the particle star").name
            changes = []
            if refused.box != store.box:
                changes.append(f"the box size in {star} changed {store.box} -> {refused.box}")
            if not math.isclose(refused.pixel_size, store.pixel_size, rel_tol=1e-4):
                changes.append(f"the pixel size in {star} changed {store.pixel_size:g} -> "
                               f"{refused.pixel_size:g} Å")
            reason = "; ".join(changes) or f"the particles of {star} changed"
        return (f"{reason}. The {store.count} particles already in {OUTPUT_NAME} came from "
                "the previous settings and cannot be mixed with new ones: the output is closed. "
                "Start a new 'import warp particles (live)' protocol for the particles of the "
                "new settings.")

    # ------------------------------------------------------------------------------ helpers
    def _warpDir(self) -> str:
        return os.path.abspath(self.warpFolder.get())

    def _which(self) -> str:
        return PARTICLE_FILES[self.particleFile.get()]

    def _star(self) -> str | None:
        """The particle star named in the form (relative to the folder or absolute), or None:
        the folder's layout says which star to import."""
        return (self.particleStar.get() or "").strip() or None

    def _contrast(self) -> str:
        return CONTRASTS[self.proteinContrast.get()]

    def _copyFiles(self) -> bool:
        return bool(self.copyFiles.get())

    # ------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        """What can never be imported; a folder or star that is not there yet is waited for."""
        try:
            layout = detect_layout(self._warpDir(), self._star())
        except warp.WarpSettingsMissing:
            return []  # Warp has not started yet: the import waits for its settings
        except warp.WarpFolderError as exc:
            return [scipion_words(str(exc))]
        if layout.kind != WARP:
            star = layout.star
            if star is not None and star.is_file() and star.stat().st_size and \
                    not is_particle_star(star):
                return [f"{star} is not a RELION particle star (it has no _rlnImageName)"]
            return []  # a star not exported yet is waited for
        try:
            settings = warp.read_settings(self._warpDir())
        except warp.WarpSettingsUnreadable:
            return []  # Warp may be writing it: the import reads it again
        except warp.WarpFolderError as exc:
            return [str(exc)]
        if settings.box < 8:
            return [f"Warp's box of {settings.box} px is too small"]
        return []

    def _summary(self) -> list[str]:
        source = self._source()
        star = self._star() or source.get("star")
        if star:
            layout = f" ({source['layout']})" if source.get("layout") else ""
            lines = [f"Particle star: {star}; folder: {self.warpFolder.get()}{layout}"]
        else:
            lines = [f"Warp folder: {self.warpFolder.get()} ({self._which()})"]
        output = getattr(self, OUTPUT_NAME, None)
        if output is not None:
            state = "open, growing" if output.isStreamOpen() else "closed"
            lines.append(f"{output.getSize()} particles imported (output {state}), "
                         f"{output.getSamplingRate():.3f} Å/px")
            if "copied" in source:
                text = self._imagesText(source["copied"])
                lines.append(f"{text[0].upper()}{text[1:]}.")
        else:
            lines.append("No particles imported yet.")
        return lines

    def _methods(self) -> list[str]:
        output = getattr(self, OUTPUT_NAME, None)
        if output is None:
            return []
        source = self._source()
        if source.get("layout", WARP) == WARP:
            origin = "picked and exported by Warp [Tegunov2019]"
        elif source["layout"] == WARPTOOLS:
            origin = "exported by WarpTools [Tegunov2019]"
        else:
            origin = "of a RELION particle star"
        images = f"; {self._imagesText(source['copied'])}" if "copied" in source else ""
        return [f"{output.getSize()} particles {origin} were imported with Live2D at "
                f"{output.getSamplingRate():.3f} Å/px, with their CTF{images}."]

    @staticmethod
    def _imagesText(copied: bool) -> str:
        return ("their images were copied into the project" if copied else
                "their images are read in place from Warp's stacks (not copied)")

    def _citations(self) -> list[str]:
        return ["Tegunov2019"]


def scipion_words(message: str) -> str:
    """A core message as the form says it: its "Particle star" for the command line's --star."""
    for cli, form in CLI_WORDS:
        message = message.replace(cli, form)
    return message
