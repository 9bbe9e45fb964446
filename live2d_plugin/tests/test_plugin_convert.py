"""The 2D alignment handed to Scipion means what Live2D's PSI/SHX/SHY mean: applying a member's
Transform to the particle gives its class average."""

from __future__ import annotations

import mrcfile
import numpy as np
import torch
from pwem.emlib.image import ImageHandler
from scipy.ndimage import affine_transform
from torch_fourier_shift import fourier_shift_image_2d

from live2d.imaging import rotate
from live2d_plugin.convert import alignment_2d

BOX = 64
PIXEL_SIZE = 3.0


def asymmetric_average() -> np.ndarray:
    """An off-centre blob and a bar: no rotation or shift maps it onto itself."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    blob = np.exp(-((x - 10) ** 2 + (y - 4) ** 2) / 8.0)
    bar = np.exp(-((y + 8) ** 2) / 4.0) * (np.abs(x) < 12)
    return (blob + bar).astype(np.float32)


def particle_for(average: np.ndarray, psi: float, shx: float, shy: float) -> np.ndarray:
    """The particle P with ``average = rotate(shift(P, (SHX, SHY)), PSI)`` (Live2D's rule)."""
    shift_yx = torch.tensor([[shy, shx]], dtype=torch.float32) / PIXEL_SIZE
    turned = rotate(torch.from_numpy(average)[None], np.array([-psi]))
    return fourier_shift_image_2d(turned, -shift_yx)[0].numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def apply_matrix(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample so that content at particle pixel (x, y) lands at ``matrix @ (x, y, 1)``
    (positions relative to the box centre)."""
    centre = BOX // 2
    inverse = np.linalg.inv(matrix[np.ix_([0, 1, 3], [0, 1, 3])])
    # scipy works on (row, column) = (y, x): swap axes of the 2D affine map.
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    back = swap @ inverse @ swap
    offset = back[:2, 2] + centre - back[:2, :2] @ [centre, centre]
    return affine_transform(image, back[:2, :2], offset=offset, order=3)


def test_rotation_sense_agrees_with_scipions_own_transform_application(tmp_path) -> None:
    # Xmipp's applyTransforMatScipion (what pwem's ImageHandler uses) applies the rotation of a
    # 2D Transform; it ignores the shift column of 2D matrices, so this checks rotation only.
    average = asymmetric_average()
    psi = 30.0
    particle = particle_for(average, psi, 0.0, 0.0)
    with mrcfile.new(tmp_path / "particle.mrc") as mrc:
        mrc.set_data(particle)
    aligned = {}
    for name, angle in (("ours", psi), ("opposite", -psi)):
        ImageHandler().convert((1, str(tmp_path / "particle.mrc")),
                               (1, str(tmp_path / f"{name}.mrc")),
                               transform=alignment_2d(angle, 0.0, 0.0, PIXEL_SIZE))
        with mrcfile.open(tmp_path / f"{name}.mrc") as mrc:
            aligned[name] = np.asarray(mrc.data).reshape(BOX, BOX)
    assert correlation(aligned["ours"], average) > 0.95
    assert correlation(aligned["opposite"], average) < 0.6


def test_transform_maps_a_shifted_rotated_particle_onto_its_average() -> None:
    average = asymmetric_average()
    psi, shx, shy = 40.0, 12.0, -9.0
    particle = particle_for(average, psi, shx, shy)
    matrix = alignment_2d(psi, shx, shy, PIXEL_SIZE).getMatrix()
    ours = correlation(apply_matrix(particle, matrix), average)
    assert ours > 0.95
    # Shifting after the rotation instead of before, or the other way, misses the average.
    shift_after = matrix.copy()
    shift_after[:2, 3] = np.array([shx, shy]) / PIXEL_SIZE
    backwards = matrix.copy()
    backwards[:2, 3] *= -1
    for wrong in (shift_after, backwards):
        assert correlation(apply_matrix(particle, wrong), average) < ours - 0.2
