"""Incremental import of particles into the particle store, from whichever source the folder
holds (:mod:`live2d.sources`, one importer per kind).

Each poll reads only what the source added since the last one. The store's set of image names
is the guard against duplicates: after a kill, the progress file (``import.json``, written after
the store commits) may lag behind the store, and the rows read again are simply skipped.
A change that makes imported particles stale (box, pixel size, BoxNet model, score threshold,
which star file, or rows already imported rewritten differently) needs the store emptied and
everything imported again: a poll reports it (``report.start_over``) and leaves the store as it
is, and its caller accepts it (:meth:`Importer.start_over`; a live session does, and its next
job starts ab initio) or refuses it (a Scipion output already points at the particles).
``import.json`` also records the store generation it belongs to (a kill between emptying the
store and saving progress is finished on the next poll, and reported) and the stacks skipped
after waiting too long for Warp to finish them (left out of the check that imported rows are
unchanged).
"""

from __future__ import annotations

import os
from pathlib import Path

from live2d.layouts import WARP, Layout, detect_layout
from live2d.sources import (
    CONTRASTS,
    ImportOptions,
    ImportReport,
    ParticleFeed,
    ParticleIntake,
    ParticleSource,
    StarSource,
    StartOver,
    WarpFolderSource,
)
from live2d.sources.base import RE_IMPORT
from live2d.store import ParticleStore
from live2d.warp import (
    WarpFolderError,
    WarpSettings,
    WarpSettingsMissing,
    WarpSettingsUnreadable,
)

__all__ = ["CONTRASTS", "ImportReport", "Importer", "StartOver"]

RECOVERED = f"the particle store was emptied for a re-import when Live2D stopped: {RE_IMPORT}"


class Importer(ParticleFeed):
    """Imports the particles of one folder into one store, choosing its source by the folder's
    layout at every poll (a folder may be empty at first, then become a Warp 1.x folder or hold
    a particle star). ``star``: the particle star to import (relative paths from ``warp_dir``),
    for WarpTools 2 projects holding several and for any RELION-style star; None: what the
    folder's layout says (:mod:`live2d.layouts`). ``which``, ``contrast``, ``copy_images``:
    :class:`live2d.sources.ImportOptions`; with ``copy_images`` False the stacks of a Warp 1.x
    folder's star are read in place: Warp's own, or any its rows name by path, each checked by
    its stamp before it is read (:func:`live2d.warp.stack_stamp`)."""

    def __init__(self, warp_dir: str | os.PathLike, store: ParticleStore,
                 which: str = "allparticles", star: str | os.PathLike | None = None,
                 contrast: str = "auto", copy_images: bool = True) -> None:
        self.warp_dir = Path(warp_dir)
        self.store = store
        self.star = Path(star) if star else None
        # copy_images False: Warp 1.x's stacks, written once, and Live2D stores' stacks, only
        # appended to, are read in place (no copy); stacks that are rewritten (WarpTools,
        # RELION) are always copied, since a file truncated under a memory map crashes the reader.
        self._intake = ParticleIntake(self.warp_dir, store,
                                      ImportOptions(which, contrast, copy_images))
        self._warp_folder = WarpFolderSource(self._intake)
        self._star_source = StarSource(self._intake)
        self._layout: Layout | None = None
        self._settings_missing = False
        self._settings_said = ""  # what was said of unreadable settings, until they read again

    @property
    def which(self) -> str:
        """The Warp particle file imported: ``"allparticles"`` or ``"goodparticles"``."""
        return self._intake.options.which

    @property
    def contrast(self) -> str:
        return self._intake.options.contrast

    @property
    def copy_images(self) -> bool:
        return self._intake.options.copy_images

    def configure(self, *, which: str | None = None, contrast: str | None = None,
                  copy_images: bool | None = None) -> None:
        """Change the options given (None: unchanged), checked as the constructor checks them;
        a change that makes the imported particles stale is reported by the next poll."""
        self._intake.configure(which=which, contrast=contrast, copy_images=copy_images)

    def source_settings(self) -> WarpSettings:
        """The particles' pixel size, box, microscope and contrast, for the engine: Warp 1.x's
        settings as they are now, else what the last poll of the star found (diameter 0:
        not known)."""
        layout = self._layout or detect_layout(self.warp_dir, self.star)
        return self._source_for(layout).source_settings(layout)

    def poll(self) -> ImportReport:
        """Import what the source added since the last poll; the report says what happened.
        When the store's particles are stale, nothing is imported and ``report.start_over``
        says why: a store holding particles is never emptied here."""
        report = ImportReport()
        if self._intake.recovered:
            report.reimported, report.reason, self._intake.recovered = True, RECOVERED, False
        try:
            report.start_over = self._poll(report)
        finally:
            report.total = self.store.count
        return report

    def start_over(self, request: StartOver) -> None:
        """Accept a start over a poll reported: empty the store (a new generation); the next
        poll imports every particle again."""
        self._source_for(self._layout).start_over(request)

    def _source_for(self, layout: Layout | None) -> ParticleSource:
        return self._warp_folder if layout is None or layout.kind == WARP else self._star_source

    def _poll(self, report: ImportReport) -> StartOver | None:
        self._intake.copy_in_if_asked(report)
        try:
            layout = detect_layout(self.warp_dir, self.star)
            source = self._source_for(layout)
            settings = source.folder_settings()
        except WarpSettingsUnreadable as exc:
            message = f"{exc}; trying again at the next poll"
            if message != self._settings_said:  # a NaN that stays is said once, not every poll
                report.messages.append(message)
            self._settings_said = message
            return None
        except WarpSettingsMissing as exc:
            if self.store.count == 0:  # started before Warp: wait for its session
                self._intake.wait_for(str(exc), report)
                self._settings_missing = True
                return None
            report.messages.append(f"{exc}; trying again at the next poll")
            return None
        except WarpFolderError as exc:
            if self.store.count == 0:
                raise
            # A session is under way: a network share that hiccups must not end it.
            report.messages.append(f"{exc}; trying again at the next poll")
            return None
        self._settings_said = ""
        if self._settings_missing:
            self._settings_missing = False
            report.messages.append(f"found Warp's settings in {self.warp_dir}")
        if layout != self._layout and not layout.waiting:
            report.messages.append(f"{self.warp_dir} is {layout.describe(self.warp_dir)}")
        self._layout = layout
        return source.poll(layout, settings, report)
