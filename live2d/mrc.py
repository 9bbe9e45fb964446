"""Live2D's MRC stacks of 2D images: how they are read and labelled, once for every user."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np


def mark_image_stack(path: str | Path) -> None:
    """Label ``path`` as a stack of 2D images (space group 0, one section per image) in place.

    Engines write class averages as 3D arrays (merge2d and mrcfile both label them volumes);
    Scipion, RELION and cryoSPARC then read "64 x 64 x 6" instead of "6 images of 64 x 64". Only
    the header changes; the pixel size is kept, along z too.
    """
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        pixel = float(mrc.voxel_size.x)
        mrc.set_image_stack()
        mrc.voxel_size = (pixel, float(mrc.voxel_size.y), pixel)


def read_images(path: str | Path) -> np.ndarray:
    """``(n, h, w)`` float32 images of an MRC file, whatever its header calls them: mrcfile gives
    an image stack and a volume as the same 3-D array, one image as 2-D and a volume stack as
    4-D. A copy, valid once the file is closed."""
    with mrcfile.open(path, permissive=True) as mrc:
        if mrc.data is None:
            raise ValueError(f"{path}: no image data")
        data = np.array(mrc.data, dtype=np.float32)
    return data.reshape((-1, *data.shape[-2:]))
