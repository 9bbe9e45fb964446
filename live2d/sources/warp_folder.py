"""Warp 1.x folders: ``previous.settings`` and the particle star files Warp rewrites after every
movie, read incrementally (only the rows added since the last poll)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.layouts import Layout
from live2d.sources.base import (
    RE_IMPORT,
    ImportReport,
    ParticleIntake,
    ParticleSource,
    StartOver,
    stacks_of,
    store_columns,
)
from live2d.sources.state import WarpFolderIdentity
from live2d.warp import (
    StarProgress,
    StarRewritten,
    WarpSettings,
    WarpStarError,
    check_particle_values,
    particle_star_path,
    read_new_rows,
    read_settings,
)

# Polls a star file may stay shorter than what was imported (mid-rewrite) before it counts as
# a real change.
SHRUNK_STAR_POLLS = 3


class WarpFolderSource(ParticleSource):
    """A Warp 1.x folder. Each poll reads ``previous.settings`` (box, pixel size, BoxNet model,
    picking threshold, contrast: a change makes the imported particles stale) and the rows that
    Warp appended to its ``allparticles_``/``goodparticles_<model>.star`` since the last poll;
    a star rewritten with other rows than those imported makes them stale too. Its stacks, each
    written once, may be read in place."""

    def __init__(self, intake: ParticleIntake) -> None:
        super().__init__(intake)
        self._shrunk_polls = 0

    def folder_settings(self) -> WarpSettings:
        settings = read_settings(self.intake.folder)
        if self.intake.options.contrast == "auto":
            return settings
        return dataclasses.replace(settings, invert=self.intake.options.contrast == "white")

    def source_settings(self, layout: Layout) -> WarpSettings:
        """Warp 1.x's settings as they are now."""
        return self.folder_settings()

    def poll(self, layout: Layout, settings: WarpSettings | None,
             report: ImportReport) -> StartOver | None:
        assert settings is not None
        intake = self.intake
        start_over = self._check_source(settings, report)
        if start_over is not None:
            return start_over
        star = particle_star_path(intake.folder, settings, intake.options.which)
        if not star.exists():
            intake.wait_for(f"waiting for Warp's first particles ({star.name} not there)",
                            report)
            return None
        intake.missing = ""
        if intake.store.provenance_pending:
            self._fill_provenance(star, report)
        before = intake.state.progress
        if intake.still_bad(star, settings):
            return None
        try:
            rows = self._read_rows(star, settings, report)
            if isinstance(rows, StartOver):
                return rows
            rows = intake.refuse_bad_values(rows, star, report)
            _check_pixel_size(rows, settings)
        except (WarpStarError, OSError) as exc:
            if isinstance(exc, WarpStarError):
                # Read these rows again once fixed: skipping them would lose particles.
                intake.state.progress = before
            intake.report_unreadable(star, exc, report, settings)
            return None
        intake.bad_star = None
        intake.note_outside(rows["rlnImageName"], star, report)
        pending = intake.pending
        rows = pd.concat([pending, rows], ignore_index=True) if len(pending) else rows
        intake.pending = pd.DataFrame()
        try:
            if len(rows):
                intake.import_rows(rows, settings, report)
            if not len(intake.pending):
                intake.save()
        except OSError:
            # e.g. the output disk is full: the store kept its last commit, so read these rows
            # again next time (the store's names skip any that did get in).
            intake.state.progress, intake.pending = before, pending
            raise
        return None

    # ------------------------------------------------------------------ source changes
    def _check_source(self, settings: WarpSettings, report: ImportReport) -> StartOver | None:
        """A start over when the store's particles are stale; a store without particles is
        started over here (nothing to lose), saying why where an import is replaced."""
        intake, store = self.intake, self.intake.store
        source = WarpFolderIdentity(settings.box, settings.model, settings.min_score,
                                    intake.options.which,
                                    "white" if settings.invert else "black")
        old = intake.state.source
        if store.count and not math.isclose(store.pixel_size, settings.pixel_size,
                                            rel_tol=1e-4):
            return self._start_over(
                settings, source, f"pixel size changed {store.pixel_size:g} -> "
                                  f"{settings.pixel_size:g} Å (Warp's binning): {RE_IMPORT}")
        if store.box and old == source:
            return None
        if old is None and store.box == settings.box and store.count:
            # import.json was lost: the store's image names still prevent duplicates.
            intake.state.source = source
            return None
        reason = ""
        if store.count or (old is not None and old != source):
            reason = f"{source.describe_change(old)}: {RE_IMPORT}"
        request = self._start_over(settings, source, reason)
        if store.count:
            return request
        if reason:
            report.reimported, report.reason = True, reason
        self.start_over(request)
        return None

    def _start_over(self, settings: WarpSettings, source: WarpFolderIdentity,
                    reason: str) -> StartOver:
        in_place = not self.intake.options.copy_images
        return StartOver(reason, settings.pixel_size, settings.box, source,
                         self.intake.folder.resolve() if in_place else None)

    def _fill_provenance(self, star: Path, report: ImportReport) -> None:
        """A store made before micrographs and coordinates were kept: fill them in from the
        whole star, once (particles no longer in it keep them unknown)."""
        store = self.intake.store
        try:
            rows, _ = read_new_rows(star, StarProgress())
        except (WarpStarError, OSError) as exc:
            report.messages.append(f"micrographs and coordinates of the particles imported "
                                   f"before this version wait for a readable {star.name} ({exc})")
            return
        rows, _ = check_particle_values(rows)  # numbers as numbers; bad rows were refused
        sources = store_columns(rows, None).set_index("ORIGNAME")
        sources = sources[~sources.index.duplicated()]
        names = store.read_table()["ORIGNAME"]
        found = sources.reindex(names)
        known = found["MICROGRAPH"].notna()
        store.fill_provenance(found["MICROGRAPH"].fillna("").to_numpy(),
                              found["ORIGX"].fillna(0.0).to_numpy(),
                              found["ORIGY"].fillna(0.0).to_numpy())
        report.messages.append(f"micrographs and coordinates of {int(known.sum())} particles "
                               f"imported before this version filled in from {star.name}"
                               + (f" ({int((~known).sum())} no longer in it)"
                                  if not known.all() else ""))

    # ------------------------------------------------------------------ reading the star
    def _read_rows(self, star: Path, settings: WarpSettings,
                   report: ImportReport) -> pd.DataFrame | StartOver:
        """The rows to import, or a start over when rows already imported were rewritten."""
        intake = self.intake
        try:
            rows, intake.state.progress = read_new_rows(star, intake.state.progress)
            self._shrunk_polls = 0
            return rows
        except StarRewritten:
            pass
        # Warp rewrites the file whole after every movie: usually with the same rows first.
        rows, progress = read_new_rows(star, StarProgress())
        imported = intake.store.read_table()["ORIGNAME"].tolist()
        # Refused rows are not in the store: unless a good row of the same name came since.
        refused = set(intake.state.refused).difference(imported)
        kept = np.flatnonzero(~(stacks_of(rows).isin(intake.state.skipped) |
                                rows["rlnImageName"].isin(refused)).to_numpy())
        names = rows["rlnImageName"].to_numpy()[kept].tolist()
        same_prefix = names[: len(imported)] == imported[: len(names)]
        if same_prefix and len(names) < len(imported):
            self._shrunk_polls += 1
            if self._shrunk_polls < SHRUNK_STAR_POLLS:
                report.messages.append(f"{star.name} holds fewer rows than were imported; "
                                       "waiting (Warp may be rewriting it)")
                return rows.iloc[:0]
        if same_prefix and len(names) >= len(imported):
            intake.state.progress = progress
            self._shrunk_polls = 0
            return rows.iloc[kept[len(imported) - 1] + 1 if imported else 0:]
        assert intake.state.source is not None  # set by _check_source
        return self._start_over(
            settings, intake.state.source,
            f"rows already imported from {star.name} changed (Warp's filters or picking "
            f"changed): {RE_IMPORT}")


def _check_pixel_size(rows: pd.DataFrame, settings: WarpSettings) -> None:
    if "rlnDetectorPixelSize" not in rows or "rlnMagnification" not in rows or not len(rows):
        return
    star_pixel = float(rows["rlnDetectorPixelSize"].iloc[0]) * 1e4 / float(
        rows["rlnMagnification"].iloc[0])
    if abs(star_pixel - settings.pixel_size) > 0.01 * settings.pixel_size:
        raise WarpStarError(f"the star file says {star_pixel:.4g} Å/px but previous.settings "
                            f"{settings.pixel_size:.4g} Å/px: check Warp's binning")
