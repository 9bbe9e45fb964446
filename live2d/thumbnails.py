"""PNG thumbnails of class averages, one per class, for the web page and the Scipion viewer,
and the one place that decides how an image is shown (:func:`display_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from live2d.mrc import read_images
from live2d.output_folder import thumbnail_name


def to_8bit(image: np.ndarray) -> np.ndarray:
    """Contrast-stretch between the 0.5 and 99.5 percentiles; flat images become mid-grey."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return np.full(image.shape, 128, dtype=np.uint8)
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def display_image(image: np.ndarray) -> np.ndarray:
    """8-bit pixels of one image, its top row first, as every face of Live2D shows it.

    The first row of the MRC data (y = 0) is drawn at the top, as Scipion's viewers and
    ``relion_display`` draw it (IMOD and cisTEM put it at the bottom): the page's thumbnails, the
    Scipion viewer and exported PNGs all draw through this function, so a class looks the same in
    Live2D as in the programs its outputs are taken to. Draw the result with the first row on top
    (PIL does; matplotlib with ``origin="upper"``).
    """
    return to_8bit(np.asarray(image, dtype=np.float32))


def write_thumbnails(classes_mrc: str | Path, folder: str | Path) -> list[Path]:
    """``class_001.png``... for every image of ``classes_mrc``, shown as :func:`display_image`
    decides."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(read_images(classes_mrc), start=1):
        path = folder / thumbnail_name(index)
        Image.fromarray(display_image(image)).save(path)
        paths.append(path)
    return paths
