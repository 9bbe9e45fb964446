"""Simulated particles of a real protein: projections of an atomic model (PDB or mmCIF) at
uniformly random orientations, a continuum of views, with the per-particle orientation truth.

Each atom is a 3D Gaussian blob weighted by its electrons, so a projection is an exact sum of 2D
Gaussians. An orientation is three ZYZ Euler angles (rot, tilt, psi), the rotation
``R = Rz(psi) · Ry(tilt) · Rz(rot)`` applied to the model's coordinates (centred on their
centre of mass) before projecting along z. ``psi`` is then exactly the in-plane angle of
:func:`live2d.phantom.render_clean` (counter-clockwise, +x towards +y with x the column and y
the row index), and shifts are applied the same way after it, so the picks of a
:class:`ModelPhantom` follow the phantom's geometric convention and go through the same
microscope (:func:`live2d.phantom.microscope_images`).
"""

from __future__ import annotations

import bz2
import gzip
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch_fourier_shift import fourier_shift_image_2d

from live2d.junk import JUNK_KINDS, PARTICLE, render_junk
from live2d.phantom import ParticleBatch, draw_shifts, microscope_images

# Electrons per atom, the weight of its blob; elements not listed count as carbon.
_ELECTRONS = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "MG": 12, "NA": 11, "CL": 17,
              "K": 19, "CA": 20, "ZN": 30, "FE": 26, "MN": 25}
# An atom's blob: about an atom's size, but never narrower than the pixels can carry, so that a
# coarse pixel does not alias the atoms' high frequencies into the low-resolution signal.
_ATOM_SIGMA = 1.0  # Å
_SIGMA_PER_PIXEL = 0.6
_BLOB_REACH = 3.5  # sigmas: where a blob is cut off
_IMAGES_PER_BATCH = 32  # projections computed at once (memory: batch × atoms × reach² floats)


def read_atoms(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 3)`` coordinates (Å) and ``(n,)`` electron counts of a PDB (``.pdb``, optionally
    ``.bz2``/``.gz`` compressed) or mmCIF (``.cif``) model's atoms, first model only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no atomic model at {path}")
    name = path.name.lower().removesuffix(".bz2").removesuffix(".gz")
    if name.endswith((".cif", ".mmcif")):
        return _read_mmcif(path)
    opener = bz2.open if path.name.lower().endswith(".bz2") else (
        gzip.open if path.name.lower().endswith(".gz") else open)
    coordinates, electrons = [], []
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM  ", "HETATM")):
                continue
            try:
                coordinates.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
            except ValueError as error:
                raise ValueError(f"{path}: unreadable atom line {line.rstrip()!r}") from error
            element = line[76:78].strip().upper() or line[12:14].strip().upper()
            electrons.append(_ELECTRONS.get(element, 6))
    if not coordinates:
        raise ValueError(f"{path} holds no ATOM or HETATM records: not a PDB model")
    return np.array(coordinates, dtype=np.float64), np.array(electrons, dtype=np.float64)


def _read_mmcif(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from Bio.PDB import MMCIFParser  # only mmCIF needs it

    structure = MMCIFParser(QUIET=True).get_structure("model", str(path))
    atoms = list(next(iter(structure)).get_atoms())
    if not atoms:
        raise ValueError(f"{path} holds no atoms: not an mmCIF model")
    return (np.array([a.coord for a in atoms], dtype=np.float64),
            np.array([_ELECTRONS.get(a.element.upper(), 6) for a in atoms], dtype=np.float64))


def euler_matrices(euler: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` rotations ``Rz(psi) · Ry(tilt) · Rz(rot)`` of ``(n, 3)`` ZYZ Euler angles
    (rot, tilt, psi) in degrees."""
    rot, tilt, psi = np.deg2rad(np.asarray(euler, dtype=np.float64).reshape(-1, 3)).T
    return _rz(psi) @ _ry(tilt) @ _rz(rot)


def viewing_directions(euler: np.ndarray) -> np.ndarray:
    """``(n, 3)`` unit vectors, in the model's frame, along which each orientation projects."""
    return euler_matrices(euler)[:, 2, :]  # R^T e_z


def random_orientations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` Euler angles (rot, tilt, psi), degrees, uniform over all rotations."""
    rot = rng.uniform(0.0, 360.0, size=n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, size=n)))
    psi = rng.uniform(0.0, 360.0, size=n)
    return np.stack([rot, tilt, psi], axis=1)


def _rz(angle: np.ndarray) -> np.ndarray:
    c, s, zero, one = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1),
                     np.stack([zero, zero, one], -1)], -2)


def _ry(angle: np.ndarray) -> np.ndarray:
    c, s, zero, one = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1),
                     np.stack([-s, zero, c], -1)], -2)


class ModelPhantom:
    """An atomic model, its projections at ``box`` px, and noisy picks of it at random
    orientations: the counterpart of :class:`live2d.phantom.Phantom` for a real protein.

    Attributes
    ----------
    diameter: float
        The model's largest extent through its centre of mass, Å (twice its farthest atom).
    views: np.ndarray
        ``(n_views, box, box)`` projections at ``n_views`` fixed random orientations
        (:attr:`view_euler`): the images aggregates of junk are made of, in the units of every
        projection (the brightest pixel of these views is 1).
    """

    def __init__(self, path: Path, box: int, pixel_size: float, n_views: int = 12,
                 seed: int = 0):
        if box < 16 or box % 2:
            raise ValueError(f"box must be an even number of pixels >= 16, not {box}")
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, not {n_views}")
        coordinates, electrons = read_atoms(path)
        self.box = box
        self.pixel_size = float(pixel_size)
        self.coordinates = coordinates - (electrons[:, None] * coordinates).sum(0) / electrons.sum()
        self.electrons = electrons
        self.diameter = 2.0 * float(np.linalg.norm(self.coordinates, axis=1).max())
        if self.diameter > box * self.pixel_size:
            raise ValueError(f"the model ({self.diameter:.0f} Å across) does not fit a box of "
                             f"{box} px at {self.pixel_size:g} Å/px: use a larger box or pixel")
        self.sigma = max(_ATOM_SIGMA, _SIGMA_PER_PIXEL * self.pixel_size)
        self.view_euler = random_orientations(n_views, np.random.default_rng(seed))
        self._scale = 1.0
        views = self.project(self.view_euler)
        self._scale = 1.0 / float(views.max())
        self.views = views * self._scale

    def project(self, euler: np.ndarray) -> np.ndarray:
        """``(n, box, box)`` float32 projections of the model at ``(n, 3)`` Euler angles, centred
        on its centre of mass at pixel (box//2, box//2)."""
        rotations = torch.from_numpy(euler_matrices(euler)).float()
        atoms = torch.from_numpy(self.coordinates).float()
        weights = torch.from_numpy(self.electrons).float() * self._scale
        reach = math.ceil(_BLOB_REACH * self.sigma / self.pixel_size)
        offsets = torch.arange(-reach, reach + 1)
        # A canvas wider than the box by a blob's reach: no blob falls off its edges.
        box, canvas = self.box, self.box + 2 * reach
        centre = self.box // 2 + reach
        out = torch.zeros((len(rotations), canvas * canvas), dtype=torch.float32)
        for start in range(0, len(rotations), _IMAGES_PER_BATCH):
            batch = rotations[start:start + _IMAGES_PER_BATCH]
            turned = torch.einsum("bij,nj->bni", batch, atoms)[..., :2] / self.pixel_size
            # Each blob is a column profile times a row profile over the few pixels it
            # reaches, added into its image: exact to exp(-reach²/2) of its peak.
            nearest = torch.round(turned).long()
            pixels = nearest[..., None] + offsets  # (b, n, 2, 2·reach + 1)
            profile = torch.exp(-((pixels - turned[..., None]) * self.pixel_size) ** 2
                                / (2 * self.sigma**2))
            values = (weights[None, :, None, None] * profile[:, :, 1, :, None]
                      * profile[:, :, 0, None, :])
            image = torch.arange(start, start + len(batch))[:, None, None, None]
            index = (image * canvas * canvas + (pixels[:, :, 1, :, None] + centre) * canvas
                     + pixels[:, :, 0, None, :] + centre)
            out.view(-1).index_add_(0, index.flatten(), values.flatten())
        out = out.view(-1, canvas, canvas)[:, reach:reach + box, reach:reach + box]
        return out.contiguous().numpy()

    def render(self, euler: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The noise-free, CTF-free particles at ``(n, 3)`` Euler angles, moved by ``(n, 2)``
        shifts (x, y) in Å: what :func:`live2d.phantom.render_clean` gives for a view."""
        images = torch.from_numpy(self.project(euler))
        shifts_yx = torch.as_tensor(np.asarray(shift, dtype=np.float64).reshape(-1, 2)[:, ::-1]
                                    / self.pixel_size, dtype=torch.float32)
        if len(images) and bool(shifts_yx.abs().max() > 0):
            images = fourier_shift_image_2d(images, shifts_yx)
        return images.numpy()

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
        """``n`` noisy picks at uniformly random orientations, as Warp would export them; the
        arguments are those of :meth:`live2d.phantom.Phantom.particles`. ``euler`` holds each
        pick's orientation (zeros for junk), ``view`` is 0 for particles and -1 for junk."""
        euler = random_orientations(n, rng)
        shift = draw_shifts(n, rng, max_shift)
        kind = np.full(n, PARTICLE, dtype=object)
        junk_rng = np.random.default_rng(rng.integers(2**63))
        if junk > 0:
            is_junk = junk_rng.uniform(size=n) < junk
            kind[is_junk] = junk_rng.choice(list(junk_kinds), size=int(is_junk.sum()))
            euler[is_junk], shift[is_junk] = 0.0, 0.0
        true = kind == PARTICLE
        clean = np.zeros((n, self.box, self.box), dtype=np.float32)
        clean[true] = self.render(euler[true], shift[true])
        for i in np.flatnonzero(~true):
            clean[i] = render_junk(kind[i], self.views, junk_rng, self._render_one)
        images = microscope_images(clean, true, rng, pixel_size=self.pixel_size,
                                   diameter=self.diameter, snr=snr, defocus_u=defocus_u,
                                   defocus_v=defocus_v, defocus_angle=defocus_angle,
                                   voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
        view = np.where(true, 0, -1).astype(np.int64)
        return ParticleBatch(images, view, euler[:, 2].copy(), shift, kind, euler=euler)

    def _render_one(self, view: int, psi: float, shift_px: np.ndarray) -> np.ndarray:
        rot, tilt, _ = self.view_euler[view]
        return self.render(np.array([[rot, tilt, psi]]),
                           np.asarray(shift_px, dtype=np.float64)[None] * self.pixel_size)[0]
