"""How good each class of a cycle is: a half-set resolution estimate and a good/junk score.

**Resolution.** Each used particle is CTF-weighted, put through its reported alignment
(``rotate(shift(P, (SHX, SHY)), PSI)``, cisTEM's convention) at the full box, and added to one
of two half sums of its class by the parity of its position in the stack (a fixed split, so it
is stable across cycles). The resolution is where the Fourier ring correlation of the masked
half sums first falls below 0.143. Class averages are Fourier-cropped to the cycle's limit, so
they could not show this; the half sums are not. It is a guide, not a gold-standard resolution:
the halves were aligned against the same references. Where the FRC never falls, the estimate
is "at or better than" Nyquist.

**Score.** From 0 (junk) to 1 (good particles), the product of simple, explainable features of
the class, with the reason shown: its resolution; its contrast against the class of the typical
particle (empty ice is far fainter, contamination far denser); how much of its signal is a
compact object near the centre; a straight edge across the mask (carbon); and its signal per
particle against the typical particle's class. A class is proposed as good from a score of 0.5.

**Signal per particle.** The half-set resolution flatters a small class: noise aligned to a
reference takes on some of it, in both halves alike, so a few dozen noisy picks agree at a fine
resolution, and so do a few dozen particles of mixed views. What does not depend on their number
is the signal each particle brings: from the masked half sums A and B of n particles, up to the
cycle's limit, 4·Re(A·B*) is n² times the power common to the particles and |A - B|² n times
the power of what differs between them, so their ratio over n is a per-particle SSNR. Particles
of the same molecule share it whatever their view; noise brings only what its alignment took
from the reference, mixed views only their common blur. A class with half the typical class's
signal per particle or more is judged on its features however small ("rare view"), one with much
less is not good however fine its resolution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

# torch and the imaging helpers (which import it) are imported in the functions that measure
# images: the Scipion plugin imports this module (scores, features) in every Scipion process,
# and torch is about half of that import's time.
if TYPE_CHECKING:
    import torch

FRC_THRESHOLD = 0.143
GOOD_SCORE = 0.5
# Fewer particles than this make an average too noisy to judge its other features by.
FEWEST_PARTICLES = 10
# A class is "a rare view" below this share of the average class size.
RARE_SHARE = 0.33
BATCH = 256
# The straight-line share (straight_line_share): the detail is finer than this share of the mask
# radius; it is measured within this share of the radius (inside the mask's soft edge), over
# this many directions (2°).
LINE_DETAIL_SCALE = 1.0 / 7.0
LINE_MASK_SHARE = 0.9
LINE_DIRECTIONS = 90
LINE_RADIUS_PX = 32


@dataclass(frozen=True)
class ClassQuality:
    """One class of a finished cycle judged: its half-set resolution estimate, the measures behind
    its good/junk score, and the reason a person reads (the record's class table is a list)."""
    number: int  # 1-based class
    particles: int
    resolution: float | None  # Å; at or better than this when ``at_limit``; None: < 2 particles
    at_limit: bool
    centred: float  # share of the average's signal in a compact centred object (0..1)
    line: float  # share of its detail along one straight line across the mask (carbon: 1)
    contrast: float  # the average's contrast over that of the typical particle's class
    signal: float  # the signal per particle over that of the typical particle's class
    score: float  # 0 junk .. 1 good
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def half_set_sums(stack: np.ndarray, table: pd.DataFrame, n_classes: int, pixel_size: float,
                  size: int | None = None, invert: bool = True) -> torch.Tensor:
    """``(K, 2, size, size)``: per class, the two half sums of its CTF-weighted, aligned used
    particles (``table``: a cycle's star rows; POS indexes ``stack`` from 1), Fourier-cropped
    from the stack's box to ``size`` (default: the full box)."""
    import torch

    from live2d.engines.builtin.geometry import fourier_crop
    from live2d.engines.builtin.io import CTF_COLUMNS
    from live2d.imaging import ctf_2d, rotate, shift_phases

    box = stack.shape[-1]
    size = size or box
    binned = pixel_size * box / size
    sums = torch.zeros((n_classes, 2, size, size))
    used = table[(table["2DCLS"] > 0) & (table["2DCLS"] <= n_classes)]
    used = used.iloc[np.argsort(used["POS"].to_numpy(), kind="stable")]  # reads in file order
    for start in range(0, len(used), BATCH):
        rows = used.iloc[start:start + BATCH]
        index = rows["POS"].to_numpy(dtype=np.int64) - 1
        images = torch.from_numpy(np.array(stack[index], dtype=np.float32))
        spectra = fourier_crop(torch.fft.rfft2(images), size)
        spectra[:, 0, 0] = 0  # the mean
        # one CTF per micrograph, not per particle
        values, which = np.unique(rows[CTF_COLUMNS].to_numpy(dtype=np.float64), axis=0,
                                  return_inverse=True)
        ctf = ctf_2d(*torch.tensor(values, dtype=torch.float32).T, binned, size)
        # the reported shift, in the same Fourier product: shift(P, (SHX, SHY))
        dy = torch.tensor(rows["SHY"].to_numpy(dtype=np.float64) / binned, dtype=torch.float32)
        dx = torch.tensor(rows["SHX"].to_numpy(dtype=np.float64) / binned, dtype=torch.float32)
        phase = shift_phases(dy, dx, size)
        weighted = spectra * ctf[torch.as_tensor(which.reshape(-1))] * phase
        aligned = rotate(torch.fft.irfft2(weighted, s=(size, size)),
                         rows["PSI"].to_numpy(dtype=np.float64))
        if not invert:
            aligned = -aligned
        slot = (rows["2DCLS"].to_numpy(dtype=np.int64) - 1) * 2 + index % 2
        sums.view(-1, size, size).index_add_(0, torch.as_tensor(slot), aligned)
    return sums


def working_size(box: int, pixel_size: float, high_res: float) -> int:
    """The box the half sums need: its Nyquist at 60% of the cycle's limit, so the estimate
    reaches well past it (the full box at most)."""
    nyquist = max(0.6 * high_res, 2.0 * pixel_size)
    return min(box, max(16, 2 * math.ceil(box * pixel_size / nyquist)))


def half_sums_key(n_classes: int, box: int, pixel_size: float, high_res: float,
                  invert: bool) -> dict[str, object]:
    """What kept half-set sums were made with and must match to be added to others."""
    return {"classes": n_classes, "size": working_size(box, pixel_size, high_res), "box": box,
            "pixel": round(pixel_size, 5), "invert": invert}


def ring_index(box: int) -> torch.Tensor:
    """``(box, box // 2 + 1)``: the ring (rounded radius in Fourier pixels) of each component
    of an rfft2 half plane."""
    import torch

    fy = torch.fft.fftfreq(box)[:, None] * box
    fx = torch.fft.rfftfreq(box)[None, :] * box
    return torch.sqrt(fx**2 + fy**2).round().long()


def signal_per_particle(a: torch.Tensor, b: torch.Tensor, particles: int,
                        last_ring: float) -> float:
    """The spectral SNR one particle brings, from the two ``(box, box)`` half sums ``a`` and
    ``b`` of ``particles`` particles, over rings 1 to ``last_ring``: the power common to the
    halves (4·Re(A·B*) is n² times the particles' common power) over n times the power of
    their difference (n times that of what differs between particles), so the same for a few
    particles as for many of the same kind."""
    import torch

    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    ring = ring_index(a.shape[-1])
    band = (ring >= 1) & (ring <= last_ring)
    common = 4.0 * float((fa * fb.conj()).real[band].sum())
    differing = float(((fa - fb).abs() ** 2)[band].sum())
    return common / max(particles * differing, 1e-20)


def frc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fourier ring correlation of two ``(box, box)`` images, one value per ring out to
    Nyquist (ring r at ``r / (box · pixel)`` Å⁻¹)."""
    import torch

    box = a.shape[-1]
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    ring = ring_index(box).flatten()
    rings = box // 2 + 1
    keep = ring < rings

    def ring_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(rings).index_add_(0, ring[keep], values.flatten()[keep])

    cross = ring_sum((fa * fb.conj()).real)
    power = ring_sum(fa.abs() ** 2) * ring_sum(fb.abs() ** 2)
    return cross / power.sqrt().clamp_min(1e-20)


def resolution_from_frc(curve: torch.Tensor, box: int, pixel_size: float) -> tuple[float, bool]:
    """Å where ``curve`` first falls below 0.143 (after ring 1), and whether it never does."""
    import torch

    below = torch.nonzero(curve[1:] < FRC_THRESHOLD).flatten()
    if not len(below):
        return 2.0 * pixel_size, True
    ring = int(below[0]) + 1
    # between the last ring above and the first below, linearly
    above, under = float(curve[ring - 1]), float(curve[ring])
    fraction = (above - FRC_THRESHOLD) / max(above - under, 1e-12)
    position = max(ring - 1 + fraction, 1.0)
    return box * pixel_size / position, False


def centred_share(average: np.ndarray, mask_radius_px: float) -> float:
    """Share of the average's signal (squared deviation from its mean over the box) that lies
    within 70% of the mask radius, for a compact particle at the centre close to 1."""
    image = np.asarray(average, dtype=np.float64)
    image = image - np.median(image)
    y, x = np.mgrid[: image.shape[0], : image.shape[1]] - image.shape[0] // 2
    inner = np.hypot(x, y) <= 0.7 * mask_radius_px
    power = image**2
    return float(power[inner].sum() / max(power.sum(), 1e-20))


def straight_line_share(average: np.ndarray, mask_radius_px: float) -> float:
    """Share of the average's detail inside the mask that is constant along one straight
    direction: 1 for a straight edge across the whole mask, as carbon's; far less for a
    particle, which ends inside the mask however elongated it is.

    The detail is what is left of the average after a Gaussian of a seventh of the mask radius
    is taken off (the particle's outline at that scale is not detail: the rod-like side view of
    a long particle stands out of its blur much as a thin edge does); the share is the best, over
    directions, of the detail's energy in its means along parallel lines (chords of the mask)."""
    from scipy import ndimage

    image = np.asarray(average, dtype=np.float64)
    # binned so that the mask's radius is at most LINE_RADIUS_PX: the share does not depend on
    # the scale, its time does
    factor = max(int(mask_radius_px // LINE_RADIUS_PX), 1)
    box = image.shape[-1] // factor
    image = image[: box * factor, : box * factor].reshape(box, factor, box, factor).mean((1, 3))
    mask_radius_px /= factor
    detail = image - ndimage.gaussian_filter(image, LINE_DETAIL_SCALE * mask_radius_px)
    inside, lines, pixels = _straight_lines(box, round(LINE_MASK_SHARE * mask_radius_px, 3))
    values = detail[inside] - detail[inside].mean()
    total = max(float((values**2).sum()), 1e-20)
    sums = np.bincount(lines, weights=np.tile(values, LINE_DIRECTIONS), minlength=len(pixels))
    along = (sums**2 / np.maximum(pixels, 1)).reshape(LINE_DIRECTIONS, -1).sum(axis=1)
    return float(along.max() / total)


@functools.lru_cache(maxsize=8)
def _straight_lines(box: int, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels within ``radius`` of the centre of a ``box``; for each of LINE_DIRECTIONS
    directions, the straight line (1 px wide) across the disc each lies on, numbered apart for
    every direction; and the pixels on each line. The same for every class of a cycle."""
    y, x = np.mgrid[:box, :box] - box // 2
    inside = np.hypot(x, y) <= radius
    angles = np.linspace(0.0, np.pi, LINE_DIRECTIONS, endpoint=False)[:, None]
    across = np.round(x[inside] * np.cos(angles) + y[inside] * np.sin(angles)).astype(np.int64)
    width = 2 * int(np.ceil(radius)) + 1
    lines = (across + width // 2 + width * np.arange(LINE_DIRECTIONS)[:, None]).ravel()
    return inside, lines, np.bincount(lines, minlength=width * LINE_DIRECTIONS)


def contrast(average: np.ndarray, mask_radius_px: float) -> float:
    """Standard deviation of the average inside the mask."""
    image = np.asarray(average, dtype=np.float64)
    y, x = np.mgrid[: image.shape[0], : image.shape[1]] - image.shape[0] // 2
    return float(image[np.hypot(x, y) <= mask_radius_px].std())


def assess_classes(stack: np.ndarray, table: pd.DataFrame, averages: np.ndarray,
                   pixel_size: float, mask_radius: float, high_res: float,
                   invert: bool = True, half_sums: torch.Tensor | None = None,
                   counts: list[int] | None = None) -> list[ClassQuality]:
    """Every class's resolution estimate, features and score (``mask_radius`` in Å, the
    cycle's ``high_res`` limit in Å). Where they are known already (a streaming update adds up
    its batches'), the half-set sums (of the :func:`working_size` box) and the particles per
    class; ``table`` is not read then."""
    from live2d.imaging import soft_disc

    n_classes, box = len(averages), averages.shape[-1]
    size = working_size(box, pixel_size, high_res)
    binned = pixel_size * box / size
    sums = half_sums if half_sums is not None else half_set_sums(stack, table, n_classes,
                                                                  pixel_size, size, invert)
    mask = soft_disc(size, mask_radius / binned, 3.0 * pixel_size / binned)
    counts = np.asarray(counts) if counts is not None else np.bincount(
        table["2DCLS"].to_numpy(dtype=np.int64).clip(0, n_classes), minlength=n_classes + 1)[1:]
    total = max(int(counts.sum()), 1)
    radius = mask_radius / pixel_size
    contrasts = np.array([contrast(average, radius) for average in averages])
    # the contrast of the typical particle's class: contamination is far denser, empty ice
    # far fainter
    typical = _weighted_median(contrasts, counts) if counts.any() else 1.0
    judged = counts >= 2
    last_ring = size * binned / high_res
    signals = np.array([signal_per_particle(sums[k, 0] * mask, sums[k, 1] * mask,
                                            int(counts[k]), last_ring) if judged[k] else 0.0
                        for k in range(n_classes)])
    # what a particle of the molecule brings, whatever its view: the typical particle's class
    # (where that has none, no class is judged to have any)
    typical_signal = _weighted_median(signals[judged], counts[judged]) if judged.any() else 0.0
    relative_signals = signals / typical_signal if typical_signal > 0 else np.zeros(n_classes)
    out = []
    for k in range(n_classes):
        if not judged[k]:
            out.append(ClassQuality(k + 1, int(counts[k]), None, False, 0.0, 0.0, 0.0, 0.0, 0.0,
                                    "empty class" if not counts[k] else "a single particle"))
            continue
        resolution, at_limit = resolution_from_frc(frc(sums[k, 0] * mask, sums[k, 1] * mask),
                                                   size, binned)
        out.append(_scored(k + 1, int(counts[k]), counts[k] / total, resolution, at_limit,
                           centred_share(averages[k], radius),
                           straight_line_share(averages[k], radius),
                           contrasts[k] / max(typical, 1e-20),
                           relative_signals[k], high_res, n_classes))
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def feature_values(particles: int, share: float, resolution: float, centred: float,
                   line: float | None, relative_contrast: float, relative_signal: float,
                   high_res: float, n_classes: int) -> dict[str, float]:
    """The class's features on the score's scale, before they are clipped to 0..1: 1 or more
    passes, 0 or less fails (the score is their clipped product; the learned proposal,
    :mod:`live2d.learned_proposal`, also sees how far past either end a class is)."""
    features = {
        # 1 at the cycle's limit or better, 0 from four times it
        "sharp": (4.0 * high_res - resolution) / (3.0 * high_res),
        "faint": (relative_contrast - 0.3) / 0.3,
        "dense": (3.5 - relative_contrast) / 1.5,
        "centred": (centred - 0.5) / 0.3,
        # A straight edge across the mask (carbon): 1 up to 0.56 of the detail along one line,
        # 0 from 0.76. In simulations classes of 85% particles or more ranged 0.12-0.76 (99%
        # below 0.63; the rod-like side views of a long membrane protein included), classes of
        # more than half carbon 0.28-0.95 (median 0.80).
        # None: a class table from before it was measured, not judged on it.
        "edge": 1.0 if line is None else (0.76 - line) / 0.2,
        # The resolution of a few dozen noisy picks aligned to a reference, or of mixed views,
        # flatters them; their signal per particle does not: 1 from 0.6 of the typical class's,
        # 0 at 0.2. Views of the molecule ranged 0.6-2.2 in simulations; noise aligned to a
        # reference 0.1-0.2, a few dozen particles of mixed views 0.2-0.4.
        "signal": (relative_signal - 0.2) / 0.4,
        "populous": (particles - FEWEST_PARTICLES / 2) / FEWEST_PARTICLES,
    }
    return {name: float(value) for name, value in features.items()}


def table_features(table: list[dict], high_res: float) -> list[dict[str, float] | None]:
    """:func:`feature_values` of each class of a cycle's class table (as
    :meth:`ClassQuality.to_dict` wrote it; ``high_res``: the cycle's limit); None for a class
    with no resolution estimate (fewer than 2 particles)."""
    total = max(sum(int(row["particles"]) for row in table), 1)
    return [None if row["resolution"] is None else
            feature_values(int(row["particles"]), int(row["particles"]) / total,
                           float(row["resolution"]), float(row["centred"]),
                           # tables written before the line share: not judged on it
                           None if row.get("line") is None else float(row["line"]),
                           float(row["contrast"]),
                           # tables written before the signal was measured: not judged on it
                           float(row.get("signal", 1.0)), high_res, len(table))
            for row in table]


def _scored(number: int, particles: int, share: float, resolution: float, at_limit: bool,
            centred: float, line: float, relative_contrast: float, relative_signal: float,
            high_res: float, n_classes: int) -> ClassQuality:
    features = {name: float(np.clip(value, 0.0, 1.0)) for name, value in feature_values(
        particles, share, resolution, centred, line, relative_contrast, relative_signal,
        high_res, n_classes).items()}
    score = float(np.prod(list(features.values())))
    where = f"≤ {resolution:.1f} Å" if at_limit else f"{resolution:.1f} Å"
    reasons = {
        "populous": f"only {particles} particles: too few to judge",
        "faint": "flat: probably empty ice",
        "dense": "far denser than the particles: ice contamination",
        "edge": f"{line:.0%} of its detail along one straight line: a carbon edge",
        "centred": "signal off centre or spread out: contamination or aggregates",
        "sharp": f"{where}: blurred, mixed views or junk",
        "signal": f"{where} from {particles} particles, but {relative_signal:.0%} of the typical "
                  "class's signal per particle: noise fitted to a reference, or mixed views",
    }
    failing = [name for name in reasons if features[name] < 0.5]  # in order of priority
    if not failing and score < GOOD_SCORE:  # no single flaw, but together too many
        failing = [min(reasons, key=features.get)]
    if failing:
        reason = reasons[failing[0]]
    elif share * n_classes < RARE_SHARE:  # good, though far smaller than the average class
        reason = f"rare view: {particles} particles, {where}, centred"
    else:
        reason = f"{where}, centred, {share:.0%} of particles"
    return ClassQuality(number, particles, round(resolution, 2), at_limit, round(centred, 3),
                        round(line, 3), round(relative_contrast, 2), round(relative_signal, 2),
                        round(score, 3), reason)
