"""A tiny synthetic atomic model written as PDB, for the tests of live2d.model_projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_model(path: Path, atoms: int = 300, radius: float = 20.0, seed: int = 0) -> Path:
    """``atoms`` random atoms (Å) around the origin, a third of them in an off-centre lump so
    that no view looks like another, as PDB ATOM records; returns ``path``."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0.0, radius / 3.0, (atoms, 3))
    xyz[: atoms // 3] = xyz[: atoms // 3] / 2.0 + (radius / 2.0, radius / 4.0, 0.0)
    elements = rng.choice(["C", "N", "O", "S"], size=atoms, p=[0.6, 0.2, 0.17, 0.03])
    lines = [f"ATOM  {i + 1:5d}  X   ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00"
             f"          {element:>2s}"
             for i, ((x, y, z), element) in enumerate(zip(xyz, elements, strict=True))]
    path.write_text("\n".join(lines) + "\nEND\n")
    return path
