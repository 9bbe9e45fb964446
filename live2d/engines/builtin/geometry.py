"""The geometry of one cycle: boxes, angle grid, translations and the Fourier bands they use.

Particles are cropped in real space to the box that the mask and the search range need
(``cropped``), then Fourier-cropped to the high-resolution limit (``working``), so the early
low-resolution cycles are cheap. The psi grid gets a random offset per cycle; the translations
are every integer (dy, dx) of the working box within the search range, with a Gaussian prior
centred on the box: as wide as the shifts the particles were aligned with last time
(:func:`learned_shift_sigma`, as cisTEM's refine2d and RELION learn theirs), at most half the
search range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from live2d.engines.base import CycleParams

EDGE_FALLOFF = 20.0  # Å of soft edge around masks and cropped boxes, as cisTEM
# Fewer particles aligned before than this say too little of how far picks sit off centre.
MIN_ALIGNED_FOR_PRIOR = 50


@dataclass(frozen=True)
class Geometry:
    """What a cycle searches over, in the stack's and the working box's pixels."""

    box: int
    pixel_size: float
    cropped: int  # real-space crop holding mask and search range
    working: int  # Fourier-cropped box the search runs in
    binned_pixel: float
    psi: np.ndarray  # (R,) this cycle's angle grid, degrees
    shifts: torch.Tensor  # (T, 2) integer (dy, dx) translations in working pixels
    log_prior: torch.Tensor  # (T,) Gaussian prior on the translation
    prior_sigma: float  # working px: that prior's width
    mask_radius: float  # px of the stack


def plan_geometry(params: CycleParams, box: int, rng: np.random.Generator,
                  shift_sigma: float | None = None) -> Geometry:
    """This cycle's geometry for ``box``-pixel particles; ``rng`` draws the psi grid's offset.
    ``shift_sigma`` (Å): the translation prior's width learned from the particles
    (:func:`learned_shift_sigma`); None, or wider than half the search range: half of it."""
    pixel = params.pixel_size
    search = params.search_range if params.search_range > 0 else box * pixel / 4.0
    needed = 2.0 * (search + params.mask_radius + EDGE_FALLOFF) / pixel
    cropped = min(box, even_ceil(needed))
    high_res = max(params.high_res, 2.0 * pixel)
    working = min(cropped, even_ceil(2.0 * cropped * pixel / high_res))
    binned = pixel * cropped / working
    mask_radius = min(params.mask_radius / pixel, box / 2.0 - 1.0)
    step = params.angular_step if params.angular_step > 0 else math.degrees(
        binned / max(params.mask_radius, binned))
    n_angles = max(1, round(360.0 / step))
    step = 360.0 / n_angles
    psi = (step / 2.0 * rng.uniform(-1.0, 1.0) + step * np.arange(n_angles)) % 360.0
    radius = min(search / binned, working / 2.0 - 1.0)
    reach = math.floor(radius)
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = dy**2 + dx**2 <= radius**2 + 1e-6
    shifts = torch.as_tensor(np.stack([dy[inside], dx[inside]], axis=1), dtype=torch.long)
    widest = search / 2.0
    sigma = max(min(widest, shift_sigma or widest) / binned, 1.0)
    log_prior = -(shifts.float() ** 2).sum(dim=1) / (2.0 * sigma**2)
    return Geometry(box, pixel, cropped, working, binned, psi, shifts, log_prior, sigma,
                    mask_radius)


def learned_shift_sigma(shifts: np.ndarray) -> float | None:
    """The width (Å) of the Gaussian prior on translations that ``shifts`` (``(n, 2)`` Å, x and
    y, of particles aligned before) call for: their root mean square per axis about the box
    centre. cisTEM's refine2d takes its prior from the spread of the input star's shifts and
    RELION updates its offset prior from the shifts found, for the same reason: at low signal to
    noise a wide prior lets a particle's noise pull it anywhere in the search range (SNR 0.02,
    search range 48 Å: median shift error 11 Å with half the range as the width, 5.6 Å
    learned). None when fewer than :data:`MIN_ALIGNED_FOR_PRIOR` or none off centre (a
    random start aligns nothing)."""
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    shifts = shifts[np.isfinite(shifts).all(axis=1)]
    if len(shifts) < MIN_ALIGNED_FOR_PRIOR:
        return None
    spread = math.sqrt(float((shifts**2).sum(axis=1).mean()) / 2.0)
    return spread if spread > 1e-3 else None


def shift_neighbours(shifts: torch.Tensor) -> torch.Tensor:
    """``(T, 4)``: for each translation of ``shifts`` (``(T, 2)`` integer (dy, dx)), the index of
    its neighbours at dy - 1, dy + 1, dx - 1 and dx + 1; -1 where that one is out of range."""
    index = {tuple(shift): i for i, shift in enumerate(shifts.tolist())}
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    return torch.as_tensor([[index.get((dy + sy, dx + sx), -1) for sy, sx in steps]
                            for dy, dx in shifts.tolist()], dtype=torch.long).reshape(-1, 4)


def parabola_peak(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """Where a parabola through three equally spaced samples peaks, in sample steps from the
    centre (-0.5 to 0.5); 0 where the centre is not a finite maximum of the three."""
    curvature = minus - 2.0 * centre + plus
    offset = 0.5 * (minus - plus) / torch.where(curvature < 0, curvature, -1.0)
    usable = (curvature < 0) & torch.isfinite(minus) & torch.isfinite(plus)
    return torch.where(usable, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


def even_ceil(value: float) -> int:
    """The even integer at or above ``value``, at least 2."""
    return max(2, math.ceil(value / 2.0) * 2)


def fourier_crop(spectra: torch.Tensor, size: int) -> torch.Tensor:
    """The lowest frequencies of rfft2 half planes ``(..., n, n // 2 + 1)`` as ``size``-box
    half planes (values unscaled)."""
    n = spectra.shape[-2]
    return torch.cat([spectra[..., : size // 2, : size // 2 + 1],
                      spectra[..., n - size // 2:, : size // 2 + 1]], dim=-2)


def band_mask(w: int, pixel: float, high_res: float, low_res: float,
              device: torch.device) -> torch.Tensor:
    """``(w, w // 2 + 1)``: 1 on the rfft2 half plane between ``low_res`` and ``high_res``
    (Å; never beyond Nyquist), else 0."""
    fy = torch.fft.fftfreq(w, d=pixel, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, d=pixel, device=device)[None, :]
    radius = torch.sqrt(fx**2 + fy**2)
    band = (radius <= 1.0 / max(high_res, 2 * pixel)) & (radius >= 1.0 / max(low_res, 1e-6))
    return band.float()


def shell_average(power: torch.Tensor) -> torch.Tensor:
    """An rfft2 half plane ``(w, w // 2 + 1)`` replaced by its mean per resolution shell."""
    w = power.shape[0]
    fy = torch.fft.fftfreq(w, device=power.device)[:, None] * w
    fx = torch.fft.rfftfreq(w, device=power.device)[None, :] * w
    shell = torch.sqrt(fx**2 + fy**2).round().long()
    sums = torch.zeros(int(shell.max()) + 1, device=power.device).index_add_(
        0, shell.flatten(), power.flatten())
    counts = torch.zeros_like(sums).index_add_(0, shell.flatten(), torch.ones_like(power).flatten())
    return (sums / counts.clamp_min(1))[shell]
