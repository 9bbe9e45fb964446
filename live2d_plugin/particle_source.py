"""A Scipion set of particles as the particle source of a Live2D session: the classification
protocol's input, read directly (no stand-in Warp folder), each particle's Scipion id kept in
the store's SRCID column so that every cycle maps back to the input's items."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from pwem.objects import Particle, SetOfParticles

from live2d.sources import (
    ImportOptions,
    ImportReport,
    ParticleFeed,
    ParticleIntake,
    StarIdentity,
    StartOver,
)
from live2d.sources.base import RE_IMPORT, SOURCE_ID
from live2d.store import ParticleStore
from live2d.warp import WarpFolderError, WarpSettings
from live2d_plugin.convert import MRC_SUFFIXES, mrc_box, particle_contrast, particle_rows

READ_BATCH = 20_000  # particles read from the input set at once
# The microscope of the settings when the input's first particle has no acquisition (each
# particle's own values are imported with it): those of the stand-in Warp folder before.
DEFAULT_VOLTAGE, DEFAULT_CS, DEFAULT_AMPLITUDE_CONTRAST = 300.0, 2.7, 0.07


class ScipionParticleSource(ParticleFeed):
    """The particles of a (possibly growing) Scipion ``SetOfParticles``. Each poll reloads the
    set (a streaming producer keeps adding to its sqlite), reads the items whose id is above the
    last one in the store, by id and in batches, and imports them through
    :meth:`live2d.sources.ParticleIntake.import_rows`: MRC stacks are named by absolute path
    and read in place unless the engine needs a copy; other formats are converted into MRC
    stacks under ``stacks``. The store is the only record of progress, so a kill mid-poll loses
    nothing (the rows it did not commit are read again). A report says ``closed`` once the
    set's stream is closed and all its particles are imported.

    ``input_file``: the set's sqlite (its folder is the store's root for stacks read in place);
    ``stacks``: where converted stacks go; ``mask_radius``: the form's, in Å (None: half the
    box stands in for Warp's picking diameter)."""

    def __init__(self, input_file: str | Path, store: ParticleStore, stacks: Path,
                 mask_radius: float | None, copy_images: bool = True) -> None:
        self.store = store
        self.input_file = Path(input_file).resolve()
        self._stacks = stacks
        self._mask_radius = mask_radius
        self._intake = ParticleIntake(self.input_file.parent, store,
                                      ImportOptions(copy_images=copy_images))
        self._last_id: int | None = None  # of the rows read; None: the store's, read once

    def configure(self, *, which: str | None = None, contrast: str | None = None,
                  copy_images: bool | None = None) -> None:
        """``contrast`` "auto": as the input's import recorded it (white unless black);
        ``which`` has no meaning for a set (checked only)."""
        self._intake.configure(which=which, contrast=contrast, copy_images=copy_images)

    def source_settings(self) -> WarpSettings:
        """The settings found when the first particles were imported, with the contrast the
        options ask for."""
        settings = self._intake.state.settings
        if settings is None:
            raise WarpFolderError(f"no particles imported from {self._intake.folder} yet")
        return self._with_contrast(settings)

    def start_over(self, request: StartOver) -> None:
        self._intake.start_over(request)
        self._last_id = 0

    def poll(self) -> ImportReport:
        report = ImportReport()
        try:
            report.start_over = self._poll(report)
        finally:
            report.total = self.store.count
        return report

    # ------------------------------------------------------------------ one poll
    def _poll(self, report: ImportReport) -> StartOver | None:
        intake = self._intake
        intake.copy_in_if_asked(report)
        input_set = self._load_input()
        try:
            # Read first: a set closed now holds every particle it will ever hold.
            closed = input_set.isStreamClosed()
            settings = intake.state.settings if self.store.box else None
            if settings is None:
                settings = self._first_settings(input_set, report)
            if settings is None:
                intake.wait_for("waiting for the input set's first particles", report)
                report.closed = closed
                return None
            intake.missing = ""
            start_over = self._check_source(settings)
            if start_over is not None:
                return start_over
            intake.state.settings = settings
            self._import_new(input_set, self._with_contrast(settings), report)
            intake.save()
            report.closed = closed and not len(intake.pending)
        finally:
            input_set.close()
        return None

    def _import_new(self, input_set: SetOfParticles, settings: WarpSettings,
                    report: ImportReport) -> None:
        intake = self._intake
        for particles in self._new_particles(input_set):
            rows = particle_rows(particles, self._image_names(particles, settings.box))
            rows = intake.refuse_bad_values(rows, self.input_file, report)
            intake.pending = pd.DataFrame()  # read again from the set instead
            intake.import_rows(rows, settings, report)
            if len(intake.pending):  # a stack not complete yet: from its first row next poll
                self._last_id = int(intake.pending[SOURCE_ID].min()) - 1
                return
            self._last_id = int(particles[-1].getObjId())

    def _new_particles(self, input_set: SetOfParticles) -> Iterator[list[Particle]]:
        """The set's items above the last id read, by id, in batches of READ_BATCH."""
        if self._last_id is None:
            ids = self.store.read_table()["SRCID"] if self.store.count else []
            self._last_id = int(max(ids, default=0))
        batch: list[Particle] = []
        for particle in input_set.iterItems(orderBy="id", where=f"id > {self._last_id}"):
            batch.append(particle.clone())
            if len(batch) >= READ_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    # ------------------------------------------------------------------ settings
    def _first_settings(self, input_set: SetOfParticles,
                        report: ImportReport) -> WarpSettings | None:
        """The settings of the set's particles, from its first (None while it is empty)."""
        first = input_set.getFirstItem() if input_set.getSize() else None
        pixel_size = float(input_set.getSamplingRate())
        box = None
        if first is not None:
            box = mrc_box(first.getFileName()) or first.getDim()[0]
        elif input_set.getDimensions():
            box = input_set.getDimensions()[0]
        if not box:
            return None
        # Black protein only where the import said so (its Protein contrast parameter).
        contrast = particle_contrast(first)
        if contrast == "black":
            report.messages.append(
                "the input particles have black protein (as imported): classifying so")
        mask = self._mask_radius
        acquisition = first.getAcquisition() if first is not None else None
        return WarpSettings(
            pixel_size=pixel_size, box=int(box),
            diameter=float(mask / 0.6 if mask else 0.5 * box * pixel_size), model="",
            min_score=0.0, export=True, invert=contrast != "black", normalize=True,
            voltage=_value(acquisition, "getVoltage", DEFAULT_VOLTAGE),
            cs=_value(acquisition, "getSphericalAberration", DEFAULT_CS),
            amplitude_contrast=_value(acquisition, "getAmplitudeContrast",
                                      DEFAULT_AMPLITUDE_CONTRAST))

    def _with_contrast(self, settings: WarpSettings) -> WarpSettings:
        contrast = self._intake.options.contrast
        if contrast == "auto":
            return settings
        return dataclasses.replace(settings, invert=contrast == "white")

    def _check_source(self, settings: WarpSettings) -> StartOver | None:
        """A start over when the store has no box yet (done here: nothing to lose) or its
        particles are stale (returned when it holds some: the caller decides)."""
        intake, store = self._intake, self.store
        effective = self._with_contrast(settings)
        source = StarIdentity(str(self.input_file), settings.box,
                              round(settings.pixel_size, 6),
                              "white" if effective.invert else "black")
        old = intake.state.source
        if store.box == settings.box and old == source:
            return None
        if old is None and store.box == settings.box and store.count:
            # import.json was lost: the store's ids and names still prevent duplicates.
            intake.state.source = source
            return None
        reason = ""
        if store.count:
            change = source.describe_change(old) if old is not None else \
                "the input particles changed"
            reason = f"{change}: {RE_IMPORT}"
        in_place = not intake.options.copy_images
        request = StartOver(reason, settings.pixel_size, settings.box, source,
                            intake.folder.resolve() if in_place else None)
        if store.count:
            return request
        self.start_over(request)
        return None

    def _load_input(self) -> SetOfParticles:
        """A fresh view of the set: a streaming producer keeps adding to its file."""
        input_set = SetOfParticles(filename=str(self.input_file))
        input_set.loadAllProperties()
        return input_set

    # ------------------------------------------------------------------ images
    def _image_names(self, particles: list[Particle], box: int) -> list[str]:
        """``N@/absolute/stack.mrcs`` for every particle. MRC stacks are read where they are;
        other formats are converted, batch by batch, into MRC stacks under ``stacks``."""
        names: list[str | None] = []
        convert: list[int] = []
        for position, particle in enumerate(particles):
            index, filename = particle.getLocation()
            path = Path(filename)
            if path.suffix.lower() in MRC_SUFFIXES:
                names.append(f"{max(int(index or 1), 1):06d}@{path.resolve()}")
            else:
                names.append(None)
                convert.append(position)
        if convert:
            stack = self._convert_batch([particles[i] for i in convert], box)
            for number, position in enumerate(convert, start=1):
                names[position] = f"{number:06d}@{stack}"
        return [name for name in names if name is not None]

    def _convert_batch(self, particles: list[Particle], box: int) -> Path:
        from pwem.emlib.image import ImageHandler

        handler = ImageHandler()
        images = np.empty((len(particles), box, box), dtype=np.float32)
        for i, particle in enumerate(particles):
            images[i] = handler.read(particle.getLocation()).getData()
        self._stacks.mkdir(parents=True, exist_ok=True)
        path = self._stacks / f"batch_{particles[0].getObjId():09d}.mrcs"
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(images)
            mrc.voxel_size = particles[0].getSamplingRate()
        return path.resolve()


def _value(acquisition, getter: str, default: float) -> float:
    value = getattr(acquisition, getter)() if acquisition is not None else None
    return float(value) if value is not None else default
