"""How Live2D's MRC outputs are labelled, decided once for every engine."""

from __future__ import annotations

from pathlib import Path

import mrcfile


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
