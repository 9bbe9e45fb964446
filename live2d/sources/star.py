"""RELION-style particle stars: the one WarpTools 2's ``fs_export_particles`` writes, or any star
named with ``--star`` (RELION's Extract, a cryoSPARC export). Such stars are rewritten whole,
rows in any order, so each change is read whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from live2d.layouts import Layout, find_stack
from live2d.relion_star import read_particle_star
from live2d.sources.base import (
    RE_IMPORT,
    ImportReport,
    ParticleIntake,
    ParticleSource,
    StartOver,
)
from live2d.sources.state import StarIdentity
from live2d.warp import (
    StackNotReady,
    WarpFolderError,
    WarpSettings,
    WarpStarError,
    split_image_name,
    stack_box,
)


class StarSource(ParticleSource):
    """A RELION-style particle star (WarpTools 2 or any pipeline's). A poll whose star changed
    (size, time or the contrast asked for) reads it whole, matches rows by rlnImageName and
    reads only the new particles' images; the star's box, pixel size and microscope are the
    settings, and a change of star, box, pixel size or contrast makes the imported particles
    stale. Its stacks are rewritten when particles are exported again: always copied."""

    def __init__(self, intake: ParticleIntake) -> None:
        super().__init__(intake)
        self._stack_paths: dict[str, str] = {}  # stack as named -> as found

    def source_settings(self, layout: Layout) -> WarpSettings:
        """What the last poll of the star found (diameter 0: not known)."""
        settings = self.intake.state.settings
        if settings is None:
            raise WarpFolderError(f"no particles imported from {layout.star} yet")
        return settings

    def poll(self, layout: Layout, settings: WarpSettings | None,
             report: ImportReport) -> StartOver | None:
        intake = self.intake
        star = layout.star
        if star is None or not star.exists():
            intake.wait_for(layout.waiting or f"waiting for the particle star {star}", report)
            return None
        intake.missing = ""
        stat = star.stat()
        contrast = intake.options.contrast
        seen = [stat.st_size, stat.st_mtime_ns, contrast]
        if seen == intake.state.star_seen and not len(intake.pending):
            return None
        if intake.still_bad(star, None):
            return None
        try:
            particles = read_particle_star(star)
        except (WarpStarError, OSError) as exc:
            intake.report_unreadable(star, exc, report, None)
            return None
        intake.bad_star = None
        rows = particles.rows
        if not len(rows):
            intake.wait_for(f"waiting for particles in {star.name}", report)
            return None
        rows = rows.assign(_read_name=[self._resolve(name, star)
                                       for name in rows["rlnImageName"]])
        try:
            box = particles.box or stack_box(split_image_name(rows["_read_name"][0])[1])
        except StackNotReady as exc:
            intake.note_outside(rows["_read_name"], star, report)
            report.messages.append(f"waiting for {exc}")
            return None
        settings = WarpSettings(
            pixel_size=particles.pixel_size, box=box, diameter=0.0, model="", min_score=0.0,
            export=True, invert=contrast != "black", normalize=True,
            voltage=particles.voltage, cs=particles.cs,
            amplitude_contrast=particles.amplitude_contrast)
        source = StarIdentity(str(star), box, round(particles.pixel_size, 6),
                              "white" if settings.invert else "black")
        start_over = self._check_source(settings, source)
        if start_over is not None and intake.store.count:
            return start_over  # the caller decides; the next poll notes what is outside
        intake.note_outside(rows["_read_name"], star, report)
        if start_over is not None:  # a store without particles: nothing to lose
            self.start_over(start_over)
        intake.state.source = source
        intake.state.settings = settings
        intake.report_refusals(particles.refused, star, report)  # kept by a start over
        pending, intake.pending = intake.pending, pd.DataFrame()
        try:
            intake.import_rows(rows, settings, report)
        except OSError:
            intake.pending = pending
            raise
        if not len(intake.pending):
            intake.state.star_seen = seen if not particles.unfinished else None
            intake.save()
        return None

    def _check_source(self, settings: WarpSettings, source: StarIdentity) -> StartOver | None:
        """The start over needed when the store's particles are stale (said why when another
        source's were imported) or the store has no box yet."""
        store, old = self.intake.store, self.intake.state.source
        if store.count and old is not None and old != source:
            reason = f"{source.describe_change(old)}: {RE_IMPORT}"
        elif not store.box or store.box != settings.box:
            reason = ""
        else:
            return None
        return StartOver(reason, settings.pixel_size, settings.box, source)

    def _resolve(self, name: str, star: Path) -> str:
        """``N@stack`` with the stack as found: relative paths from the folder first (as
        RELION resolves them from its project folder), then from the star's folder."""
        index, stack = split_image_name(name)
        found = self._stack_paths.get(stack)
        if found is None:
            path = find_stack(stack, self.intake.folder, star.parent)
            if path is None:
                return f"{index + 1}@{self.intake.folder / stack}"  # not there yet: look again
            found = self._stack_paths[stack] = str(path)
        return f"{index + 1}@{found}"
