"""What every particle source shares: the report of a poll, the options, the request to start
over, the steps of importing into the store (appending in batches with the images, copying
images in, refusing bad values, waiting for unfinished stacks), and what a session needs of its
particle source (:class:`ParticleFeed`)."""

from __future__ import annotations

import dataclasses
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from live2d.layouts import Layout
from live2d.output_folder import IMPORT_STATE
from live2d.source_images import open_images
from live2d.sources.state import ImportState, SourceIdentity
from live2d.store import ParticleStore
from live2d.warp import (
    Refusal,
    StackNotReady,
    WarpSettings,
    WarpStarError,
    check_particle_stack,
    check_particle_values,
    particle_file_kind,
    read_particle_images,
)

CONTRASTS = ("auto", "white", "black")

# A stack that Warp is still writing is waited for at least this many polls and this long before
# its particles are skipped (so that one lost stack cannot stall a session for good).
STACK_WAIT_POLLS = 20
STACK_WAIT_SECONDS = 600.0
# Particles read into memory at once: bounds memory for any session size.
APPEND_BATCH_BYTES = 256 * 2**20

RE_IMPORT = "re-importing every particle; the next job starts ab initio"
# Column of the rows a source imports that carries each particle's id in the source (kept in
# the store's SRCID column); rows without it get 0.
SOURCE_ID = "_source_id"


@dataclass(frozen=True)
class StartOver:
    """A change that makes the particles in the store stale: the store must be emptied and every
    particle imported again. A poll that finds one imports nothing and leaves the store as it
    is; its caller accepts it (:meth:`live2d.importer.Importer.start_over`, then polls again)
    or refuses it (a store whose particles are published must not change under them)."""

    reason: str  # what the log says; "" where the importer has always started over silently
    pixel_size: float  # of the particles to import from now on
    box: int
    source: SourceIdentity  # what the store's particles will come from
    source_root: Path | None = None  # the store reads the stacks in place, relative to this


@dataclass
class ImportReport:
    """What one poll did: particles added, messages for the log, what it waits for, and a
    start over it found needed (``start_over``) or did (``reimported``, why in ``reason``)."""

    new_particles: int = 0
    total: int = 0
    reimported: bool = False
    reason: str = ""
    messages: list[str] = field(default_factory=list)
    waiting_on: str | None = None
    # Set while there is nothing to import yet (no previous.settings, no particle star): what
    # is missing. Its message is in ``messages`` once, on the first poll that finds it missing.
    missing: str = ""
    start_over: StartOver | None = None
    # The source is closed: nothing more will come (a Scipion set whose stream closed; a folder
    # never closes).
    closed: bool = False

    def followed_by(self, later: ImportReport) -> ImportReport:
        """This report and a later poll's as one, as a single poll would have reported."""
        reimported = self.reimported or later.reimported
        return ImportReport(
            new_particles=self.new_particles + later.new_particles, total=later.total,
            reimported=reimported, reason=later.reason if later.reimported else self.reason,
            messages=[*self.messages, *later.messages], waiting_on=later.waiting_on,
            missing=later.missing, start_over=later.start_over, closed=later.closed)


@dataclass(frozen=True)
class ImportOptions:
    """How particles are imported, checked when set. ``which``: the Warp 1.x particle file,
    ``"allparticles"`` or ``"goodparticles"`` (``"all"``/``"good"`` accepted). ``contrast``:
    ``"white"`` or ``"black"`` protein in the stacks; ``"auto"``: Warp's Invert setting for a
    Warp 1.x folder, white otherwise. ``copy_images``: whether the store copies every
    particle's pixels (an engine such as cisTEM needs one stack) or reads the stacks of a
    Warp 1.x folder in place."""

    which: str = "allparticles"
    contrast: str = "auto"
    copy_images: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "which", particle_file_kind(self.which))
        if self.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, "
                             f"not {self.contrast!r}")


class ParticleIntake:
    """The store particles are imported into and its ``import.json`` (:class:`ImportState`),
    with the steps every source takes to fill it: importing rows with their images in batches,
    waiting for stacks still being written, refusing rows with bad values, saying once what is
    missing or read from outside the folder."""

    def __init__(self, folder: Path, store: ParticleStore, options: ImportOptions) -> None:
        self.folder = folder
        self.store = store
        self.options = options
        self.state_path = store.folder / IMPORT_STATE
        self.state, self.recovered = ImportState.load(self.state_path, store)
        self.pending = pd.DataFrame()  # rows waiting for their stack, imported first next poll
        self.stack_waits: dict[str, tuple[int, float]] = {}  # stack -> (polls, first seen)
        self.missing = ""  # what the last poll found missing, said once until it changes
        # The star found malformed, as (path, size, mtime, inode), and what was said of it: not
        # parsed again (a 4 GB header, say) nor reported again until it changes.
        self.bad_star: tuple[tuple, str] | None = None

    def configure(self, *, which: str | None = None, contrast: str | None = None,
                  copy_images: bool | None = None) -> None:
        """Change the options given (None: unchanged), checked as :class:`ImportOptions`
        checks them; a change that makes the imported particles stale is reported by the next
        poll."""
        changes = {name: value for name, value in (("which", which), ("contrast", contrast),
                                                   ("copy_images", copy_images))
                   if value is not None}
        self.options = dataclasses.replace(self.options, **changes)

    def start_over(self, request: StartOver) -> None:
        """Empty the store and forget what was imported: the next poll imports everything."""
        self.store.reset(request.pixel_size, request.box, source_root=request.source_root)
        self.state = ImportState(source=request.source, generation=self.store.generation)
        self.pending = pd.DataFrame()
        self.stack_waits.clear()
        self.save()

    def save(self) -> None:
        self.state.generation = self.store.generation
        self.state.save(self.state_path)

    def wait_for(self, missing: str, report: ImportReport) -> None:
        """Nothing to import yet: say what is missing once, then wait quietly."""
        report.missing = missing
        if missing != self.missing:
            report.messages.append(missing)
        self.missing = missing

    # ------------------------------------------------------------------ bad input
    def refuse_bad_values(self, rows: pd.DataFrame, star: Path,
                          report: ImportReport) -> pd.DataFrame:
        """``rows`` less those with a non-finite or implausible CTF, microscope or pixel value
        (check_particle_values): one bad row must neither poison the classes nor stop the
        import of the rest."""
        good, refusals = check_particle_values(rows)
        self.report_refusals(refusals, star, report)
        return good

    def report_refusals(self, refusals: list[Refusal], star: Path, report: ImportReport) -> None:
        """Say once per column and fault which rows were refused, and remember their names so
        that neither a rewritten star nor a restart reports them again (nor takes their absence
        from the store for a change of the rows imported)."""
        known = set(self.state.refused)
        for refusal in refusals:
            names = [name for name in refusal.names if name not in known]
            if not names:
                continue
            known.update(names)
            self.state.refused.extend(names)
            micrograph = f" (micrograph {refusal.micrograph})" if refusal.micrograph else ""
            report.messages.append(
                f"{star}: refused {len(names)} particle row(s) whose {refusal.column} "
                f"{refusal.problem}, e.g. {refusal.value!r} in row {refusal.row + 1}{micrograph}; "
                "the other rows are imported; check that micrograph's CTF estimate")

    def star_identity(self, star: Path, settings: object) -> tuple:
        """What a verdict on ``star`` depends on: the file, the settings it is checked against
        and where reading starts."""
        return (*_file_identity(star), settings, self.state.progress, self.options.contrast)

    def still_bad(self, star: Path, settings: object) -> bool:
        """Whether ``star`` is as it was when found malformed (said then): not read again."""
        return self.bad_star is not None and \
            self.bad_star[0] == self.star_identity(star, settings)

    def report_unreadable(self, star: Path, exc: Exception, report: ImportReport,
                          settings: object) -> None:
        message = _unreadable(star, exc)
        if isinstance(exc, WarpStarError):
            if self.bad_star is None or self.bad_star[1] != message:
                report.messages.append(message)
            self.bad_star = (self.star_identity(star, settings), message)
            return
        report.messages.append(message)

    def note_outside(self, names: pd.Series, star: Path, report: ImportReport) -> None:
        """Say once per folder when particles are read from outside the source folder (image
        names with ``../`` or absolute paths): fine for a star that names them on purpose, a
        surprise in a folder that Warp wrote."""
        if not len(names):
            return
        root = os.path.normpath(self.folder.absolute())
        told = set(self.state.outside)
        outside: dict[str, int] = {}
        for stack, count in stacks_of(pd.DataFrame({"rlnImageName": names})).value_counts(
                sort=False).items():
            folder = os.path.dirname(os.path.normpath(os.path.join(root, stack)))
            if os.path.commonpath([root, folder]) != root and folder not in told:
                outside[folder] = outside.get(folder, 0) + int(count)
        for folder, count in outside.items():
            report.messages.append(
                f"{star.name} names particle stacks outside {self.folder}: {count} particles "
                f"are read from {folder} (image names with ../ or absolute paths); if that is "
                "not intended, check the star's rlnImageName")
        self.state.outside = [*told, *outside]

    # ------------------------------------------------------------------ importing images
    def import_rows(self, rows: pd.DataFrame, settings: WarpSettings,
                    report: ImportReport) -> None:
        """Append the rows the store lacks, with their images, in Warp's order; rows from a
        stack still being written wait in ``pending`` with every row after them."""
        known = self.store.image_names()
        skipped = set(self.state.skipped)
        stacks = stacks_of(rows)
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
                    images = read_particle_images(self.folder, names.tolist(), settings.box)
                else:  # read in place later: only check the stack is complete
                    images = None
                    stamp = check_particle_stack(self.folder, names.tolist(), settings.box)
            except StackNotReady as exc:
                polls, since = self.stack_waits.get(stack, (0, time.monotonic()))
                polls += 1
                self.stack_waits[stack] = (polls, since)
                waited = time.monotonic() - since
                if polls < STACK_WAIT_POLLS or waited < STACK_WAIT_SECONDS:
                    # Nothing of this stack nor of later ones yet: the store keeps Warp's order.
                    report.waiting_on = stack
                    self.pending = rows.loc[group.index[0]:]
                    report.messages.append(f"waiting for {exc} (poll {polls}, "
                                           f"{waited:.0f} s so far)")
                    break
                self._skip(stack, f"skipping the {len(group)} particles of {exc}: not ready "
                                  f"after {polls} polls and {waited:.0f} s", report)
                continue
            except WarpStarError as exc:  # e.g. exported before Warp's box size changed
                self._skip(stack, f"skipping the {len(group)} particles of {exc}", report)
                continue
            self.stack_waits.pop(stack, None)
            rows_of_stack = store_columns(group, settings)
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
        self.stack_waits.pop(stack, None)
        self.state.skipped.append(stack)

    def _append(self, batch: list[pd.DataFrame]) -> int:
        if not batch:
            return 0
        table = pd.concat(batch, ignore_index=True)
        images = table.pop("_images")
        self.store.append(np.stack(images.to_list()) if self.store.copies_images else None,
                          table)
        return len(table)

    def copy_in_if_asked(self, report: ImportReport) -> None:
        """Copy the particles read in place into the store when the options now ask for a
        copy (:meth:`copy_in`); nothing otherwise."""
        if self.options.copy_images and self.store.box and not self.store.copies_images:
            self.copy_in(report)

    def copy_in(self, report: ImportReport) -> None:
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


class ParticleFeed(Protocol):
    """What a :class:`live2d.session.Session` needs of its particle source: polls that import
    into its ``store`` what the source added, the particles' settings for the engine, and the
    import options it sets. :class:`live2d.importer.Importer` (a folder) is one; the Scipion
    plugin's input set is another (``live2d_plugin.particle_source``)."""

    store: ParticleStore

    def poll(self) -> ImportReport:
        """Import what the source added since the last poll; a needed start over is reported
        (``report.start_over``), not done."""
        ...

    def start_over(self, request: StartOver) -> None:
        """Accept a start over a poll reported: empty the store; the next poll imports every
        particle again."""
        ...

    def source_settings(self) -> WarpSettings:
        """The particles' pixel size, box, microscope and contrast, for the engine."""
        ...

    def configure(self, *, which: str | None = None, contrast: str | None = None,
                  copy_images: bool | None = None) -> None:
        """Change the import options given (None: unchanged)."""
        ...

    def poll_reimporting(self) -> ImportReport:
        """A poll that accepts a start over it finds needed, as a live session does: the store
        emptied and every particle imported again, reported as one poll (``reimported``, why in
        ``reason``)."""
        report = self.poll()
        request = report.start_over
        if request is None:
            return report
        self.start_over(request)
        report.start_over = None
        if request.reason:
            report.reimported, report.reason = True, request.reason
        # The store is empty now: this poll cannot ask to start over again.
        return report.followed_by(self.poll())


class ParticleSource(ABC):
    """One kind of particle source (:mod:`live2d.layouts`): what a poll reads from it and when
    the particles imported from it are stale. It imports through the shared
    :class:`ParticleIntake`, so that a folder whose layout changes between polls keeps its
    store and progress."""

    def __init__(self, intake: ParticleIntake) -> None:
        self.intake = intake

    def folder_settings(self) -> WarpSettings | None:
        """The settings the folder holds now, read before each poll (raising
        WarpSettingsMissing or WarpSettingsUnreadable while there are none to use); None where
        the poll reads them from the particle star."""
        return None

    @abstractmethod
    def poll(self, layout: Layout, settings: WarpSettings | None,
             report: ImportReport) -> StartOver | None:
        """Import what the source added since the last poll, into ``report``; or, when the
        particles in the store are stale, import nothing and say why (never emptying a store
        that holds particles: the caller decides)."""

    @abstractmethod
    def source_settings(self, layout: Layout) -> WarpSettings:
        """The particles' pixel size, box, microscope and contrast, for the engine."""

    def start_over(self, request: StartOver) -> None:
        """Accept ``request``: empty the store; the next poll imports everything again."""
        self.intake.start_over(request)


def store_columns(rows: pd.DataFrame, settings: WarpSettings | None) -> pd.DataFrame:
    """The store's columns of Warp's ``rows`` (without ``settings``: provenance only)."""
    def column(name: str, default: float) -> np.ndarray:
        return rows[name].to_numpy(dtype=float) if name in rows else np.full(len(rows), default)

    provenance = pd.DataFrame({
        "ORIGX": column("rlnCoordinateX", 0.0),
        "ORIGY": column("rlnCoordinateY", 0.0),
        "MICROGRAPH": (rows["rlnMicrographName"].astype(str).to_numpy()
                       if "rlnMicrographName" in rows else np.full(len(rows), "")),
        # The source's own id where it numbers its particles (a Scipion set's item ids).
        "SRCID": (rows[SOURCE_ID].to_numpy(dtype=np.int64) if SOURCE_ID in rows
                  else np.zeros(len(rows), dtype=np.int64)),
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


def stacks_of(rows: pd.DataFrame) -> pd.Series:
    """The stack file of each row's rlnImageName (``"12@particles/x.mrcs"`` -> its path)."""
    if not len(rows):
        return pd.Series([], dtype=object, index=rows.index)
    return rows["rlnImageName"].str.partition("@")[2]


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
