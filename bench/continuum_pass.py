"""One alignment pass of the built-in engine's search against fixed class averages, on a kept
continuum session (bench/continuum.py --keep), with search variants: which part of the search
makes the per-particle psi and shift error (issue 30's diagnosis).

Takes a cycle's class averages and a subset of its particles, runs one search pass
(live2d.engines.builtin.search.Search, no previous match, so only the grid speaks) per variant,
and prints the psi and shift error against each class's consensus (live2d.evaluate), overall
and within 15° of the class's view, and homogeneity. ``--clean`` also aligns the particles'
noise-free images (with their CTF), to separate the noise's share from the search's:

    nice python bench/continuum_pass.py KEPT/classification-builtin --particles 400 --clean
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from live2d.engines.base import CycleParams
from live2d.engines.builtin import search as search_module
from live2d.engines.builtin.geometry import plan_geometry
from live2d.evaluate import model_phantom, score_model, truth_rows
from live2d.history import particle_table, read_history
from live2d.phantom import microscope_images
from live2d.warp import read_settings

VARIANTS = {
    "as is": ({}, {}),
    "no half-resolution pass": ({}, {"COARSE_CANDIDATE_FRACTION": 1.0}),
    "psi step 5°": ({"angular_step": 5.0}, {}),
    "smoothing 0.5": ({"smoothing": 0.5}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a kept classification folder")
    parser.add_argument("--cycle", type=int, help="whose classes (default: the last)")
    parser.add_argument("--particles", type=int, default=400)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--clean", action="store_true", help="also noise-free particles")
    args = parser.parse_args()
    output = args.output
    warp, truth = output.parent / "warp", output.parent / "warp_truth"
    records = read_history(output)
    record = next(r for r in records if r.number == args.cycle) if args.cycle else records[-1]
    table = particle_table(output, record)
    rows = truth_rows(output, table, truth)
    pick = np.random.default_rng(0).permutation(
        [i for i, r in enumerate(rows) if r["kind"] == "particle"])[:args.particles]
    pick.sort()
    rows = [rows[i] for i in pick]
    table = table.iloc[pick].reset_index(drop=True)
    stack = np.stack([read_image(warp, r["image_name"]) for r in rows])
    euler = np.array([[float(r["rot"]), float(r["tilt"]), float(r["psi"])] for r in rows])
    shift = np.array([[float(r["shift_x"]), float(r["shift_y"])] for r in rows])
    with mrcfile.open(output / record.classes) as mrc:
        classes = np.array(mrc.data)
    phantom = model_phantom(truth)
    diameter = read_settings(warp).diameter
    stacks = {"noisy": stack}
    if args.clean:
        stacks["noise-free"] = noise_free(phantom, euler, shift, rows, diameter)
    print(f"cycle {record.number}'s {len(classes)} classes, {len(rows)} particles; "
          "psi-err median/p90, shift-err median/p90 (Å), the same within 15° of the "
          "class's view, homogeneity, seconds")
    for name in args.variants:
        settings, constants = VARIANTS[name]
        for kind, images in stacks.items():
            began = time.monotonic()
            scores = one_pass(images, table, classes, phantom, euler, shift, diameter, settings,
                              constants)
            print(f"{name:<26s} {kind:<10s} {scores.psi_error.median:6.1f}° / "
                  f"{scores.psi_error.p90:5.1f}°  {scores.shift_error.median:5.2f} / "
                  f"{scores.shift_error.p90:5.2f}   {scores.psi_error_near.median:6.1f}° / "
                  f"{scores.psi_error_near.p90:5.1f}°  {scores.shift_error_near.median:5.2f} / "
                  f"{scores.shift_error_near.p90:5.2f}   {scores.homogeneity:.3f}  "
                  f"{time.monotonic() - began:5.0f}", flush=True)


def one_pass(stack, table, classes, phantom, euler, shift, diameter, settings, constants):
    saved = {name: getattr(search_module, name) for name in constants}
    for name, value in constants.items():
        setattr(search_module, name, value)
    try:
        params = CycleParams(pixel_size=phantom.pixel_size, mask_radius=0.6 * diameter,
                             high_res=8.0, search_range=0.33 * diameter, **settings)
        geometry = plan_geometry(params, stack.shape[-1], np.random.default_rng(1))
        search = search_module.Search(geometry, params, torch.from_numpy(classes),
                                      torch.device("cpu"))
        everyone = np.arange(len(stack))
        search.estimate_noise(stack, everyone, table)
        rows = table.drop(columns=["2DCLS", "PSI", "SHX", "SHY"], errors="ignore")
        parts = [search.score(stack, batch, rows.iloc[batch])[0]
                 for batch in np.array_split(everyone, max(1, len(stack) // 64))]
    finally:
        for name, value in saved.items():
            setattr(search_module, name, value)
    result = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    aligned = pd.DataFrame({"2DCLS": result["cls"].astype(np.int64), "PSI": result["psi"],
                            "SHX": result["shx"], "SHY": result["shy"]})
    return score_model(phantom, euler, shift, np.ones(len(stack), dtype=bool), aligned,
                       classes, 0.6 * diameter)


def read_image(warp: Path, image_name: str) -> np.ndarray:
    index, path = image_name.split("@")
    with mrcfile.mmap(warp / path, mode="r") as mrc:
        return np.array(mrc.data[int(index) - 1], dtype=np.float32)


def noise_free(phantom, euler, shift, rows, diameter) -> np.ndarray:
    """The particles as the microscope would give them without noise: CTF, white protein."""
    clean = phantom.render(euler, shift)
    out = np.empty_like(clean)
    for i, row in enumerate(rows):
        out[i] = microscope_images(clean[i:i + 1], np.ones(1, dtype=bool),
                                   np.random.default_rng(0), pixel_size=phantom.pixel_size,
                                   diameter=diameter, snr=1e9,
                                   defocus_u=float(row["defocus_u"]),
                                   defocus_v=float(row["defocus_v"]),
                                   defocus_angle=float(row["defocus_angle"]), voltage=300.0,
                                   cs=2.7, amplitude_contrast=0.07)[0]
    return out


if __name__ == "__main__":
    main()
