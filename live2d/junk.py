"""Picks that are not the particle, as a picker on real micrographs also returns them.

Each kind is drawn as noise-free density in the units of :class:`live2d.phantom.Phantom`'s views
(a view's brightest pixel is 1), before the microscope's CTF and noise, which the phantom applies
to junk and particles alike:

* ``empty``: ice with nothing in it, only a faint gradient of ice thickness;
* ``contamination``: a crystalline ice or ethane droplet, a round blob several times denser
  than the protein, often only partly inside the box;
* ``carbon``: the edge of the carbon support, a straight step crossing the box at any angle and
  offset, the carbon side grainy;
* ``aggregate``: two to four particles, any views and angles, clumped around the pick.
"""

from __future__ import annotations

import numpy as np

JUNK_KINDS = ("empty", "contamination", "carbon", "aggregate")
PARTICLE = "particle"


def render_junk(kind: str, views: np.ndarray, rng: np.random.Generator,
                render_view) -> np.ndarray:
    """``(box, box)`` float32 density of one junk pick of ``kind``. ``render_view(view, psi,
    shift_px)`` draws one particle (for aggregates), shift in pixels (x, y)."""
    box = views.shape[-1]
    axis = np.arange(box) - box // 2
    y, x = np.meshgrid(axis, axis, indexing="ij")
    if kind == "empty":
        direction = rng.uniform(0.0, 2.0 * np.pi)
        gradient = (x * np.cos(direction) + y * np.sin(direction)) / box
        return (0.05 * gradient).astype(np.float32)
    if kind == "contamination":
        radius = rng.uniform(0.15, 0.45) * box
        distance = rng.uniform(0.0, 0.6) * box
        direction = rng.uniform(0.0, 2.0 * np.pi)
        cx, cy = distance * np.cos(direction), distance * np.sin(direction)
        r = np.hypot(x - cx, y - cy)
        # A droplet: thickest at its centre, with a soft rim a few pixels wide.
        profile = np.sqrt(np.clip(1.0 - (r / radius) ** 2, 0.0, None))
        edge = 0.5 * (1.0 - np.tanh((r - radius) / 2.0))
        return (rng.uniform(3.0, 8.0) * profile * edge).astype(np.float32)
    if kind == "carbon":
        direction = rng.uniform(0.0, 2.0 * np.pi)
        offset = rng.uniform(-0.3, 0.3) * box
        across = x * np.cos(direction) + y * np.sin(direction) - offset
        step = 0.5 * (1.0 + np.tanh(across / 1.5))
        grain = _smooth_noise(rng, box, width=2.0)
        return (step * (rng.uniform(1.0, 2.0) + 0.3 * grain)).astype(np.float32)
    if kind == "aggregate":
        members = int(rng.integers(2, 5))
        spread = 0.18 * box
        image = np.zeros((box, box), dtype=np.float32)
        for _ in range(members):
            shift = rng.normal(0.0, spread, size=2)
            image += render_view(int(rng.integers(len(views))), rng.uniform(0.0, 360.0), shift)
        return image
    raise ValueError(f"unknown junk kind {kind!r}: one of {', '.join(JUNK_KINDS)}")


def _smooth_noise(rng: np.random.Generator, box: int, width: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``width`` px, scaled to standard deviation 1."""
    spectrum = np.fft.rfft2(rng.standard_normal((box, box)))
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    smooth = np.fft.irfft2(spectrum * np.exp(-2.0 * (np.pi * width) ** 2 * (fx**2 + fy**2)),
                           s=(box, box))
    return smooth / max(float(smooth.std()), 1e-12)
