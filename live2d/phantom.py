"""Simulated particles of an asymmetric phantom, with known views, angles and shifts.

The phantom is a rigid assembly of Gaussian domains of different sizes (no symmetry), so every
projection direction gives a clearly different 2D view. Its projections are exact sums of 2D
Gaussians; particles are made from those views with one geometric convention, defined once in
:func:`render_clean`:

    particle = shift(rotate(view, psi), shift)

``rotate`` turns the image counter-clockwise by ``psi`` degrees about pixel (box//2, box//2), in
axes where x is the column (fast) index and y the row index, so a positive angle carries +x
towards +y; ``shift`` then moves it by (shift_x, shift_y) Å, positive towards higher indices.
Particles carry a CTF and white noise and come out as Warp exports them: protein white
(Invert on) and normalised to background mean 0 and standard deviation 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_fourier_shift import fourier_shift_image_2d
from torch_transform_image import affine_transform_image_2d

from live2d.imaging import ctf_2d, rotation_matrices_yx
from live2d.junk import JUNK_KINDS, PARTICLE, render_junk

# (x, y, z) centre in units of the longest dimension, Gaussian sigma in the same unit, density.
_DOMAINS = np.array(
    [
        (0.00, 0.00, 0.05, 0.070, 1.0),
        (0.30, 0.05, -0.05, 0.080, 1.0),
        (-0.14, 0.28, -0.02, 0.065, 0.9),
        (-0.16, -0.25, 0.08, 0.090, 0.8),
        (0.12, -0.05, 0.30, 0.050, 1.0),
        (0.42, 0.24, 0.02, 0.045, 1.0),
        (-0.02, 0.10, -0.30, 0.060, 0.7),
    ],
    dtype=np.float64,
)
# A domain reaches this many sigmas out when measuring the particle's longest dimension.
_EXTENT_SIGMAS = 2.0
_DIAMETER_FRACTION_OF_BOX = 0.65


@dataclass
class ParticleBatch:
    """Simulated picks, particles and junk, with the truth of each (view, angle, shift, kind)."""
    images: np.ndarray  # (n, box, box) float32, CTF applied, noise added, Warp-normalised
    view: np.ndarray  # (n,) int, index into Phantom.views; -1 for junk
    psi: np.ndarray  # (n,) degrees, uniform in [0, 360); 0 for junk
    shift: np.ndarray  # (n, 2) Å (x, y), uniform in a disc of radius max_shift; 0 for junk
    kind: np.ndarray  # (n,) str: "particle" or one of live2d.junk.JUNK_KINDS
    # (n, 3) ZYZ Euler angles (rot, tilt, psi), degrees, of an atomic model's picks
    # (live2d.model_projection); None for the phantom's discrete views
    euler: np.ndarray | None = None


class Phantom:
    """An asymmetric 3D phantom and ``n_views`` of its projections at ``box`` px.

    Attributes
    ----------
    diameter: float
        Longest dimension of the particle in Å, about 0.65 × box × pixel_size.
    views: np.ndarray
        ``(n_views, box, box)`` float32 clean projections, centred on the centre of mass, with
        positive (white) protein density.
    """

    def __init__(self, box: int, pixel_size: float, n_views: int = 12, seed: int = 0):
        if box < 16 or box % 2:
            raise ValueError(f"box must be an even number of pixels >= 16, not {box}")
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, not {n_views}")
        self.box = box
        self.pixel_size = float(pixel_size)
        self.diameter = _DIAMETER_FRACTION_OF_BOX * box * self.pixel_size
        centres, sigmas, densities = _scaled_domains(self.diameter)
        rotations = _view_rotations(n_views, np.random.default_rng(seed))
        self.views = np.stack(
            [_project(centres @ r.T, sigmas, densities, box, self.pixel_size) for r in rotations]
        ).astype(np.float32)

    def particles(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        snr: float,
        defocus_u: float,
        defocus_v: float,
        defocus_angle: float,
        voltage: float = 300.0,
        cs: float = 2.7,
        amplitude_contrast: float = 0.07,
        max_shift: float = 0.0,
        junk: float = 0.0,
        junk_kinds: Sequence[str] = JUNK_KINDS,
    ) -> ParticleBatch:
        """``n`` noisy picks of random views, angles and shifts, as Warp would export them.

        ``snr`` is the variance of the CTF-modulated signal inside the particle's circle
        (diameter/2) over the noise variance. Defoci are in Å, the astigmatism angle in degrees
        from the x axis (cisTEM/Warp convention), ``max_shift`` in Å. A fraction ``junk`` of the
        picks are junk (:mod:`live2d.junk`, ``junk_kinds`` equally likely), imaged with the same
        CTF and noise; with ``junk=0`` the random draws are those of a session without junk.
        """
        view = rng.integers(0, len(self.views), size=n)
        psi = rng.uniform(0.0, 360.0, size=n)
        shift = draw_shifts(n, rng, max_shift)
        kind = np.full(n, PARTICLE, dtype=object)
        if junk > 0:
            junk_rng = np.random.default_rng(rng.integers(2**63))
            is_junk = junk_rng.uniform(size=n) < junk
            kind[is_junk] = junk_rng.choice(list(junk_kinds), size=int(is_junk.sum()))
            view[is_junk], psi[is_junk], shift[is_junk] = -1, 0.0, 0.0
        true = kind == PARTICLE
        clean = np.zeros((n, self.box, self.box), dtype=np.float32)
        clean[true] = render_clean(self.views, view[true], psi[true], shift[true],
                                   self.pixel_size)
        for i in np.flatnonzero(~true):
            clean[i] = render_junk(kind[i], self.views, junk_rng, self._render_one)
        images = microscope_images(clean, true, rng, pixel_size=self.pixel_size,
                                   diameter=self.diameter, snr=snr, defocus_u=defocus_u,
                                   defocus_v=defocus_v, defocus_angle=defocus_angle,
                                   voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
        return ParticleBatch(images, view.astype(np.int64), psi, shift, kind)

    def _render_one(self, view: int, psi: float, shift_px: np.ndarray) -> np.ndarray:
        return render_clean(self.views, np.array([view]), np.array([psi]),
                            np.asarray(shift_px, dtype=np.float64)[None] * self.pixel_size,
                            self.pixel_size)[0]


def draw_shifts(n: int, rng: np.random.Generator, max_shift: float) -> np.ndarray:
    """``(n, 2)`` shifts (x, y), uniform in a disc of radius ``max_shift``."""
    radius = max_shift * np.sqrt(rng.uniform(size=n))
    direction = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return np.stack([radius * np.cos(direction), radius * np.sin(direction)], axis=1)


def microscope_images(
    clean: np.ndarray, true: np.ndarray, rng: np.random.Generator, *, pixel_size: float,
    diameter: float, snr: float, defocus_u: float, defocus_v: float, defocus_angle: float,
    voltage: float, cs: float, amplitude_contrast: float,
) -> np.ndarray:
    """Noise-free picks ``clean`` ``(n, box, box)`` as the microscope and Warp give them: the
    CTF, white noise at ``snr`` (the variance of the true particles' (``true``) CTF-modulated
    signal inside their circle of ``diameter`` Å over the noise variance), white protein,
    background mean 0 and standard deviation 1. ``rng`` draws the noise."""
    n, box = clean.shape[0], clean.shape[-1]
    signal = _apply_ctf(
        torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32)), pixel_size, defocus_u,
        defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
    )
    inside = _disc(box, diameter / 2.0 / pixel_size)
    # The noise is the micrograph's: set by the particles' signal, not by the junk's.
    signal_variance = float(signal[true][:, inside].var(dim=1).mean()) if true.any() else 0.0
    noise_sigma = np.sqrt(signal_variance / snr) if snr > 0 and signal_variance > 0 else 1.0
    noise = rng.standard_normal((n, box, box), dtype=np.float32)
    images = signal + torch.from_numpy(noise) * noise_sigma
    return _normalise_background(images, ~inside).numpy()


def render_clean(
    views: np.ndarray, view: np.ndarray, psi: np.ndarray, shift: np.ndarray, pixel_size: float
) -> np.ndarray:
    """The noise-free, CTF-free particles ``shift(rotate(views[view], psi), shift)``.

    Parameters
    ----------
    views: np.ndarray
        ``(n_views, box, box)`` clean projections.
    view: np.ndarray
        ``(n,)`` index of each particle's view.
    psi: np.ndarray
        ``(n,)`` counter-clockwise in-plane angle, degrees (x = column, y = row).
    shift: np.ndarray
        ``(n, 2)`` displacement (x, y) in Å applied after the rotation.
    pixel_size: float
        Å per pixel.

    Returns
    -------
    np.ndarray
        ``(n, box, box)`` float32 particles.
    """
    view = np.asarray(view, dtype=np.int64)
    psi = np.asarray(psi, dtype=np.float64)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1, 2)
    n, box = len(view), views.shape[-1]
    out = torch.zeros((n, box, box), dtype=torch.float32)
    for v in np.unique(view):
        members = np.flatnonzero(view == v)
        image = torch.as_tensor(np.asarray(views[v], dtype=np.float32))
        matrices = rotation_matrices_yx(psi[members], box)
        out[members] = affine_transform_image_2d(
            image, matrices[:, None, None], interpolation="bicubic", yx_matrices=True
        )
    shifts_yx = torch.as_tensor(shift[:, ::-1] / pixel_size, dtype=torch.float32)
    if n and bool(shifts_yx.abs().max() > 0):
        out = fourier_shift_image_2d(out, shifts_yx)
    return out.numpy()


def _scaled_domains(diameter: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres, sigmas, densities = _DOMAINS[:, :3], _DOMAINS[:, 3], _DOMAINS[:, 4]
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    reach = _EXTENT_SIGMAS * (sigmas[:, None] + sigmas[None])
    scale = diameter / float((gaps + reach).max())
    masses = densities * sigmas**3
    centres = (centres - (masses[:, None] * centres).sum(0) / masses.sum()) * scale
    return centres, sigmas * scale, densities


def _view_rotations(n_views: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_views, 3, 3)`` rotations whose viewing directions spread evenly over the sphere."""
    index = np.arange(n_views) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / n_views)
    azimuth = np.pi * (1.0 + 5.0**0.5) * index
    global_turn = _random_rotation(rng)
    rotations = []
    for theta, phi in zip(polar, azimuth, strict=True):
        in_plane = rng.uniform(0.0, 2.0 * np.pi)
        rotations.append(_rot_z(in_plane) @ _rot_y(-theta) @ _rot_z(-phi) @ global_turn)
    return np.stack(rotations)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _project(
    centres: np.ndarray, sigmas: np.ndarray, densities: np.ndarray, box: int, pixel_size: float
) -> np.ndarray:
    """Projection along z of the Gaussian domains: each integrates to a 2D Gaussian."""
    axis = (np.arange(box) - box // 2) * pixel_size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    image = np.zeros((box, box))
    for (cx, cy, _), sigma, density in zip(centres, sigmas, densities, strict=True):
        weight = density * sigma * np.sqrt(2.0 * np.pi)
        image += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * sigma**2))
    return image / image.max()


def _apply_ctf(
    images: torch.Tensor, pixel_size: float, defocus_u: float, defocus_v: float,
    defocus_angle: float, voltage: float, cs: float, amplitude_contrast: float,
) -> torch.Tensor:
    """Multiply by the CTF in a twice-padded box, so delocalised signal does not wrap around.

    torch-ctf's CTF is +sin(chi) (positive at low frequency), i.e. minus the standard CTF, which
    is exactly what turns positive density into the white protein of Warp's inverted export.
    """
    n, box = images.shape[0], images.shape[-1]
    padded_box = 2 * box
    start = box // 2
    padded = torch.zeros((n, padded_box, padded_box), dtype=images.dtype)
    padded[:, start:start + box, start:start + box] = images

    def full(value: float) -> torch.Tensor:
        return torch.full((1,), float(value))

    ctf = ctf_2d(full(defocus_u), full(defocus_v), full(defocus_angle), full(voltage), full(cs),
                 full(amplitude_contrast), full(0.0), pixel_size, padded_box)
    spectrum = torch.fft.rfft2(padded) * ctf
    out = torch.fft.irfft2(spectrum, s=(padded_box, padded_box))
    return out[:, start:start + box, start:start + box].contiguous()


def _disc(box: int, radius: float) -> torch.Tensor:
    axis = torch.arange(box) - box // 2
    return (axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2


def _normalise_background(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Background (outside the particle) to mean 0 and standard deviation 1, as Warp does."""
    if int(background.sum()) < 16:
        background = torch.ones_like(background)
    pixels = images[:, background]
    mean = pixels.mean(dim=1)[:, None, None]
    std = pixels.std(dim=1).clamp_min(1e-12)[:, None, None]
    return (images - mean) / std
