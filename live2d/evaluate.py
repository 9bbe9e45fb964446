"""Scores of a classification against the truth of a simulated session (issue 3's measures).

* homogeneity: each particle's true noise-free image, put through the reported alignment
  (``rotate(shift(P, (SHX, SHY)), PSI)``), low-passed to 8 Å, masked, its rotational average
  removed, correlated with its class's mean of such images; averaged over particles. 1 = every
  class one view, perfectly aligned; random assignment gives about 0.1.
* fidelity: correlation (15 Å low-pass, masked, rotational average removed) of each class average
  with its class's mean true image, weighted by class population.

On a session with junk picks both count true particles only (a class's mean is that of its true
particles), and :func:`best_selection` says how well the classes separate particles from junk.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch
from torch_fourier_shift import fourier_shift_image_2d

from live2d import cistem_star
from live2d.history import particle_table, read_history
from live2d.imaging import rotate, soft_disc
from live2d.output_folder import STORE_TABLE
from live2d.phantom import render_clean


@dataclass(frozen=True)
class Scores:
    """How well a classification matches the simulation's truth: class homogeneity, fidelity to
    the true views, and how many classes hold particles."""
    homogeneity: float
    fidelity: float
    classes_used: int


@dataclass(frozen=True)
class Selection:
    """The best selection of classes the truth allows: every class whose members are mostly
    true particles."""
    classes: list[int]  # 1-based class numbers
    precision: float  # of the selected picks, the share that are true particles
    recall: float  # of the true particles classified, the share selected


def best_selection(labels: np.ndarray, true_particle: np.ndarray) -> Selection:
    """``labels``: 1-based class of each classified pick; ``true_particle``: which are not junk."""
    labels = np.asarray(labels)
    true_particle = np.asarray(true_particle, dtype=bool)
    chosen = [int(k) for k in np.unique(labels) if true_particle[labels == k].mean() > 0.5]
    return selection_of(chosen, labels, true_particle)


def selection_of(chosen: list[int], labels: np.ndarray, true_particle: np.ndarray) -> Selection:
    """Precision and recall of true particles when the classes ``chosen`` are selected."""
    return particles_of(chosen, np.isin(np.asarray(labels), chosen), true_particle)


def particles_of(chosen: list[int], selected: np.ndarray, true_particle: np.ndarray) -> Selection:
    """Precision and recall of true particles when the picks ``selected`` are (those of the
    classes ``chosen``, or fewer: a curation's)."""
    selected = np.asarray(selected, dtype=bool)
    true_particle = np.asarray(true_particle, dtype=bool)
    precision = float(true_particle[selected].mean()) if selected.any() else 0.0
    recall = float(selected[true_particle].mean()) if true_particle.any() else 0.0
    return Selection(chosen, precision, recall)


def score(views: np.ndarray, view: np.ndarray, psi_true: np.ndarray, shift_true: np.ndarray,
          table, classes: np.ndarray, pixel_size: float, mask_radius: float) -> Scores:
    """``table``: the engine's cisTEM star rows for these particles (2DCLS, PSI, SHX, SHY).
    Picks whose ``view`` is negative are junk and not scored."""
    best = table["2DCLS"].to_numpy(dtype=np.int64)
    used = (best > 0) & (np.asarray(view) >= 0)
    aligned = aligned_truth(views, view[used], psi_true[used], shift_true[used],
                            table[used], pixel_size)
    box = views.shape[-1]
    mask = soft_disc(box, mask_radius / pixel_size, 3.0)
    prepared = _comparable(aligned, pixel_size, 8.0, mask)
    labels = best[used] - 1
    homogeneity, fidelity_sum, population = [], 0.0, 0
    class_images = _comparable(torch.from_numpy(np.asarray(classes, dtype=np.float32)),
                               pixel_size, 15.0, mask)
    for k in np.unique(labels):
        members = prepared[labels == k]
        mean = members.mean(dim=0)
        homogeneity.extend(_correlation(members, mean[None]).tolist())
        truth = _comparable(aligned[labels == k].mean(dim=0, keepdim=True), pixel_size, 15.0,
                            mask)
        fidelity_sum += len(members) * float(_correlation(class_images[k][None], truth)[0])
        population += len(members)
    return Scores(float(np.mean(homogeneity)) if homogeneity else 0.0,
                  fidelity_sum / max(population, 1), len(np.unique(labels)))


def aligned_truth(views: np.ndarray, view: np.ndarray, psi_true: np.ndarray,
                  shift_true: np.ndarray, table, pixel_size: float) -> torch.Tensor:
    """``(n, box, box)``: each particle's true noise-free image put through the alignment the
    engine reported in ``table`` (cisTEM's convention: ``rotate(shift(P, (SHX, SHY)), PSI)``),
    which should land it on its class average."""
    clean = torch.from_numpy(render_clean(views, view, psi_true, shift_true, pixel_size))
    shifts = table[["SHY", "SHX"]].to_numpy(dtype=np.float64) / pixel_size
    aligned = fourier_shift_image_2d(clean, torch.as_tensor(shifts, dtype=torch.float32))
    return rotate(aligned, table["PSI"].to_numpy(dtype=np.float64))


def comparable(images: torch.Tensor, pixel_size: float, resolution: float,
               mask_radius: float) -> torch.Tensor:
    """Images as the scores compare them: low-passed to ``resolution`` Å, masked at
    ``mask_radius`` Å, their rotational average removed."""
    mask = soft_disc(images.shape[-1], mask_radius / pixel_size, 3.0)
    return _comparable(images, pixel_size, resolution, mask)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each image of ``a`` with the matching (or single) image of ``b``."""
    return _correlation(a, b)


def score_cycle(output_dir: Path, cycle: int, truth_dir: Path, mask_radius: float,
                proposed: list[int] | None = None) -> tuple[Scores, Selection, Selection]:
    """Scores of one cycle of a session run on a folder written by ``live2d simulate``, the
    best selection of its classes that the truth allows, and how the ``proposed`` one fares."""
    output_dir = Path(output_dir)
    record = next(r for r in read_history(output_dir) if r.number == cycle)
    table = particle_table(output_dir, record)
    rows = _truth_rows(output_dir, table, truth_dir)
    with mrcfile.open(Path(truth_dir) / "views.mrc") as mrc:
        views, pixel_size = np.array(mrc.data), float(mrc.voxel_size.x)
    with mrcfile.open(output_dir / record.classes) as mrc:
        classes = np.array(mrc.data)
    view = np.array([int(r["view"]) for r in rows])
    scores = score(views, view, np.array([float(r["psi"]) for r in rows]),
                   np.array([[float(r["shift_x"]), float(r["shift_y"])] for r in rows]),
                   table, classes, pixel_size, mask_radius)
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    used = labels > 0
    true_particle = view[used] >= 0
    return (scores, best_selection(labels[used], true_particle),
            selection_of(proposed or [], labels[used], true_particle))


def classified_picks(output_dir: Path, cycle: int,
                     truth_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The class (1-based) of each pick ``cycle`` classified, and whether it is a true particle
    (not junk), in the order of its particle table."""
    output_dir = Path(output_dir)
    record = next(r for r in read_history(output_dir) if r.number == cycle)
    table = particle_table(output_dir, record)
    view = np.array([int(r["view"]) for r in _truth_rows(output_dir, table, truth_dir)])
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    used = labels > 0
    return labels[used], view[used] >= 0


def curated_selection(output_dir: Path, cycle: int, truth_dir: Path, chosen: list[int],
                      keep: np.ndarray) -> Selection:
    """How the particles of classes ``chosen`` of ``cycle`` that a curation keeps (``keep``:
    per row of the cycle's particle table) fare against the truth."""
    output_dir = Path(output_dir)
    record = next(r for r in read_history(output_dir) if r.number == cycle)
    table = particle_table(output_dir, record)
    view = np.array([int(r["view"]) for r in _truth_rows(output_dir, table, truth_dir)])
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    used = labels > 0
    selected = np.isin(labels, chosen) & np.asarray(keep, dtype=bool)
    return particles_of(chosen, selected[used], view[used] >= 0)


def _truth_rows(output_dir: Path, table, truth_dir: Path) -> list[dict]:
    """The simulation's truth of each row of a cycle's particle table (rows in store order)."""
    names = cistem_star.read_star(output_dir / STORE_TABLE)["ORIGNAME"].tolist()
    with open(Path(truth_dir) / "particles.csv") as handle:
        truth = {row["image_name"]: row for row in csv.DictReader(handle)}
    return [truth[name] for name in names[: len(table)]]


def _comparable(images: torch.Tensor, pixel_size: float, resolution: float,
                mask: torch.Tensor) -> torch.Tensor:
    box = images.shape[-1]
    fy = torch.fft.fftfreq(box, d=pixel_size)[:, None]
    fx = torch.fft.rfftfreq(box, d=pixel_size)[None, :]
    low_pass = (torch.sqrt(fx**2 + fy**2) <= 1.0 / resolution).float()
    filtered = torch.fft.irfft2(torch.fft.rfft2(images) * low_pass, s=(box, box)) * mask
    return filtered - _rotational_average(filtered)


def _rotational_average(images: torch.Tensor) -> torch.Tensor:
    box = images.shape[-1]
    y, x = np.mgrid[:box, :box] - box // 2
    ring = torch.as_tensor(np.rint(np.hypot(x, y)).astype(np.int64)).flatten()
    flat = images.flatten(1)
    sums = torch.zeros((len(images), int(ring.max()) + 1)).index_add_(1, ring, flat)
    counts = torch.zeros(int(ring.max()) + 1).index_add_(0, ring, torch.ones(len(ring)))
    return (sums / counts)[:, ring].view_as(images)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
