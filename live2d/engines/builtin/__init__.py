"""Live2D's built-in 2D classification engine: maximum likelihood in PyTorch, CPU or CUDA.

One cycle follows the semantics of cisTEM's refine2d (../shared/cistem-interface.md):

1. Particles are normalised (background mean 0, s.d. 1), turned white-protein, cropped to the box
   that the mask and search range need, and Fourier-cropped to the high-resolution limit, so the
   early low-resolution cycles are cheap.
2. A noise power spectrum is estimated from the particles' backgrounds.
3. The classes are turned once per cycle by every angle of the psi grid (random offset per
   cycle) into a bank of reference spectra ("frames"). Every particle is scored against every
   frame at every translation within the search range at once, with its own CTF and whitened by
   the noise spectrum: log-likelihoods, scaled by the smoothing factor (inverse temperature) and
   a Gaussian prior on the shift, give weights over (class, angle, shift). The translations come
   from dense matrix products (:class:`~live2d.engines.builtin.shifts.ShiftCorrelator`), or, for
   the few frames a particle keeps after a half-resolution pass over all of them (working boxes
   >= 8 px), from FFTs or, from 16 px on, from matrix products at the search's translations only
   (:class:`~live2d.engines.builtin.shifts.PairShifts`). As in refine2d, each particle's previous
   best match (previous class, psi and shift) is scored too and reported when it beats the grid,
   so a coarse or re-offset grid does not throw away a finer earlier alignment; the class sums
   come from the grid's weights.
4. Class sums of CTF-weighted, aligned particles and of CTF² form Wiener-style averages, masked,
   band-limited and optionally re-centred and auto-masked. Classes left with (almost) no weight
   are re-seeded from the particles that fit worst.

Conventions, the same as cisTEM's refine2d (so either engine continues the other's cycles) and
:mod:`live2d.imaging`'s: a particle P with (PSI, SHX, SHY) matches its class average A as
``A ≈ rotate(shift(P, (SHX, SHY)), PSI)`` (rotate: counter-clockwise by PSI degrees about pixel
(box//2, box//2); shift: by (SHX, SHY) Å towards higher column/row indices), so the reported
shift is minus the particle's displacement. Unused particles (fraction < 1, or excluded for blank
edges) keep their row with the class negated and CHANGE 0. Class averages have protein white.

Memory: particles stream from the memory-mapped stack in batches of ``batch_size``; what a cycle
holds is the frame bank and sums (K × angles × working box²) plus per-batch arrays (batch × frames
× translations), independent of the number of particles (apart from 8 numbers per particle for
the star file): about 0.2 GB over PyTorch's own for K = 50, 8 Å, 128 px, batch 32. On the CPU
``threads`` batches are scored at once, each on a thread of its own with single-threaded PyTorch,
and up to 2 × ``threads`` batches wait to be added in order: the per-batch arrays times that.

The modules, one concept each:

- :mod:`~live2d.engines.builtin.geometry`: a cycle's boxes, angle grid, translations and bands
  (step 1's crops).
- :mod:`~live2d.engines.builtin.search`: the reference bank, noise model and scoring (steps 2-3),
  with :mod:`~live2d.engines.builtin.shifts` for the translations as matrix products.
- :mod:`~live2d.engines.builtin.averages`: class sums, their merge and the averages (step 4).
- :mod:`~live2d.engines.builtin.io`: reading the star table, stack and classes; writing them.
- :mod:`~live2d.engines.builtin.engine`: :class:`BuiltinEngine` and its chunks of batches, which
  run in this process or on a cluster's workers.
- :mod:`~live2d.engines.builtin.workers`: a cycle's CPU work shared out over threads, batch by
  batch, committed in order.
"""

from live2d.engines.builtin.engine import BuiltinEngine

__all__ = ["BuiltinEngine"]
