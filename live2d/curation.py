"""Which particles of a selected class are junk all the same: particle-level curation.

A class that is mostly good particles still holds some junk (aggregates, contamination or
carbon that fit its average better than any other class's). Such a pick fits its class far
worse than the class's typical member: its signal is spread over the box where its class's
members have theirs concentrated at the centre. The figure that says so is each particle's
``share``: the share of its low-passed signal (20 Å, without the lowest frequencies an ice
gradient puts there) within :data:`INNER` of the mask radius of where its alignment puts the
particle's centre (its reported shift).

A particle is cut when its share lies below its class's median by more than ``cut`` robust
standard deviations (1.4826 × the median absolute deviation), so the rule follows each class's
own spread and needs no absolute threshold. Classes of fewer than :data:`MIN_MEMBERS` particles
keep all theirs: a median and spread of a handful mean nothing. The shares are measured once
per cycle and kept beside its star (``cycle_NNN_shares.npy``), so that status, exports and
Scipion read them instead of the images.

Why the share alone: on simulated sessions with 30% junk (three seeds, the classes the truth
would select), it separates the junk left in those classes from their particles far better
than the engine's per-particle figures (area under the curve of within-class robust z-scores
0.86-0.90; of the score 0.67-0.72, the occupancy 0.75, the likelihood 0.50, sigma 0.30). Adding a
cut on the score as well took out about 0.1% of the true particles for no gain in precision
(0.944 against 0.942 on seed 1; the same on the others).

The other way round, particles of unselected classes that fit a selected class as well as its
typical member (:func:`selected_fits`, :func:`rescued`) can be measured, but exports and
Scipion do not take them in yet: on the same simulations no spread helped both seeds (seed 1
has no true particle outside its proposal and took in junk only; seed 2 got back part of a
missed good class only at 2 robust SDs, where seed 1 lost 0.031 of precision;
``python bench/quality.py --rescue DIR``, figures in the README's Performance section).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.atomic import replacing
from live2d.history import CycleRecord, particle_results_kept, particle_table
from live2d.output_folder import (
    SESSION_STATE,
    STORE_SOURCES,
    STORE_STACK,
    STORE_STATE,
    shares_name,
)
from live2d.session_lock import holder
from live2d.source_images import open_images
from live2d.store import ParticleStore

# torch and the engine's helpers (which import it) are imported in the functions that read
# images: the Scipion plugin imports this module in every Scipion process, which needs no torch.

MIN_MEMBERS = 20  # below this a class's median and spread are too noisy to judge by
LOW_PASS = 20.0  # Å: a particle's shape, not the noise
LOW_CUT = 300.0  # Å: ice thickness gradients are not the particle's signal
ROBUST_SD = 1.4826  # median absolute deviation -> standard deviation of a normal
BATCH = 512
# Of the mask radius: on simulated sessions with 30% junk, 0.6 separated junk best (0.4, 0.5
# and 0.6 tried, with the score's cut too: at a cut of 3, precision 0.906, 0.924, 0.944 on
# seed 1 and 0.919, 0.943, 0.958 on seed 2).
INNER = 0.6


@dataclass(frozen=True)
class ClassCuration:
    """One class's curation: how many of its particles are kept, and the cuts that decided."""

    number: int
    particles: int
    kept: int
    share_cut: float | None  # particles with a share below this are cut; None: not judged

    def rule(self) -> str:
        """What a person reads in the class's reason."""
        if self.share_cut is None:
            return (f"all {self.particles} kept: fewer than {MIN_MEMBERS} particles to judge by"
                    if self.particles else "")
        return (f"{self.kept} of {self.particles} kept (cut: signal share near the centre < "
                f"{self.share_cut:.2f})")


@dataclass(frozen=True)
class Curation:
    """A cycle's curation: per row of its particle table whether the particle is kept, and per
    class the figures (1-based numbers, every class of the cycle)."""

    keep: np.ndarray  # bool per row of the cycle's particle table
    classes: list[ClassCuration]

    def by_number(self) -> dict[int, ClassCuration]:
        return {c.number: c for c in self.classes}


def robust_cut(values: np.ndarray, cut: float) -> float:
    """The value ``cut`` robust standard deviations below the median of ``values`` (NaN left
    out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return -np.inf
    median = float(np.median(values))
    spread = ROBUST_SD * float(np.median(np.abs(values - median)))
    return median - cut * spread


def curate(table: pd.DataFrame, shares: np.ndarray, n_classes: int, cut: float) -> Curation:
    """The curation of a cycle whose particle table is ``table`` (2DCLS) with each row's signal
    ``shares`` (:func:`signal_shares`). Unclassified rows (2DCLS ≤ 0) are not kept."""
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    keep = labels > 0
    classes = []
    for k in range(1, n_classes + 1):
        members = labels == k
        n = int(members.sum())
        if n < MIN_MEMBERS:
            classes.append(ClassCuration(k, n, n, None))
            continue
        share_cut = robust_cut(shares[members], cut)
        # NaN (a blank image) has no share: it is no particle
        outlier = members & ~(shares >= share_cut)
        keep &= ~outlier
        classes.append(ClassCuration(k, n, n - int(outlier.sum()), round(share_cut, 4)))
    return Curation(keep, classes)


def signal_shares(stack, table: pd.DataFrame, pixel_size: float,
                  mask_radius_px: float) -> np.ndarray:
    """Per row of ``table`` (POS indexes ``stack`` from 1), the share of the particle's
    low-passed signal within :data:`INNER` × ``mask_radius_px`` of where its shift (SHX, SHY,
    Å) puts its centre; NaN for rows not classified. Reads the images in stack order,
    Fourier-cropped to the low-pass limit: cheap beside the cycle that made the table."""
    import torch

    from live2d.engines.builtin.geometry import fourier_crop
    from live2d.imaging import shift_phases

    out = np.full(len(table), np.nan)
    rows = np.flatnonzero(table["2DCLS"].to_numpy(dtype=np.int64) > 0)
    if not len(rows):
        return out
    rows = rows[np.argsort(table["POS"].to_numpy(dtype=np.int64)[rows], kind="stable")]
    box = stack.shape[-1]
    size = min(box, max(8, 2 * math.ceil(box * pixel_size / LOW_PASS)))
    binned = pixel_size * box / size
    fy = torch.fft.fftfreq(size, d=binned)[:, None]
    fx = torch.fft.rfftfreq(size, d=binned)[None, :]
    frequency = torch.sqrt(fx**2 + fy**2)
    band = ((frequency <= 1.0 / LOW_PASS) & (frequency >= 1.0 / LOW_CUT)).float()
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    inner = (torch.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2) <=
             INNER * mask_radius_px * size / box).float()
    positions = table["POS"].to_numpy(dtype=np.int64) - 1
    shx = table["SHX"].to_numpy(dtype=np.float64)
    shy = table["SHY"].to_numpy(dtype=np.float64)
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        images = torch.from_numpy(np.array(stack[positions[chunk]], dtype=np.float32))
        spectra = fourier_crop(torch.fft.rfft2(images), size)
        # centred as the alignment centres it (cisTEM's shift(P, (SHX, SHY))), then measured
        phase = shift_phases(torch.tensor(shy[chunk] / binned, dtype=torch.float32),
                             torch.tensor(shx[chunk] / binned, dtype=torch.float32), size)
        power = torch.fft.irfft2(spectra * band * phase, s=(size, size)) ** 2
        total = power.flatten(1).sum(dim=1)
        share = (power * inner).flatten(1).sum(dim=1) / total
        out[chunk] = torch.where(total > 0, share, torch.nan).double().numpy()
    return out


def session_curation(folder: str | os.PathLike) -> tuple[bool, float]:
    """Whether the session in ``folder`` curates particles, and its cut (its settings' *Curate
    particles* and *Curation cut*; the defaults where a value is missing or out of range)."""
    from live2d.schedule import Settings  # settings are described there, once

    state = json.loads((Path(folder) / SESSION_STATE).read_text(encoding="utf-8"))
    stored = state.get("settings") or {}
    values = {name: stored[name] for name in ("curate_particles", "curation_cut")
              if name in stored}
    try:
        settings = Settings.from_dict(values)
    except ValueError:  # another version's or a hand-edited value: the defaults stand
        settings = Settings()
    return settings.curate_particles, settings.curation_cut


def session_mask_radius_px(folder: Path, box: int, pixel_size: float) -> float:
    """The mask radius the session's cycles use, in the store's pixels: the setting, else 0.6 ×
    Warp's picking diameter, else what a cycle guesses from the box (live2d.cycle)."""
    from live2d.cycle import DIAMETER_OF_BOX  # the cycle owns the default
    from live2d.warp import WarpFolderError, read_settings

    state = json.loads((folder / SESSION_STATE).read_text(encoding="utf-8"))
    radius = (state.get("settings") or {}).get("mask_radius")
    if not radius:
        diameter = 0.0
        if not state.get("star"):  # a Warp 1.x folder names its picking diameter
            try:
                diameter = read_settings(Path(state["warp_dir"])).diameter
            except (OSError, ValueError, KeyError, WarpFolderError):  # the box stands in
                diameter = 0.0
        radius = 0.6 * (diameter or DIAMETER_OF_BOX * box * pixel_size)
    return float(radius) / pixel_size


# A cycle's kept shares: per row of its table, its store position, the shift it was measured
# at (Å), the mask radius (px) and the share; a later cycle re-measures only the rows whose
# position, shift or radius differ (a streaming update: its new and re-visited particles).
_KEPT_COLUMNS = 5


def _kept_shares(path: Path) -> np.ndarray | None:
    try:
        kept = np.load(path)
    except (OSError, ValueError):
        return None
    return kept if kept.ndim == 2 and kept.shape[1] == _KEPT_COLUMNS else None


def _earlier_shares(folder: Path, number: int) -> np.ndarray | None:
    """The kept shares of the latest cycle before ``number`` that has any."""
    earlier = []
    for path in folder.glob("cycle_*_shares.npy"):
        named = re.fullmatch(r"cycle_(\d+)_shares\.npy", path.name)
        if named and path.name == shares_name(int(named.group(1))) and \
                int(named.group(1)) < number:
            earlier.append((int(named.group(1)), path))
    for _, path in sorted(earlier, reverse=True):  # by number: as text 1000 < 999
        kept = _kept_shares(path)
        if kept is not None:
            return kept
    return None


def cycle_shares(folder: str | os.PathLike, record: CycleRecord,
                 table: pd.DataFrame | None = None, store: ParticleStore | None = None
                 ) -> np.ndarray:
    """:func:`signal_shares` of cycle ``record``'s particles, kept beside its star (a cycle's
    table never changes once published). Rows whose particle, shift and mask radius an earlier
    cycle's kept shares already measured are taken from there, so a streaming update measures
    only its new and re-visited particles, not the session's. ``store``: the session's particle
    store where it lives in another folder (Scipion's import); else the one in ``folder``."""
    folder = Path(folder)
    table = particle_table(folder, record) if table is None else table
    kept_path = folder / shares_name(record.number)
    if store is not None:
        images, pixel, box = store.images_path, store.pixel_size, store.box
    else:  # read as a reader beside the session: its state file, not an opened store
        state = json.loads((folder / STORE_STATE).read_text(encoding="utf-8"))
        copies = state.get("images", "copy") == "copy"
        images = folder / (STORE_STACK if copies else STORE_SOURCES)
        pixel, box = float(state["pixel_size"]), int(state["box"])
    radius = session_mask_radius_px(folder, box, pixel)
    described = np.column_stack([
        table["POS"].to_numpy(dtype=np.float64), table["SHX"].to_numpy(dtype=np.float64),
        table["SHY"].to_numpy(dtype=np.float64), np.full(len(table), radius)])
    kept = _kept_shares(kept_path)
    if kept is not None and len(kept) == len(table) and np.array_equal(kept[:, :4], described):
        return kept[:, 4]
    shares = np.full(len(table), np.nan)
    todo = np.ones(len(table), dtype=bool)
    earlier = _earlier_shares(folder, record.number)
    if earlier is not None and len(earlier):
        order = np.argsort(earlier[:, 0], kind="stable")
        at = np.clip(np.searchsorted(earlier[order, 0], described[:, 0]), 0, len(order) - 1)
        match = order[at]
        same = np.all(earlier[match, :4] == described, axis=1)
        shares[same] = earlier[match[same], 4]
        todo = ~same
    if todo.any():
        shares[todo] = signal_shares(open_images(images), table[todo].reset_index(drop=True),
                                     pixel, radius)
    if holder(folder) is None:  # a reader beside another process's session writes nothing
        try:
            with replacing(kept_path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, np.column_stack([described, shares]))
        except OSError:  # a read-only session folder: measured again next time
            pass
    return shares


def curate_cycle(folder: str | os.PathLike, record: CycleRecord, cut: float,
                 table: pd.DataFrame | None = None, store: ParticleStore | None = None
                 ) -> Curation:
    """:func:`curate` of cycle ``record`` of the session in ``folder``."""
    table = particle_table(folder, record) if table is None else table
    return curate(table, cycle_shares(folder, record, table, store), len(record.class_counts),
                  cut)


def session_cycle_curation(folder: str | os.PathLike, record: CycleRecord,
                           table: pd.DataFrame | None = None) -> Curation | None:
    """:func:`curate_cycle` of ``record`` as the session in ``folder`` curates (its settings'
    cut); None where it does not curate, where the cycle's particle results are gone (pruned,
    replaced by a later streaming update) or where its images or files cannot be read: the
    caller then counts whole classes."""
    try:
        curating, cut = session_curation(folder)
        if not curating or not particle_results_kept(folder, record):
            return None
        return curate_cycle(folder, record, cut, table)
    except (OSError, ValueError, KeyError):  # being replaced, unreadable: whole classes stand
        return None


# Particles of an unselected class that fit a selected class as well as its members do.
# Members measured per selected class to know its typical fit (enough for a median and spread).
RESCUE_MEMBERS = 200
RESCUE_BATCH = 128
# A candidate is rescued whose fit lies at most this many robust standard deviations of its
# best class's members' fits below their median (0: as well as the median member).
RESCUE_SPREAD = 1.0


@dataclass(frozen=True)
class Fits:
    """Per row of a cycle's particle table, the best of the selected classes (1-based; 0: not
    measured) and the engine's score against it (NaN: not measured): for every particle of an
    unselected class (the candidates) and a sample of each selected class's kept members."""

    best: np.ndarray
    fit: np.ndarray


def _session_settings(folder: Path):
    from live2d.schedule import Settings

    state = json.loads((folder / SESSION_STATE).read_text(encoding="utf-8"))
    try:
        return Settings.from_dict(state.get("settings") or {}), state
    except ValueError:  # another version's or a hand-edited value: the defaults stand
        return Settings(), state


def _white_protein(settings, state: dict) -> bool:
    """Whether the session's images have white protein (the engine's invert_contrast), as the
    cycles read them: the setting, else Warp 1.x's picking setting, else Warp's white."""
    from live2d.warp import WarpFolderError, read_settings

    if settings.contrast != "auto":
        return settings.contrast == "white"
    if not state.get("star"):
        try:
            return read_settings(Path(state["warp_dir"])).invert
        except (OSError, ValueError, KeyError, WarpFolderError):
            pass
    return True


def selected_fits(folder: str | os.PathLike, record: CycleRecord, chosen, keep: np.ndarray,
                  table: pd.DataFrame | None = None, device: str = "cpu") -> Fits:
    """How well the particles of cycle ``record``'s classes not in ``chosen`` fit the
    ``chosen`` classes' averages, and (for comparison) up to :data:`RESCUE_MEMBERS` of each
    chosen class's members that the curation keeps (``keep``, per row): each is searched
    against those averages alone with the built-in engine's search (every angle and shift,
    its CTF, the noise whitened, at the cycle's resolution), from scratch."""
    import mrcfile
    import torch

    from live2d.engines.base import CycleParams
    from live2d.engines.builtin.geometry import plan_geometry
    from live2d.engines.builtin.search import Search

    folder = Path(folder)
    table = particle_table(folder, record) if table is None else table
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    chosen = sorted(int(k) for k in chosen if 1 <= int(k) <= len(record.class_counts))
    fits = Fits(np.zeros(len(table), dtype=np.int64), np.full(len(table), np.nan))
    candidates = np.flatnonzero((labels > 0) & ~np.isin(labels, chosen))
    if not chosen or not len(candidates):
        return fits
    settings, state = _session_settings(folder)
    store_state = json.loads((folder / STORE_STATE).read_text(encoding="utf-8"))
    copies = store_state.get("images", "copy") == "copy"
    stack = open_images(folder / (STORE_STACK if copies else STORE_SOURCES))
    pixel, box = float(store_state["pixel_size"]), int(store_state["box"])
    radius = session_mask_radius_px(folder, box, pixel) * pixel  # Å
    with mrcfile.open(folder / record.classes, permissive=True) as mrc:
        averages = torch.from_numpy(np.array(mrc.data, dtype=np.float32)).reshape(-1, box, box)
    params = CycleParams(
        pixel_size=pixel, mask_radius=radius, high_res=max(record.high_res, 2.0 * pixel),
        low_res=settings.low_res, angular_step=settings.angular_step,
        # a cycle's default search range: a third of the diameter, whose 0.6 is the mask
        search_range=settings.search_range if settings.search_range is not None
        else 0.55 * radius,
        smoothing=settings.smoothing, invert_contrast=_white_protein(settings, state))
    rng = np.random.default_rng(record.number)
    geometry = plan_geometry(params, box, rng)
    search = Search(geometry, params, averages[[k - 1 for k in chosen]], torch.device(device))
    positions = table["POS"].to_numpy(dtype=np.int64) - 1
    keep = np.asarray(keep, dtype=bool)
    members = np.concatenate([rng.permutation(np.flatnonzero((labels == k) & keep))
                              [:RESCUE_MEMBERS] for k in chosen])
    search.estimate_noise(stack, positions[members], table)
    rows = np.concatenate([members, candidates])
    columns = [c for c in table.columns if c != "2DCLS"]  # no previous match: searched afresh
    for start in range(0, len(rows), RESCUE_BATCH):
        chunk = rows[start:start + RESCUE_BATCH]
        out, _ = search.score(stack, positions[chunk], table.iloc[chunk][columns])
        fits.fit[chunk] = out["score"]
        fits.best[chunk] = np.asarray(chosen)[out["cls"].astype(np.int64) - 1]
    return fits


def rescued(fits: Fits, labels: np.ndarray, chosen, shares: np.ndarray, cut: float,
            spread: float = RESCUE_SPREAD) -> np.ndarray:
    """Per row, the chosen class (1-based) a particle of an unselected class is rescued into
    (0: none): its fit to its best chosen class (:func:`selected_fits`) lies no more than
    ``spread`` robust standard deviations below the median of that class's measured members
    that fit it best, and its signal share passes that class's curation cut (``cut``)."""
    labels = np.asarray(labels, dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    into = np.zeros(len(labels), dtype=np.int64)
    candidates = (labels > 0) & ~np.isin(labels, list(chosen)) & (fits.best > 0)
    for k in chosen:
        own = (labels == k) & (fits.best == k) & np.isfinite(fits.fit)
        if not own.any():
            continue
        least = robust_cut(fits.fit[own], spread)
        share_cut = robust_cut(shares[labels == k], cut) \
            if (labels == k).sum() >= MIN_MEMBERS else -np.inf
        into[candidates & (fits.best == k) & (fits.fit >= least) & (shares >= share_cut)] = k
    return into
