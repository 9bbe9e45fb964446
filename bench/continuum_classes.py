"""Per class of kept continuum classifications (bench/continuum.py --keep / --data): where a
classification's homogeneity goes (issue 30's diagnosis).

For each classification folder given (of the same simulated session) and the cycles asked for,
prints homogeneity, view coherence (median and 90th percentile of the members' angle from
their class's mean view), the psi error of the members within 15° of their class's view, how
many classes hold 90% of the particles and the largest class's share; with ``--classes`` the
same per class, largest first (homogeneity: the mean of its members' correlation with the
class's mean aligned true image, so a class weighs by its members in the overall figure):

    nice python bench/continuum_classes.py KEPT/classification-builtin KEPT/classification-cistem
    nice python bench/continuum_classes.py KEPT/classification-builtin --cycles 1 4 8 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from live2d.evaluate import (
    NEAR_VIEW,
    _aligned,
    alignment_errors,
    comparable,
    member_homogeneity,
    model_phantom,
    truth_rows,
    view_angles,
)
from live2d.history import CycleRecord, particle_table, read_history
from live2d.model_projection import ModelPhantom
from live2d.simulate import truth_dir_for
from live2d.warp import read_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", type=Path, nargs="+", help="kept classification folders")
    parser.add_argument("--cycles", type=int, nargs="*", help="default: the last")
    parser.add_argument("--classes", action="store_true", help="a line per class")
    args = parser.parse_args()
    truth = truth_dir_for(args.outputs[0].parent / "warp")
    phantom = model_phantom(truth)
    if phantom is None:
        raise SystemExit(f"{truth} is not a session of an atomic model (live2d simulate --model)")
    mask_radius = 0.6 * read_settings(args.outputs[0].parent / "warp").diameter
    print("folder cycle: homogeneity, coherence median/p90, psi-err near median, "
          "classes holding 90% of the particles, largest class share")
    for output in args.outputs:
        records = [r for r in read_history(output) if r.block != "start"]
        chosen = [r for r in records if r.number in args.cycles] if args.cycles else records[-1:]
        for record in chosen:
            report(output, record, truth, phantom, mask_radius, args.classes)


def report(output: Path, record: CycleRecord, truth: Path, phantom: ModelPhantom,
           mask_radius: float, per_class: bool) -> None:
    table = particle_table(output, record)
    rows = truth_rows(output, table, truth)
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    used = (labels > 0) & np.array([r["kind"] == "particle" for r in rows])
    rows = [r for r, u in zip(rows, used, strict=True) if u]
    table, labels = table[used].reset_index(drop=True), labels[used] - 1
    euler = np.array([[float(r["rot"]), float(r["tilt"]), float(r["psi"])] for r in rows])
    shift = np.array([[float(r["shift_x"]), float(r["shift_y"])] for r in rows])
    psi = table["PSI"].to_numpy(dtype=np.float64)
    clean = torch.from_numpy(phantom.render(euler, shift))
    aligned = comparable(_aligned(clean, table, phantom.pixel_size), phantom.pixel_size, 8.0,
                         mask_radius)
    off_view = view_angles(euler, labels)
    psi_error, _ = alignment_errors(euler, shift, psi, table[["SHX", "SHY"]].to_numpy(), labels)
    homogeneity = member_homogeneity(aligned, labels)
    lines = []
    for k in np.unique(labels):
        members = labels == k
        near = members & (off_view <= NEAR_VIEW)
        lines.append((int(members.sum()), k + 1, float(homogeneity[members].mean()),
                      float(np.median(off_view[members])),
                      float(np.percentile(off_view[members], 90)),
                      float(np.median(psi_error[near])) if near.any() else float("nan")))
    sizes = np.sort(np.bincount(labels))[::-1]
    holding = int(np.searchsorted(np.cumsum(sizes), 0.9 * len(labels)) + 1)
    near_error = psi_error[off_view <= NEAR_VIEW]
    print(f"{output.name} {record.number:3d}: {homogeneity.mean():.3f}, "
          f"{np.median(off_view):5.1f}° / {np.percentile(off_view, 90):5.1f}°, "
          f"{np.median(near_error) if len(near_error) else float('nan'):4.1f}°, "
          f"{holding} classes, {sizes[0] / len(labels):.1%}", flush=True)
    if per_class:
        print("   class  members  homogeneity  coherence median/p90  psi-err near")
        for size, k, homogeneity, median, p90, near in sorted(lines, reverse=True):
            print(f"   {k:5d}  {size:7d}  {homogeneity:11.3f}  {median:8.1f}° / {p90:5.1f}°  "
                  f"{near:9.1f}°")


if __name__ == "__main__":
    main()
