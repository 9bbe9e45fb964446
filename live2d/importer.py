"""Incremental import of Warp's particles into the particle store.

Each poll reads only the rows Warp added since the last one. The store's set of Warp image names
is the guard against duplicates: after a kill, the progress file (``import.json``, written after
the store commits) may lag behind the store, and the rows read again are simply skipped.
A change that makes imported particles stale (box, pixel size, BoxNet model, score threshold,
which star file, or rows already imported rewritten differently) empties the store and imports
everything again; the report says why so that the session can start the next job ab initio.
``import.json`` also records the store generation it belongs to (a kill between emptying the store
and saving progress is finished on the next poll, and reported) and the stacks skipped after
waiting too long for Warp to finish them (left out of the check that imported rows are unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.atomic import atomic_write_json
from live2d.layouts import WARP, Layout, detect_layout, find_stack
from live2d.relion_star import read_particle_star
from live2d.source_images import open_images
from live2d.store import ParticleStore
from live2d.warp import (
    Refusal,
    StackNotReady,
    StarProgress,
    StarRewritten,
    WarpFolderError,
    WarpSettings,
    WarpSettingsMissing,
    WarpSettingsUnreadable,
    WarpStarError,
    check_particle_stack,
    check_particle_values,
    particle_file_kind,
    particle_star_path,
    read_new_rows,
    read_particle_images,
    read_settings,
    split_image_name,
    stack_box,
)

CONTRASTS = ("auto", "white", "black")

# A stack that Warp is still writing is waited for at least this many polls and this long before
# its particles are skipped (so that one lost stack cannot stall a session for good).
STACK_WAIT_POLLS = 20
STACK_WAIT_SECONDS = 600.0
# Polls a star file may stay shorter than what was imported (mid-rewrite) before it counts as
# a real change.
SHRUNK_STAR_POLLS = 3
# Particles read into memory at once: bounds memory for any session size.
APPEND_BATCH_BYTES = 256 * 2**20


@dataclass
class ImportReport:
    new_particles: int = 0
    total: int = 0
    reimported: bool = False
    reason: str = ""
    messages: list[str] = field(default_factory=list)
    waiting_on: str | None = None
    # Set while there is nothing to import yet (no previous.settings, no particle star): what
    # is missing. Its message is in ``messages`` once, on the first poll that finds it missing.
    missing: str = ""


class Importer:
    """``star``: the particle star to import (relative paths from ``warp_dir``), for WarpTools 2
    projects holding several and for any RELION-style star; None: what the folder's layout says
    (:mod:`live2d.layouts`). ``contrast``: ``"white"`` or ``"black"`` protein in the stacks;
    ``"auto"``: Warp's Invert setting for a Warp 1.x folder, white otherwise. ``copy_images``:
    whether the store copies every particle's pixels (an engine such as cisTEM needs one stack)
    or reads the stacks of a Warp 1.x folder's star in place: Warp's own, or any its rows name
    by path (a Scipion classification's input), each checked by its stamp before it is read
    (:func:`live2d.warp.stack_stamp`)."""

    def __init__(self, warp_dir: str | os.PathLike, store: ParticleStore,
                 which: str = "allparticles", star: str | os.PathLike | None = None,
                 contrast: str = "auto", copy_images: bool = True) -> None:
        self.warp_dir = Path(warp_dir)
        self.store = store
        self.which = which
        self.star = Path(star) if star else None
        self.contrast = contrast
        # False: Warp 1.x's stacks, written once, and Live2D stores' stacks, only appended to,
        # are read in place (no copy); stacks that are rewritten (WarpTools, RELION) are always
        # copied, since a file truncated under a memory map crashes the reader.
        self.copy_images = copy_images
        self._layout: Layout | None = None
        self._stack_paths: dict[str, str] = {}  # star source: stack as named -> as found
        self.state_path = store.folder / "import.json"
        self._recovered = ""
        self._state = self._load()
        self._progress = StarProgress.from_dict(self._state["progress"])
        self._pending = pd.DataFrame()
        self._stack_waits: dict[str, tuple[int, float]] = {}  # stack -> (polls, first seen)
        self._shrunk_polls = 0
        self._missing = ""  # what the last poll found missing, said once until it changes
        # The star found malformed, as (path, size, mtime, inode), and what was said of it: not
        # parsed again (a 4 GB header, say) nor reported again until it changes.
        self._bad_star: tuple[tuple, str] | None = None
        self._settings_missing = False
        self._settings_said = ""  # what was said of unreadable settings, until they read again

    @property
    def which(self) -> str:
        """The Warp particle file imported: ``"allparticles"`` or ``"goodparticles"``."""
        return self._which

    @which.setter
    def which(self, value: str) -> None:
        self._which = particle_file_kind(value)  # "all"/"good" are accepted too

    @property
    def contrast(self) -> str:
        return self._contrast

    @contrast.setter
    def contrast(self, value: str) -> None:
        if value not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, not {value!r}")
        self._contrast = value

    def source_settings(self) -> WarpSettings:
        """The particles' pixel size, box, microscope and contrast, for the engine: Warp 1.x's
        settings as they are now, else what the last poll of the star found (diameter 0:
        not known)."""
        layout = self._layout or detect_layout(self.warp_dir, self.star)
        if layout.kind == WARP:
            return self._warp_settings()
        if not self._state.get("settings"):
            raise WarpFolderError(f"no particles imported from {layout.star} yet")
        return WarpSettings(**self._state["settings"])

    def _warp_settings(self) -> WarpSettings:
        settings = read_settings(self.warp_dir)
        if self.contrast == "auto":
            return settings
        return dataclasses.replace(settings, invert=self.contrast == "white")

    def poll(self) -> ImportReport:
        """Import what Warp added since the last poll; the report says what happened."""
        report = ImportReport()
        if self._recovered:
            report.reimported, report.reason, self._recovered = True, self._recovered, ""
        try:
            self._poll(report)
        finally:
            report.total = self.store.count
        return report

    def _poll(self, report: ImportReport) -> None:
        if self.copy_images and self.store.box and not self.store.copies_images:
            self._copy_in(report)
        try:
            layout = detect_layout(self.warp_dir, self.star)
            settings = self._warp_settings() if layout.kind == WARP else None
        except WarpSettingsUnreadable as exc:
            message = f"{exc}; trying again at the next poll"
            if message != self._settings_said:  # a NaN that stays is said once, not every poll
                report.messages.append(message)
            self._settings_said = message
            return
        except WarpSettingsMissing as exc:
            if self.store.count == 0:  # started before Warp: wait for its session
                self._wait_for(str(exc), report)
                self._settings_missing = True
                return
            report.messages.append(f"{exc}; trying again at the next poll")
            return
        except WarpFolderError as exc:
            if self.store.count == 0:
                raise
            # A session is under way: a network share that hiccups must not end it.
            report.messages.append(f"{exc}; trying again at the next poll")
            return
        self._settings_said = ""
        if self._settings_missing:
            self._settings_missing = False
            report.messages.append(f"found Warp's settings in {self.warp_dir}")
        if layout != self._layout and not layout.waiting:
            report.messages.append(f"{self.warp_dir} is {layout.describe(self.warp_dir)}")
        self._layout = layout
        if settings is None:
            self._poll_star(layout, report)
            return
        self._check_source(settings, report)
        star = particle_star_path(self.warp_dir, settings, self.which)
        if not star.exists():
            self._wait_for(f"waiting for Warp's first particles ({star.name} not there)",
                           report)
            return
        self._missing = ""
        if self.store.provenance_pending:
            self._fill_provenance(star, report)
        before = self._progress
        if self._still_bad(star, settings):
            return
        try:
            rows = self._read_rows(star, settings, report)
            rows = self._refuse_bad_values(rows, star, report)
            _check_pixel_size(rows, settings)
        except (WarpStarError, OSError) as exc:
            if isinstance(exc, WarpStarError):
                # Read these rows again once fixed: skipping them would lose particles.
                self._progress = StarProgress() if report.reimported else before
            self._report_unreadable(star, exc, report, settings)
            return
        self._bad_star = None
        self._note_outside(rows["rlnImageName"], star, report)
        pending = self._pending
        rows = pd.concat([pending, rows], ignore_index=True) if len(pending) else rows
        self._pending = pd.DataFrame()
        try:
            if len(rows):
                self._import(rows, settings, report)
            if not len(self._pending):
                self._save()
        except OSError:
            # e.g. the output disk is full: the store kept its last commit, so read these rows
            # again next time (the store's names skip any that did get in).
            self._progress, self._pending = before, pending
            raise

    # ------------------------------------------------------------------ RELION-style stars
    def _poll_star(self, layout: Layout, report: ImportReport) -> None:
        """Import the rows of a RELION particle star that the store lacks. Such stars are
        rewritten whole, rows in any order: each change is read whole (starfile), rows are
        matched by rlnImageName, and only the new particles' images are read."""
        star = layout.star
        if star is None or not star.exists():
            self._wait_for(layout.waiting or f"waiting for the particle star {star}", report)
            return
        self._missing = ""
        stat = star.stat()
        seen = [stat.st_size, stat.st_mtime_ns, self.contrast]
        if seen == self._state.get("star_seen") and not len(self._pending):
            return
        if self._still_bad(star, None):
            return
        try:
            particles = read_particle_star(star)
        except (WarpStarError, OSError) as exc:
            self._report_unreadable(star, exc, report, None)
            return
        self._bad_star = None
        rows = particles.rows
        if not len(rows):
            self._wait_for(f"waiting for particles in {star.name}", report)
            return
        rows = rows.assign(_read_name=[self._resolve(name, star)
                                       for name in rows["rlnImageName"]])
        self._note_outside(rows["_read_name"], star, report)
        try:
            box = particles.box or stack_box(split_image_name(rows["_read_name"][0])[1])
        except StackNotReady as exc:
            report.messages.append(f"waiting for {exc}")
            return
        settings = WarpSettings(
            pixel_size=particles.pixel_size, box=box, diameter=0.0, model="", min_score=0.0,
            export=True, invert=self.contrast != "black", normalize=True,
            voltage=particles.voltage, cs=particles.cs,
            amplitude_contrast=particles.amplitude_contrast)
        source = ["star", str(star), box, round(particles.pixel_size, 6),
                  "white" if settings.invert else "black"]
        if self.store.count and self._state["source"] and self._state["source"] != source:
            report.reimported = True
            report.reason = (f"{_describe_star_change(self._state['source'], source)}: "
                             "re-importing every particle; the next job starts ab initio")
            self._start_over(settings, source)
        elif not self.store.box or self.store.box != box:
            self._start_over(settings, source)
        self._state["source"] = source
        self._state["settings"] = dataclasses.asdict(settings)
        self._report_refusals(particles.refused, star, report)  # kept by a start over
        pending, self._pending = self._pending, pd.DataFrame()
        try:
            self._import(rows, settings, report)
        except OSError:
            self._pending = pending
            raise
        if not len(self._pending):
            self._state["star_seen"] = seen if not particles.unfinished else None
            self._save()

    def _resolve(self, name: str, star: Path) -> str:
        """``N@stack`` with the stack as found: relative paths from the folder first (as
        RELION resolves them from its project folder), then from the star's folder."""
        index, stack = split_image_name(name)
        found = self._stack_paths.get(stack)
        if found is None:
            path = find_stack(stack, self.warp_dir, star.parent)
            if path is None:
                return f"{index + 1}@{self.warp_dir / stack}"  # not there yet: look again
            found = self._stack_paths[stack] = str(path)
        return f"{index + 1}@{found}"

    def _fill_provenance(self, star: Path, report: ImportReport) -> None:
        """A store made before micrographs and coordinates were kept: fill them in from the
        whole star, once (particles no longer in it keep them unknown)."""
        try:
            rows, _ = read_new_rows(star, StarProgress())
        except (WarpStarError, OSError) as exc:
            report.messages.append(f"micrographs and coordinates of the particles imported "
                                   f"before this version wait for a readable {star.name} ({exc})")
            return
        rows, _ = check_particle_values(rows)  # numbers as numbers; bad rows were refused
        sources = self._store_rows(rows, None).set_index("ORIGNAME")
        sources = sources[~sources.index.duplicated()]
        names = self.store.read_table()["ORIGNAME"]
        found = sources.reindex(names)
        known = found["MICROGRAPH"].notna()
        self.store.fill_provenance(found["MICROGRAPH"].fillna("").to_numpy(),
                                   found["ORIGX"].fillna(0.0).to_numpy(),
                                   found["ORIGY"].fillna(0.0).to_numpy())
        report.messages.append(f"micrographs and coordinates of {int(known.sum())} particles "
                               f"imported before this version filled in from {star.name}"
                               + (f" ({int((~known).sum())} no longer in it)"
                                  if not known.all() else ""))

    def _wait_for(self, missing: str, report: ImportReport) -> None:
        """Nothing to import yet: say what is missing once, then wait quietly."""
        report.missing = missing
        if missing != self._missing:
            report.messages.append(missing)
        self._missing = missing

    # ------------------------------------------------------------------ source changes
    def _check_source(self, settings: WarpSettings, report: ImportReport) -> None:
        source = [settings.box, settings.model, settings.min_score, self.which]
        if not settings.invert:  # absent for white protein, as before contrast was recorded
            source.append("black")
        old = self._state["source"]
        if self.store.count and not math.isclose(self.store.pixel_size, settings.pixel_size,
                                                 rel_tol=1e-4):
            report.reimported = True
            report.reason = (f"pixel size changed {self.store.pixel_size:g} -> "
                             f"{settings.pixel_size:g} Å (Warp's binning): re-importing every "
                             "particle; the next job starts ab initio")
            self._start_over(settings, source)
            return
        if self.store.box and old == source:
            return
        if not old and self.store.box == settings.box and self.store.count:
            # import.json was lost: the store's image names still prevent duplicates.
            self._state["source"] = source
            return
        if self.store.count or (old and old != source):
            report.reimported = True
            report.reason = (f"{_describe_change(old, source)}: re-importing every particle; "
                             "the next job starts ab initio")
        self._start_over(settings, source)

    def _start_over(self, settings: WarpSettings, source: list) -> None:
        in_place = not self.copy_images and (self._layout is None or self._layout.kind == WARP)
        self.store.reset(settings.pixel_size, settings.box,
                         source_root=self.warp_dir.resolve() if in_place else None)
        self._state = {"source": source, "progress": StarProgress().to_dict(),
                       "generation": self.store.generation, "skipped": [], "refused": [],
                       "outside": []}
        self._progress = StarProgress()
        self._pending = pd.DataFrame()
        self._stack_waits.clear()
        self._save()

    # ------------------------------------------------------------------ reading the star
    def _read_rows(self, star: Path, settings: WarpSettings,
                   report: ImportReport) -> pd.DataFrame:
        try:
            rows, self._progress = read_new_rows(star, self._progress)
            self._shrunk_polls = 0
            return rows
        except StarRewritten:
            pass
        # Warp rewrites the file whole after every movie: usually with the same rows first.
        rows, progress = read_new_rows(star, StarProgress())
        imported = self.store.read_table()["ORIGNAME"].tolist()
        # Refused rows are not in the store: unless a good row of the same name came since.
        refused = set(self._state["refused"]).difference(imported)
        kept = np.flatnonzero(~(_stacks_of(rows).isin(self._state["skipped"]) |
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
            self._progress = progress
            self._shrunk_polls = 0
            return rows.iloc[kept[len(imported) - 1] + 1 if imported else 0:]
        report.reimported = True
        report.reason = (f"rows already imported from {star.name} changed (Warp's filters or "
                         "picking changed): re-importing every particle; the next job starts "
                         "ab initio")
        self._start_over(settings, self._state["source"])
        self._progress = progress
        return rows

    # ------------------------------------------------------------------ bad input
    def _refuse_bad_values(self, rows: pd.DataFrame, star: Path,
                           report: ImportReport) -> pd.DataFrame:
        """``rows`` less those with a non-finite or implausible CTF, microscope or pixel value
        (check_particle_values): one bad row must neither poison the classes nor stop the
        import of the rest."""
        good, refusals = check_particle_values(rows)
        self._report_refusals(refusals, star, report)
        return good

    def _report_refusals(self, refusals: list[Refusal], star: Path,
                         report: ImportReport) -> None:
        """Say once per column and fault which rows were refused, and remember their names so
        that neither a rewritten star nor a restart reports them again (nor takes their absence
        from the store for a change of the rows imported)."""
        known = set(self._state["refused"])
        for refusal in refusals:
            names = [name for name in refusal.names if name not in known]
            if not names:
                continue
            known.update(names)
            self._state["refused"].extend(names)
            micrograph = f" (micrograph {refusal.micrograph})" if refusal.micrograph else ""
            report.messages.append(
                f"{star}: refused {len(names)} particle row(s) whose {refusal.column} "
                f"{refusal.problem}, e.g. {refusal.value!r} in row {refusal.row + 1}{micrograph}; "
                "the other rows are imported; check that micrograph's CTF estimate")

    def _star_identity(self, star: Path, settings: object) -> tuple:
        """What a verdict on ``star`` depends on: the file, the settings it is checked against
        and where reading starts."""
        return (*_file_identity(star), settings, self._progress, self.contrast)

    def _still_bad(self, star: Path, settings: object) -> bool:
        """Whether ``star`` is as it was when found malformed (said then): not read again."""
        return self._bad_star is not None and \
            self._bad_star[0] == self._star_identity(star, settings)

    def _report_unreadable(self, star: Path, exc: Exception, report: ImportReport,
                           settings: object) -> None:
        message = _unreadable(star, exc)
        if isinstance(exc, WarpStarError):
            if self._bad_star is None or self._bad_star[1] != message:
                report.messages.append(message)
            self._bad_star = (self._star_identity(star, settings), message)
            return
        report.messages.append(message)

    def _note_outside(self, names: pd.Series, star: Path, report: ImportReport) -> None:
        """Say once per folder when particles are read from outside ``warp_dir`` (image names
        with ``../`` or absolute paths): fine for a star that names them on purpose, a surprise
        in a folder that Warp wrote."""
        if not len(names):
            return
        root = os.path.normpath(self.warp_dir.absolute())
        told = set(self._state["outside"])
        outside: dict[str, int] = {}
        for stack, count in _stacks_of(pd.DataFrame({"rlnImageName": names})).value_counts(
                sort=False).items():
            folder = os.path.dirname(os.path.normpath(os.path.join(root, stack)))
            if os.path.commonpath([root, folder]) != root and folder not in told:
                outside[folder] = outside.get(folder, 0) + int(count)
        for folder, count in outside.items():
            report.messages.append(
                f"{star.name} names particle stacks outside {self.warp_dir}: {count} particles "
                f"are read from {folder} (image names with ../ or absolute paths); if that is "
                "not intended, check the star's rlnImageName")
        self._state["outside"] = [*told, *outside]

    # ------------------------------------------------------------------ importing images
    def _import(self, rows: pd.DataFrame, settings: WarpSettings, report: ImportReport) -> None:
        known = self.store.image_names()
        skipped = set(self._state["skipped"])
        stacks = _stacks_of(rows)
        # Set lookups per new row: pandas' isin would hash all N known names on every poll.
        fresh = np.array([name not in known and stack not in skipped
                          for name, stack in zip(rows["rlnImageName"], stacks, strict=True)],
                         dtype=bool)
        rows = rows[fresh].drop_duplicates("rlnImageName")
        stacks = stacks[rows.index]
        per_batch = max(1, APPEND_BATCH_BYTES // (settings.box * settings.box * 4))
        batch: list[pd.DataFrame] = []
        batch_rows = 0
        for stack, group in rows.groupby(stacks, sort=False):
            try:
                names = group["_read_name" if "_read_name" in group else "rlnImageName"]
                if self.store.copies_images:
                    images = read_particle_images(self.warp_dir, names.tolist(), settings.box)
                else:  # read in place later: only check the stack is complete
                    images = None
                    stamp = check_particle_stack(self.warp_dir, names.tolist(), settings.box)
            except StackNotReady as exc:
                polls, since = self._stack_waits.get(stack, (0, time.monotonic()))
                polls += 1
                self._stack_waits[stack] = (polls, since)
                waited = time.monotonic() - since
                if polls < STACK_WAIT_POLLS or waited < STACK_WAIT_SECONDS:
                    # Nothing of this stack nor of later ones yet: the store keeps Warp's order.
                    report.waiting_on = stack
                    self._pending = rows.loc[group.index[0]:]
                    report.messages.append(f"waiting for {exc} (poll {polls}, "
                                           f"{waited:.0f} s so far)")
                    break
                self._skip(stack, f"skipping the {len(group)} particles of {exc}: not ready "
                                  f"after {polls} polls and {waited:.0f} s", report)
                continue
            except WarpStarError as exc:  # e.g. exported before Warp's box size changed
                self._skip(stack, f"skipping the {len(group)} particles of {exc}", report)
                continue
            self._stack_waits.pop(stack, None)
            rows_of_stack = self._store_rows(group, settings)
            if images is None:
                batch.append(rows_of_stack.assign(SRCSTAMP=stamp, _images=None))
            else:
                batch.append(rows_of_stack.assign(_images=list(images)))
            batch_rows += len(group)
            if batch_rows >= per_batch:
                report.new_particles += self._append(batch)
                batch, batch_rows = [], 0
        report.new_particles += self._append(batch)

    def _skip(self, stack: str, message: str, report: ImportReport) -> None:
        """Leave a stack's particles out for good (they are not imported if it appears later:
        the store keeps Warp's order, which the rewrite check relies on)."""
        report.messages.append(message)
        self._stack_waits.pop(stack, None)
        self._state["skipped"].append(stack)

    def _append(self, batch: list[pd.DataFrame]) -> int:
        if not batch:
            return 0
        table = pd.concat(batch, ignore_index=True)
        images = table.pop("_images")
        self.store.append(np.stack(images.to_list()) if self.store.copies_images else None,
                          table)
        return len(table)

    def _copy_in(self, report: ImportReport) -> None:
        """A store that reads Warp's stacks in place, when an engine needs one stack: copy the
        particles in, incrementally (a kill resumes the copy)."""
        images = open_images(self.store.images_path)
        changed = images.changed_stacks()
        self.store.copy_in(lambda start, stop: images[start:stop])
        report.messages.append(
            f"copied the {self.store.count} particles read in place into {self.store.stack_path}"
            " (this engine needs one stack)" + (f"; {len(changed)} stack(s) had changed or "
                                               f"vanished since import: their particles are "
                                               f"blank" if changed else ""))

    @staticmethod
    def _store_rows(rows: pd.DataFrame, settings: WarpSettings | None) -> pd.DataFrame:
        """The store's columns of Warp's ``rows`` (without ``settings``: provenance only)."""
        def column(name: str, default: float) -> np.ndarray:
            return rows[name].to_numpy(dtype=float) if name in rows else np.full(len(rows),
                                                                                  default)

        provenance = pd.DataFrame({
            "ORIGX": column("rlnCoordinateX", 0.0),
            "ORIGY": column("rlnCoordinateY", 0.0),
            "MICROGRAPH": (rows["rlnMicrographName"].astype(str).to_numpy()
                           if "rlnMicrographName" in rows else np.full(len(rows), "")),
            "ORIGNAME": rows["rlnImageName"].to_numpy(),
        })
        if settings is None:
            return provenance
        return pd.DataFrame({
            "DF1": column("rlnDefocusU", 0.0),
            "DF2": column("rlnDefocusV", 0.0),
            "ANGAST": column("rlnDefocusAngle", 0.0),
            "PSHIFT": column("rlnPhaseShift", 0.0),
            "PSIZE": np.full(len(rows), settings.pixel_size),
            "VOLT": column("rlnVoltage", settings.voltage),
            "Cs": column("rlnSphericalAberration", settings.cs),
            "AmpC": column("rlnAmplitudeContrast", settings.amplitude_contrast),
        }).join(provenance)

    # ------------------------------------------------------------------ persistence
    def _load(self) -> dict:
        empty = {"source": [], "progress": StarProgress().to_dict(),
                 "generation": self.store.generation, "skipped": [], "refused": [],
                 "outside": []}
        if not self.state_path.exists() or not self.store.box:
            return empty
        try:
            state = {**empty, **json.loads(self.state_path.read_text(encoding="utf-8"))}
        except ValueError:  # only progress is lost: the store's names prevent duplicates
            return empty
        if state["generation"] != self.store.generation:
            # Killed between emptying the store and recording why: finish the re-import.
            self._recovered = ("the particle store was emptied for a re-import when Live2D "
                               "stopped: re-importing every particle; the next job starts "
                               "ab initio")
            return {**empty, "source": state["source"]}
        return state

    def _save(self) -> None:
        self._state["progress"] = self._progress.to_dict()
        self._state["generation"] = self.store.generation
        atomic_write_json(self.state_path, self._state)


def _unreadable(star: Path, exc: Exception) -> str:
    """What the log says of a particle star that could not be read this poll."""
    if isinstance(exc, WarpStarError):  # malformed: it stays so until someone fixes it
        return f"{exc}: nothing imported from it until it is fixed"
    return f"{star.name} cannot be read now ({exc}); trying again"


def _file_identity(path: Path) -> tuple:
    try:
        status = path.stat()
    except OSError:
        return ()
    return (str(path), status.st_size, status.st_mtime_ns, status.st_ino)


def _stacks_of(rows: pd.DataFrame) -> pd.Series:
    """The stack file of each row's rlnImageName (``"12@particles/x.mrcs"`` -> its path)."""
    if not len(rows):
        return pd.Series([], dtype=object, index=rows.index)
    return rows["rlnImageName"].str.partition("@")[2]


def _check_pixel_size(rows: pd.DataFrame, settings: WarpSettings) -> None:
    if "rlnDetectorPixelSize" not in rows or "rlnMagnification" not in rows or not len(rows):
        return
    star_pixel = float(rows["rlnDetectorPixelSize"].iloc[0]) * 1e4 / float(
        rows["rlnMagnification"].iloc[0])
    if abs(star_pixel - settings.pixel_size) > 0.01 * settings.pixel_size:
        raise WarpStarError(f"the star file says {star_pixel:.4g} Å/px but previous.settings "
                            f"{settings.pixel_size:.4g} Å/px: check Warp's binning")


def _describe_change(old: list, new: list) -> str:
    if not old:
        return "the particle store was rebuilt"
    names = ["box size", "BoxNet model", "picking threshold", "particle file", "contrast"]
    old, new = [*old, "white"][:5], [*new, "white"][:5]
    changes = [f"{name} changed {a} -> {b}" for name, a, b in zip(names, old, new, strict=False)
               if a != b]
    return "; ".join(changes) or "Warp's settings changed"


def _describe_star_change(old: list, new: list) -> str:
    names = ["layout", "particle star", "box size", "pixel size", "contrast"]
    changes = [f"{name} changed {a} -> {b}" for name, a, b in zip(names, old, new, strict=False)
               if a != b]
    return "; ".join(changes) or "the particle star changed"
