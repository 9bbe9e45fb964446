"""Image conventions shared by the simulator and the built-in engine, defined once.

* Images are ``(..., h, w)``; x is the column (last) axis, y the row axis.
* An in-plane angle turns +x towards +y (counter-clockwise) about pixel ``(h // 2, w // 2)``,
  the centre of an fftshifted spectrum.
* The CTF is torch-ctf's ``+sin(chi)`` form, positive at low frequency: multiplying positive
  density by it gives the white protein of Warp's inverted export.
* Defocus U/V in Å and the astigmatism angle in degrees, as Warp and cisTEM store them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_ctf import calculate_ctf_2d


def rotation_matrices_yx(psi: np.ndarray | torch.Tensor, box: int) -> torch.Tensor:
    """``(n, 3, 3)`` maps from output to input (y, x) pixel positions for a CCW turn by ``psi``
    degrees (the form torch-transform-image samples with)."""
    angles = psi.double() if isinstance(psi, torch.Tensor) else \
        torch.from_numpy(np.array(psi, dtype=np.float64))  # a copy: read-only views warn
    theta = torch.deg2rad(angles.reshape(-1))
    cos, sin = torch.cos(theta), torch.sin(theta)
    centre = float(box // 2)
    matrices = torch.zeros((len(theta), 3, 3), dtype=torch.float64)
    # input = R(-psi) (output - centre) + centre, for (y, x) column vectors
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
    matrices[:, 0, 2] = centre - (cos * centre - sin * centre)
    matrices[:, 1, 2] = centre - (sin * centre + cos * centre)
    matrices[:, 2, 2] = 1.0
    return matrices.float()


def rotate(images: torch.Tensor, psi: np.ndarray | torch.Tensor,
           interpolation: str = "bilinear") -> torch.Tensor:
    """``(n, h, w)`` images each turned counter-clockwise by its own ``psi`` (degrees)."""
    _, h, w = images.shape
    matrices = rotation_matrices_yx(psi, w).to(images.device)
    y = torch.arange(h, dtype=torch.float32, device=images.device)[None, :, None]
    x = torch.arange(w, dtype=torch.float32, device=images.device)[None, None, :]

    def source(axis: int) -> torch.Tensor:  # (n, h, w): input y (0) or x (1) per output pixel
        row = matrices[:, axis, :, None, None]
        return row[:, 0] * y + row[:, 1] * x + row[:, 2]

    # Broadcast products, not a batched (h·w, 3) @ (3, 3) product: the same numbers, and on
    # CPU 2-3x faster (a matrix product with an inner size of 3 is mostly overhead).
    grid = torch.stack([2.0 * source(1) / (w - 1) - 1.0, 2.0 * source(0) / (h - 1) - 1.0],
                       dim=-1)
    turned = torch.nn.functional.grid_sample(images[:, None], grid, mode=interpolation,
                                             padding_mode="zeros", align_corners=True)
    return turned[:, 0]


def shift_phases(dy: torch.Tensor, dx: torch.Tensor, box: int, sign: float = -1.0
                 ) -> torch.Tensor:
    """``(n, box, box // 2 + 1)``: ``exp(sign · 2πi (fy·dy + fx·dx))`` on an rfft2 half plane,
    the factor that shifts each image by its own ``(dy, dx)`` pixels (``sign`` -1: the image
    moves by +d). Made as a column times a row per image: the same numbers (to float
    rounding) for a tenth of a whole plane of complex exponentials."""
    fy = torch.fft.fftfreq(box, device=dy.device)[None, :, None]
    fx = torch.fft.rfftfreq(box, device=dy.device)[None, None, :]
    turn = sign * 2j * np.pi
    return torch.exp(turn * fy * dy[:, None, None]) * torch.exp(turn * fx * dx[:, None, None])


def ctf_2d(
    defocus_u: torch.Tensor, defocus_v: torch.Tensor, angle: torch.Tensor,
    voltage: torch.Tensor, cs: torch.Tensor, amplitude_contrast: torch.Tensor,
    phase_shift: torch.Tensor, pixel_size: float, box: int,
) -> torch.Tensor:
    """``(n, box, box // 2 + 1)`` CTFs on an rfft2 half plane (DC at [0, 0]); all parameters
    ``(n,)`` tensors on the device wanted, defocus in Å, angles in degrees."""
    astigmatism = (defocus_u - defocus_v) / 2.0
    angle = torch.where(astigmatism >= 0, angle, angle + 90.0)
    return calculate_ctf_2d(
        defocus=(defocus_u + defocus_v) / 2.0 / 1e4,
        astigmatism=astigmatism.abs() / 1e4,
        astigmatism_angle=angle,
        voltage=voltage,
        spherical_aberration=cs,
        amplitude_contrast=amplitude_contrast,
        phase_shift=phase_shift,
        pixel_size=pixel_size,
        image_shape=(box, box),
        rfft=True,
        fftshift=False,
    ).float()


def soft_disc(box: int, radius: float, falloff: float = 3.0,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """``(box, box)`` 1 inside ``radius`` px of the centre, a cosine edge ``falloff`` px wide."""
    y, x = torch.meshgrid(torch.arange(box, device=device, dtype=torch.float32) - box // 2,
                          torch.arange(box, device=device, dtype=torch.float32) - box // 2,
                          indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    edge = ((r - radius) / max(falloff, 1e-6)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(torch.pi * edge))


def blank_edges(images: np.ndarray) -> np.ndarray:
    """Per image of a (N, Y, X) array: True where an edge is blank, as when a particle was cut
    out past the micrograph's border and padded, either with a constant (an outermost line is
    flat) or by repeating the last real line (an outermost line equals the one inside it)."""
    images = np.asarray(images, dtype=np.float32)
    tolerance = 1e-5 * (images.reshape(len(images), -1).std(axis=1) + 1e-20)
    blank = np.zeros(len(images), dtype=bool)
    sides = ((images[:, 0, :], images[:, 1, :]), (images[:, -1, :], images[:, -2, :]),
             (images[:, :, 0], images[:, :, 1]), (images[:, :, -1], images[:, :, -2]))
    for edge, inside in sides:
        blank |= np.ptp(edge, axis=1) <= tolerance
        blank |= np.abs(edge - inside).max(axis=1) <= tolerance
    return blank


def rotational_similarity(a: np.ndarray, b: np.ndarray, mask_radius_px: float,
                          steps: int = 36) -> np.ndarray:
    """``(len(a), len(b))``: for each pair of averages, the best correlation over in-plane
    rotations of ``b`` (masked, means removed)."""
    a_t = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float32))
    if not len(a_t) or not len(b_t):
        return np.zeros((len(a_t), len(b_t)))
    mask = soft_disc(a_t.shape[-1], mask_radius_px, 3.0)

    def normalised(images: torch.Tensor) -> torch.Tensor:
        images = images * mask
        images = images - images.mean(dim=(1, 2), keepdim=True)
        flat = images.flatten(1)
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

    reference = normalised(a_t)
    best = torch.full((len(a_t), len(b_t)), -1.0)
    for angle in np.arange(steps) * 360.0 / steps:
        turned = normalised(rotate(b_t, np.full(len(b_t), angle)))
        best = torch.maximum(best, reference @ turned.T)
    return best.numpy()
