"""A cycle's inputs and outputs: the star table, the particle stack, the class-average stack.

The stack is read batch by batch (:func:`batches`), in file order, with plain reads (never
memory-mapped: see :mod:`live2d.source_images`); each batch is normalised (background mean 0,
s.d. 1) and turned white-protein by :func:`prepare`. The star table that comes out follows
refine2d: used particles get their best match and scores, unused ones (fraction < 1, or excluded
for blank edges) keep their row with the class negated and CHANGE 0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from live2d import cistem_star
from live2d.atomic import replacing
from live2d.engines.base import CycleParams, CycleRequest
from live2d.errors import EngineError
from live2d.mrc import read_images
from live2d.source_images import open_images

CTF_COLUMNS = ["DF1", "DF2", "ANGAST", "VOLT", "Cs", "AmpC", "PSHIFT"]  # ctf_2d's order
# What a cycle finds out per particle, as a classification returns it (one array each).
RESULT_NAMES = ("cls", "psi", "shx", "shy", "occ", "logp", "sigma", "score")


def read_inputs(request: CycleRequest) -> tuple[pd.DataFrame, np.ndarray]:
    """The star table and the particle stack (read only as batches need it)."""
    try:
        table = cistem_star.read_star(request.star_in)
    except (OSError, cistem_star.StarFormatError) as exc:
        raise EngineError(f"built-in engine: cannot read {request.star_in}: {exc}") from None
    try:
        stack = open_images(request.stack)
    except (OSError, ValueError, cistem_star.StarFormatError) as exc:
        raise EngineError(f"built-in engine: cannot read {request.stack}: {exc}") from None
    if len(stack) < len(table):
        raise EngineError(f"{request.star_in} has {len(table)} particles but {request.stack} "
                          f"only {len(stack)}")
    return table, stack


def usable(stack, n: int) -> np.ndarray:
    """Per particle, whether its image can be read: all of them in an MRC stack; with the
    source stacks read in place, not those whose stack changed or vanished since import."""
    return stack.usable(n) if hasattr(stack, "usable") else np.ones(n, dtype=bool)


class SerialReads:
    """A particle stack read by one thread at a time, for the threads that share a cycle's
    work: a store's source stacks keep a cache of open stacks that is not safe for threads,
    and a read is short next to scoring its batch."""

    def __init__(self, stack: np.ndarray) -> None:
        self.stack = stack
        self.shape = stack.shape
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.stack[indices]


def read_classes(path: Path, box: int) -> torch.Tensor:
    """The previous cycle's class averages, which must have the particles' box."""
    data = read_images(path)
    if data.shape[1:] != (box, box):
        raise EngineError(f"{path} holds {data.shape[1]} px classes; the particles are {box} px")
    return torch.from_numpy(data)


def batches(indices: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``indices`` in batches of ``size``, each with how many are done once it is."""
    for start in range(0, len(indices), size):
        batch = indices[start:start + size]
        yield start + len(batch), batch


def prepare(stack: np.ndarray, batch: np.ndarray, params: CycleParams,
            background: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Particles of ``batch`` normalised and with white protein."""
    # Readers give a fresh array (open_images): no copy needed before torch takes it.
    images = torch.from_numpy(np.asarray(stack[np.sort(batch)], dtype=np.float32))
    order = np.argsort(np.argsort(batch))  # stack reads go in file order
    images = images[torch.as_tensor(order)].to(device)  # a copy: changed in place below
    if params.normalize:
        # by index, not by boolean mask, and both moments in one pass: a third of the time
        outside = torch.nonzero(background.to(device).flatten()).flatten()
        std, mean = torch.std_mean(images.flatten(1).index_select(1, outside), dim=1)
        images.sub_(mean[:, None, None]).div_(std.clamp_min(1e-12)[:, None, None])
    return images if params.invert_contrast else images.neg_()


# A batch's star rows: a table, or (cheaper to slice per batch) its columns as arrays.
Rows = pd.DataFrame | Mapping[str, np.ndarray]


def star_column(rows: Rows, name: str, device: torch.device) -> torch.Tensor:
    """A star column of a batch's rows as float32 on ``device`` (copied: the rows may be a
    read-only view)."""
    return torch.as_tensor(np.array(rows[name], dtype=np.float64), dtype=torch.float32,
                           device=device)


def updated_table(table: pd.DataFrame, used: np.ndarray, results: dict[str, np.ndarray],
                  unused: np.ndarray | None = None) -> pd.DataFrame:
    """``table`` with the ``results`` of the ``used`` particles, and ``unused`` (default:
    every other particle) marked unused; any others keep their rows."""
    out = table.copy()
    for column, default in (("OCC", 100.0), ("LogP", 0), ("SIGMA", 10.0), ("SCORE", 0.0),
                            ("CHANGE", 0.0), ("PSI", 0.0), ("SHX", 0.0), ("SHY", 0.0),
                            ("2DCLS", 0)):
        if column not in out:
            out[column] = default
    if unused is None:
        unused = np.setdiff1d(np.arange(len(table)), used)
    out.loc[out.index[unused], "2DCLS"] = -out["2DCLS"].iloc[unused].abs()
    out.loc[out.index[unused], "CHANGE"] = 0.0
    rows = out.index[used]
    previous_score = out.loc[rows, "SCORE"].to_numpy(dtype=float)
    out.loc[rows, "2DCLS"] = results["cls"].astype(np.int64)
    out.loc[rows, "PSI"] = results["psi"]
    out.loc[rows, "SHX"] = results["shx"]
    out.loc[rows, "SHY"] = results["shy"]
    out.loc[rows, "OCC"] = results["occ"]
    out.loc[rows, "LogP"] = np.rint(results["logp"]).astype(np.int64)
    out.loc[rows, "SIGMA"] = results["sigma"]
    out.loc[rows, "SCORE"] = results["score"]
    out.loc[rows, "CHANGE"] = results["score"] - previous_score
    return out


def write_classes(path: Path, classes: torch.Tensor, pixel_size: float) -> None:
    """The class-average stack, replaced whole (a crash leaves the old file or the new one)."""
    with replacing(path) as scratch, mrcfile.new(scratch, overwrite=True) as mrc:
        mrc.set_data(classes.detach().cpu().numpy().astype(np.float32))
        mrc.voxel_size = pixel_size
