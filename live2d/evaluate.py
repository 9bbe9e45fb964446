"""Scores of a classification against the truth of a simulated session (issue 3's measures).

* homogeneity: each particle's true noise-free image, put through the reported alignment
  (``rotate(shift(P, (SHX, SHY)), PSI)``), low-passed to 8 Å, masked, its rotational average
  removed, correlated with its class's mean of such images; averaged over particles. 1 = every
  class one view, perfectly aligned; random assignment gives about 0.1.
* fidelity: correlation (15 Å low-pass, masked, rotational average removed) of each class average
  with its class's mean true image, weighted by class population.

On a session with junk picks both count true particles only (a class's mean is that of its true
particles), and :func:`best_selection` says how well the classes separate particles from junk.

A session of an atomic model (``live2d simulate --model``: a continuum of views, each particle's
orientation known) is scored the same way, its true images rendered from the model, and three
more ways (:func:`score_model`), true particles only:

* view coherence: the median angle between members' viewing directions and their class's mean
  direction (:func:`view_coherence`; lower is better, about 86° at random);
* in-plane (psi) and shift error (:func:`alignment_errors`): a class's frame is arbitrary, so
  each member's alignment is measured against its class's consensus: the turn about the
  viewing axis between the member's aligned orientation and its class's mean orientation, and
  the distance of its aligned centre from the class's median centre; median and 90th
  percentile over the particles.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch
from torch_fourier_shift import fourier_shift_image_2d

from live2d import cistem_star
from live2d.history import particle_table, read_history
from live2d.imaging import rotate, soft_disc
from live2d.model_projection import ModelPhantom, euler_matrices, viewing_directions
from live2d.output_folder import STORE_TABLE
from live2d.phantom import render_clean


@dataclass(frozen=True)
class Scores:
    """How well a classification matches the simulation's truth: class homogeneity, fidelity to
    the true views, and how many classes hold particles."""
    homogeneity: float
    fidelity: float
    classes_used: int
    # Of an atomic model's session only (score_model): degrees, degrees, Å.
    coherence: float | None = None
    psi_error: Spread | None = None
    shift_error: Spread | None = None
    # The same over the members whose view is within NEAR_VIEW of their class's: alignment
    # error proper, apart from what mixing views in a class adds to it.
    psi_error_near: Spread | None = None
    shift_error_near: Spread | None = None


# Degrees from a class's mean viewing direction within which members count as its view.
NEAR_VIEW = 15.0


@dataclass(frozen=True)
class Spread:
    """A per-particle error over the particles: its median and 90th percentile."""
    median: float
    p90: float

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        if len(values) == 0:
            return cls(float("nan"), float("nan"))
        return cls(float(np.median(values)), float(np.percentile(values, 90)))


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
    return _image_scores(aligned, best[used] - 1, classes, pixel_size, mask_radius)


def score_model(phantom: ModelPhantom, euler: np.ndarray, shift_true: np.ndarray,
                true_particle: np.ndarray, table, classes: np.ndarray,
                mask_radius: float) -> Scores:
    """:func:`score` for picks of an atomic model: ``euler`` ``(n, 3)`` their true orientations
    (live2d.model_projection), ``true_particle`` which are not junk; with view coherence and
    the psi and shift errors."""
    best = table["2DCLS"].to_numpy(dtype=np.int64)
    used = (best > 0) & np.asarray(true_particle, dtype=bool)
    clean = torch.from_numpy(phantom.render(euler[used], shift_true[used]))
    aligned = _aligned(clean, table[used], phantom.pixel_size)
    labels = best[used] - 1
    scores = _image_scores(aligned, labels, classes, phantom.pixel_size, mask_radius)
    psi_error, shift_error = alignment_errors(
        euler[used], shift_true[used], table["PSI"].to_numpy(dtype=np.float64)[used],
        table[["SHX", "SHY"]].to_numpy(dtype=np.float64)[used], labels)
    off_view = view_angles(euler[used], labels)
    near = off_view <= NEAR_VIEW
    return Scores(scores.homogeneity, scores.fidelity, scores.classes_used,
                  float(np.median(off_view)) if len(off_view) else float("nan"),
                  Spread.of(psi_error), Spread.of(shift_error), Spread.of(psi_error[near]),
                  Spread.of(shift_error[near]))


def view_coherence(euler: np.ndarray, labels: np.ndarray) -> float:
    """The median angle (degrees) between each particle's viewing direction (``euler``: its
    true orientation) and the mean direction of its class (``labels``)."""
    angles = view_angles(euler, labels)
    return float(np.median(angles)) if len(angles) else float("nan")


def view_angles(euler: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per particle, the angle (degrees) between its viewing direction and its class's mean."""
    directions = viewing_directions(euler)
    angles = np.zeros(len(labels))
    for k in np.unique(labels):
        members = labels == k
        mean = directions[members].sum(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        angles[members] = np.degrees(np.arccos(np.clip(directions[members] @ mean, -1.0, 1.0)))
    return angles


def alignment_errors(euler: np.ndarray, shift_true: np.ndarray, psi: np.ndarray,
                     shift: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per particle, how far the engine's alignment (``psi``, ``shift`` (x, y) Å: cisTEM's
    convention, ``A = rotate(shift(P, shift), psi)``) leaves it from its class's consensus:
    the in-plane turn (degrees) between its aligned orientation and its class's mean
    orientation, and the distance (Å) of its aligned centre from its class's median centre.

    A particle of orientation R (``euler``) and displacement ``shift_true`` ends up aligned at
    orientation Rz(psi)·R with its centre at rot(psi)(shift_true + shift). Within a class of
    several views the in-plane part is the twist about the viewing axis (z) of the rotation
    from the class's mean orientation to the member's; for one view it is the circular spread
    of psi + true psi."""
    turn = np.deg2rad(np.asarray(psi, dtype=np.float64))
    aligned = euler_matrices(np.asarray(euler) + np.stack([0 * psi, 0 * psi, psi], axis=1))
    centre = shift_true + shift
    centre = np.stack([np.cos(turn) * centre[:, 0] - np.sin(turn) * centre[:, 1],
                       np.sin(turn) * centre[:, 0] + np.cos(turn) * centre[:, 1]], axis=1)
    psi_error, shift_error = np.zeros(len(labels)), np.zeros(len(labels))
    for k in np.unique(labels):
        members = labels == k
        quaternions = _quaternions(aligned[members])
        # The mean orientation: the principal eigenvector of the quaternions' outer products
        # (sign-blind, as q and -q are the same rotation).
        mean = np.linalg.eigh(quaternions.T @ quaternions)[1][:, -1]
        relative = _multiply(quaternions, _conjugate(mean))
        twist = 2.0 * np.arctan2(relative[:, 3], relative[:, 0])  # about z
        psi_error[members] = np.abs(np.degrees(np.angle(np.exp(1j * twist))))
        shift_error[members] = np.linalg.norm(
            centre[members] - np.median(centre[members], axis=0), axis=1)
    return psi_error, shift_error


def _quaternions(matrices: np.ndarray) -> np.ndarray:
    """``(n, 4)`` unit quaternions (w, x, y, z) of ``(n, 3, 3)`` rotations."""
    m = matrices
    w = np.sqrt(np.clip(1.0 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 0.0, None)) / 2.0
    x = np.sqrt(np.clip(1.0 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 0.0, None)) / 2.0
    y = np.sqrt(np.clip(1.0 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 0.0, None)) / 2.0
    z = np.sqrt(np.clip(1.0 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2], 0.0, None)) / 2.0
    x = np.copysign(x, m[:, 2, 1] - m[:, 1, 2])
    y = np.copysign(y, m[:, 0, 2] - m[:, 2, 0])
    z = np.copysign(z, m[:, 1, 0] - m[:, 0, 1])
    return np.stack([w, x, y, z], axis=1)


def _conjugate(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton products of ``(n, 4)`` quaternions ``a`` with ``(4,)`` or ``(n, 4)`` ``b``."""
    aw, ax, ay, az = np.moveaxis(np.atleast_2d(a), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.atleast_2d(b), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw],
                    axis=1)


def _image_scores(aligned: torch.Tensor, labels: np.ndarray, classes: np.ndarray,
                  pixel_size: float, mask_radius: float) -> Scores:
    """Homogeneity and fidelity of true images already put through the engine's alignment."""
    box = aligned.shape[-1]
    mask = soft_disc(box, mask_radius / pixel_size, 3.0)
    prepared = _comparable(aligned, pixel_size, 8.0, mask)
    homogeneity = member_homogeneity(prepared, labels)
    fidelity_sum, population = 0.0, 0
    class_images = _comparable(torch.from_numpy(np.asarray(classes, dtype=np.float32)),
                               pixel_size, 15.0, mask)
    for k in np.unique(labels):
        members = labels == k
        truth = _comparable(aligned[members].mean(dim=0, keepdim=True), pixel_size, 15.0, mask)
        fidelity_sum += int(members.sum()) * float(_correlation(class_images[k][None], truth)[0])
        population += int(members.sum())
    return Scores(float(homogeneity.mean()) if len(homogeneity) else 0.0,
                  fidelity_sum / max(population, 1), len(np.unique(labels)))


def member_homogeneity(prepared: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Per member, the correlation of its image (true, aligned as the engine said, made
    :func:`comparable`) with its class's mean of such images: homogeneity is their mean."""
    values = np.zeros(len(labels))
    for k in np.unique(labels):
        members = labels == k
        values[members] = _correlation(prepared[members],
                                       prepared[members].mean(dim=0)[None]).numpy()
    return values


def aligned_truth(views: np.ndarray, view: np.ndarray, psi_true: np.ndarray,
                  shift_true: np.ndarray, table, pixel_size: float) -> torch.Tensor:
    """``(n, box, box)``: each particle's true noise-free image put through the alignment the
    engine reported in ``table`` (cisTEM's convention: ``rotate(shift(P, (SHX, SHY)), PSI)``),
    which should land it on its class average."""
    clean = torch.from_numpy(render_clean(views, view, psi_true, shift_true, pixel_size))
    return _aligned(clean, table, pixel_size)


def _aligned(clean: torch.Tensor, table, pixel_size: float) -> torch.Tensor:
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
    rows = truth_rows(output_dir, table, truth_dir)
    with mrcfile.open(Path(truth_dir) / "views.mrc") as mrc:
        views, pixel_size = np.array(mrc.data), float(mrc.voxel_size.x)
    with mrcfile.open(output_dir / record.classes) as mrc:
        classes = np.array(mrc.data)
    view = np.array([int(r["view"]) for r in rows])
    psi = np.array([float(r["psi"]) for r in rows])
    shift = np.array([[float(r["shift_x"]), float(r["shift_y"])] for r in rows]).reshape(-1, 2)
    phantom = model_phantom(truth_dir)
    if phantom is not None:
        euler = np.array([[float(r["rot"]), float(r["tilt"]), float(r["psi"])] for r in rows])
        scores = score_model(phantom, euler.reshape(-1, 3), shift, view >= 0, table, classes,
                             mask_radius)
    else:
        scores = score(views, view, psi, shift, table, classes, pixel_size, mask_radius)
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    used = labels > 0
    true_particle = view[used] >= 0
    return (scores, best_selection(labels[used], true_particle),
            selection_of(proposed or [], labels[used], true_particle))


def model_phantom(truth_dir: Path) -> ModelPhantom | None:
    """The atomic model a session was simulated from (``live2d simulate --model``), as it was
    projected then; None for the phantom's discrete views."""
    record = json.loads((Path(truth_dir) / "simulation.json").read_text())["signature"]
    if "model" not in record:
        return None
    return ModelPhantom(Path(record["model"]), record["box"], record["pixel_size"],
                        n_views=record["views"], seed=record["seed"])


def classified_picks(output_dir: Path, cycle: int,
                     truth_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The class (1-based) of each pick ``cycle`` classified, and whether it is a true particle
    (not junk), in the order of its particle table."""
    labels, true_particle = _picks_and_truth(output_dir, cycle, truth_dir)
    used = labels > 0
    return labels[used], true_particle[used]


def _picks_and_truth(output_dir: Path, cycle: int,
                     truth_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``cycle``'s particle table: its class (0 or below: not used) and whether it
    is a true particle."""
    output_dir = Path(output_dir)
    record = next(r for r in read_history(output_dir) if r.number == cycle)
    table = particle_table(output_dir, record)
    view = np.array([int(r["view"]) for r in truth_rows(output_dir, table, truth_dir)])
    return table["2DCLS"].to_numpy(dtype=np.int64), view >= 0


def curated_selection(output_dir: Path, cycle: int, truth_dir: Path, chosen: list[int],
                      keep: np.ndarray, rescued: np.ndarray | None = None) -> Selection:
    """How the particles of classes ``chosen`` of ``cycle`` that a curation keeps (``keep``:
    per row of the cycle's particle table), and those of other classes it ``rescued`` (per
    row), fare against the truth."""
    labels, true_particle = _picks_and_truth(output_dir, cycle, truth_dir)
    used = labels > 0
    selected = np.isin(labels, chosen) & np.asarray(keep, dtype=bool)
    if rescued is not None:
        selected |= np.asarray(rescued, dtype=bool)
    return particles_of(chosen, selected[used], true_particle[used])


def truth_rows(output_dir: Path, table, truth_dir: Path) -> list[dict]:
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
