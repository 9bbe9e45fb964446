"""Cross-correlations at every translation of a small set, as dense matrix products.

Without a half-resolution pass every particle meets every (class, angle) frame, and for the small
working boxes of the early cycles two matrix products are cheaper than one inverse FFT per
(particle, reference) pair. :class:`ShiftCorrelator` also gives the adjoint, which adds the
particles back into the frames' sums, moved by their weighted translations.
"""

from __future__ import annotations

import math

import torch


class ShiftCorrelator:
    """Cross-correlations of particles with a fixed bank of reference spectra at every integer
    translation of a small set, as two dense matrix products instead of one inverse FFT per
    (particle, reference) pair.

    ``c[b, f, t] = Σ_k P_b(k) conj(A_f(k)) exp(2πi k·t / n)`` over the full plane equals
    ``Re Σ_kx w(kx) exp(2πi kx·tx / n) Σ_ky conj(A_f(ky, kx)) P_b(ky, kx) exp(2πi ky·ty / n)``
    over the rfft2 half plane (w = 1 on the kx = 0 and Nyquist columns, 2 elsewhere). The inner
    sum is one batched matmul per kx column (references × frequencies @ frequencies ×
    (particles · ty)), the outer one a matmul over kx. Only the translations inside the search
    square are evaluated: for working boxes up to ~32 px this was 3-6x faster than pocketfft's
    batched irfft2 on 2 CPU cores (the products run at BLAS speed; the FFTs of tiny boxes don't).
    """

    def __init__(self, references: torch.Tensor, shifts: torch.Tensor) -> None:
        # references (F, n, n // 2 + 1) complex; shifts (T, 2) integer (dy, dx)
        n, half = references.shape[-2:]
        device = references.device
        self.size, self.frames = n, len(references)
        reach, steps, ky, kx, weight = _inverse_dft_axes(n, shifts, device)
        self.steps = len(steps)
        unit = torch.ones((), device=device)
        self.rows = torch.polar(unit.expand(n, len(steps)),
                                2 * math.pi * ky[:, None] * steps[None, :] / n)  # (n, Ty)
        self.phases = torch.polar(unit.expand(len(steps), half),
                                  2 * math.pi * steps[:, None] * kx[None, :] / n)  # (Tx, half)
        self.columns = self.phases * weight
        # Complex products as real ones, so that the big intermediate comes out with real and
        # imaginary parts in separate rows: conj(A)·S = [[Ar, Ai], [-Ai, Ar]] @ [Sr; Si].
        ar, ai = (part.permute(2, 0, 1) for part in (references.real, references.imag))
        self.references = torch.cat([torch.cat([ar, ai], dim=2),
                                     torch.cat([-ai, ar], dim=2)], dim=1).contiguous()
        # (half, 2F, 2n); the outer sum takes Re(columns · inner) = cr·Ir - ci·Ii per kx
        self.outer = torch.stack([self.columns.real, -self.columns.imag], dim=2).reshape(
            len(steps), 2 * half).contiguous()
        inside = torch.zeros((len(steps), len(steps)), dtype=torch.bool, device=device)
        inside[shifts[:, 0] + reach, shifts[:, 1] + reach] = True  # (ty, tx)
        # -inf outside the search disc, (ty, tx)
        self.outside_bias = torch.where(inside, 0.0, -torch.inf)
        self.order = ((shifts[:, 0] + reach) * self.steps + shifts[:, 1] + reach).long()

    def correlate(self, particles: torch.Tensor) -> torch.Tensor:
        """``(tx, F, B, ty)`` correlations of ``particles`` ``(B, n, n // 2 + 1)``."""
        b, n, half = particles.shape
        t = self.steps
        shifted = particles.permute(2, 1, 0)[..., None] * self.rows[None, :, None, :]
        shifted = shifted.reshape(half, n, b * t)
        stacked = torch.cat([shifted.real, shifted.imag], dim=1)  # (half, 2n, B·ty)
        inner = torch.bmm(self.references, stacked)  # (half, [Re; Im] × F, B·ty)
        # The sum over kx as one wide product, (tx, 2·half) @ (2·half, F·B·ty): with tx last
        # instead, the long side was the transposed operand, and the product took 5x longer
        # (at 8 Å, K = 50 it was the biggest step of a cycle).
        return (self.outer @ inner.view(2 * half, -1)).view(t, self.frames, b, t)

    def scatter_back(self, weights: torch.Tensor, particles: torch.Tensor) -> torch.Tensor:
        """``(F, n, n // 2 + 1)``: ``Σ_b particles_b · Σ_t weights[b, f, t] exp(2πi k·t / n)``,
        each particle moved back by its weighted translations (the adjoint of ``at_shifts``)."""
        b, n, half = particles.shape
        t = self.steps
        square = torch.zeros((b, self.frames, t * t), device=weights.device)
        square[..., self.order] = weights
        by_column = square.view(b, self.frames, t, t).to(self.phases.dtype) @ self.phases
        by_column = by_column.permute(3, 1, 0, 2).reshape(half, self.frames, b * t)
        shifted = particles.permute(2, 1, 0)[..., None] * self.rows[None, :, None, :]
        summed = torch.bmm(by_column, shifted.reshape(half, n, b * t).transpose(1, 2))
        return summed.permute(1, 2, 0)  # (F, n, half)

    def at_shifts(self, particles: torch.Tensor) -> torch.Tensor:
        """``(B, F, T)`` correlations at the translations of the set, in its order."""
        corr = self.correlate(particles).permute(2, 1, 3, 0)  # (B, F, ty, tx)
        return corr.reshape(len(particles), self.frames, -1)[..., self.order]

    def best(self, particles: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` best ``correlation - norms`` over the translations of the set."""
        corr = self.correlate(particles)
        corr += self.outside_bias.T[:, None, None, :]
        return corr.amax(dim=0).amax(dim=-1).T - norms


class PairShifts:
    """Cross-correlations of particles, each with its own references, at every translation of
    a small set: the inverse DFT evaluated at those translations only, as two matrix products.
    The inverse FFT computes every pixel of the working box, where an 8 Å search wants about a
    seventh of them; on one CPU thread this took half the FFT's time from 16-px boxes on (at
    8 Å, K = 50: 59 -> 34 ms per batch of 32 particles × 60 references)."""

    def __init__(self, size: int, shifts: torch.Tensor) -> None:
        # shifts (T, 2) integer (dy, dx); the same sums as ShiftCorrelator's (see there)
        reach, steps, ky, kx, weight = _inverse_dft_axes(size, shifts, shifts.device)
        half = len(kx)
        unit = torch.ones((), device=shifts.device)
        self.rows = torch.polar(unit.expand(len(steps), size),
                                2 * math.pi * steps[:, None] * ky[None, :] / size)  # (Ty, n)
        columns = torch.polar(unit.expand(half, len(steps)),
                              2 * math.pi * kx[:, None] * steps[None, :] / size) * weight[:, None]
        # Re(Y · C) over kx as one real product of Y's (re, im) pairs, as view_as_real lays
        # them out, with the rows (Re C, -Im C) interleaved alike: (2·half, Tx)
        self.columns = torch.stack([columns.real, -columns.imag], dim=1).reshape(2 * half, -1)
        self.order = ((shifts[:, 0] + reach) * len(steps) + shifts[:, 1] + reach).long()

    def at_shifts(self, cross: torch.Tensor) -> torch.Tensor:
        """``(B, M, T)``: ``Σ_k cross[b, m, k] exp(2πi k·t / n)`` over the full plane (the
        inverse FFT's unnormalised value) of ``cross`` ``(B, M, n, n // 2 + 1)``, products of
        rfft2 spectra of real images, at the translations of the set, in its order."""
        by_row = self.rows @ cross  # (B, M, Ty, half)
        return (torch.view_as_real(by_row).flatten(-2) @ self.columns).flatten(2)[..., self.order]


def _inverse_dft_axes(size: int, shifts: torch.Tensor, device: torch.device
                      ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What an inverse DFT of an rfft2 spectrum of ``size`` evaluated at ``shifts`` ((T, 2)
    integer (dy, dx)) is made of: the reach of the shifts, the translation steps along an
    axis (-reach..reach), the ky and kx frequencies, and each kx column's weight in the full
    plane (the half-spectrum counts its inner columns twice), on ``device``."""
    half = size // 2 + 1
    reach = int(shifts.abs().max()) if len(shifts) else 0
    steps = torch.arange(-reach, reach + 1, device=device, dtype=torch.float32)
    ky = torch.fft.fftfreq(size, device=device) * size
    kx = torch.arange(half, device=device, dtype=torch.float32)
    weight = torch.full((half,), 2.0, device=device)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    return reach, steps, ky, kx, weight
