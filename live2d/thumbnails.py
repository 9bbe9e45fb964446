"""PNG thumbnails of class averages, one per class, for the web page and the Scipion viewer."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image


def to_8bit(image: np.ndarray) -> np.ndarray:
    """Contrast-stretch between the 0.5 and 99.5 percentiles; flat images become mid-grey."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return np.full(image.shape, 128, dtype=np.uint8)
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_thumbnails(classes_mrc: str | Path, folder: str | Path) -> list[Path]:
    """``class_001.png``... for every slice of ``classes_mrc``; y flipped so the PNG shows the
    image as MRC viewers (and cisTEM) do, origin at the bottom left."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.open(classes_mrc, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    data = data.reshape((-1, *data.shape[-2:]))
    paths = []
    for index, image in enumerate(data, start=1):
        path = folder / f"class_{index:03d}.png"
        Image.fromarray(to_8bit(image[::-1])).save(path)
        paths.append(path)
    return paths
