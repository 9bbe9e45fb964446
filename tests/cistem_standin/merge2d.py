#!/usr/bin/env python3
"""Stand-in for cisTEM 2's merge2d 1.00, for tests only.

Asks merge2d's three questions, reads dump files 1..n named from the seed the way merge2d names
them (``StripExtension(seed) + i + "." + extension``), checks they agree, sums them and writes
each class as sum / (|CTF² sum| + occupancy) back in real space; classes without data are zero
images. The header pixel size is left unset, as merge2d leaves it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cistem_standin import formats
from cistem_standin.runtime import act_on, failure_mode
from cistem_standin.userinput import ScriptedInput, crash, out

LOG_RANGE = 20.0


def dump_name(seed: str, number: int) -> str:
    """wxFileName::StripExtension(seed) + number + "." + GetExt(seed)."""
    folder, _, name = seed.rpartition("/")
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    return f"{folder}{'/' if folder else ''}{stem}{number}.{extension}"


def main() -> None:
    if len(sys.argv) > 1:
        crash("Error: the stand-in has no GUI (socket) mode")
    ui = ScriptedInput("Merge2D", "1.00")
    classes_out = ui.filename("Output class averages")
    seed = ui.filename("Seed for input dump filenames for intermediate arrays")
    count = ui.integer("Number of dump files", 1)
    ui.record(classes_out=classes_out, seed=seed, count=count)
    mode = failure_mode("merge2d")
    act_on(mode, None)
    names = [dump_name(seed, number) for number in range(1, count + 1)]
    for name in names:
        if not Path(name).is_file():
            crash(f"Error: Dump file not found: {name}")
    merged = formats.read_dump(names[0])
    out(
        f"\nNumber of classes = {merged.n_classes}, nonzero classes = {len(merged.nonzero)}, "
        f"box size = {merged.box}, pixel size = {merged.pixel_size:f}\n"
    )
    out("\nReading intermediate arrays...\n\n")
    out(f"{names[0]}\n")
    for name in names[1:]:
        out(f"{name}\n")
        dump = formats.read_dump(name)
        if (dump.box, dump.n_classes, dump.nonzero, dump.pixel_size) != (
            merged.box,
            merged.n_classes,
            merged.nonzero,
            merged.pixel_size,
        ):
            crash("Error: Dump file incompatible with 2D class averages")
        merged.images += dump.images
        merged.sum_snr += dump.sum_snr
        for _ in merged.nonzero:  # cisTEM's quirk: the total is log-added once per class
            merged.sum_logp_total = float(np.logaddexp(merged.sum_logp_total, dump.sum_logp_total))
        merged.class_logp = np.logaddexp(merged.class_logp, dump.class_logp)
        merged.sums = merged.sums + dump.sums
        merged.ctf_sums = merged.ctf_sums + dump.ctf_sums
    box = merged.box
    classes = np.zeros((merged.n_classes, box, box))
    shares = np.zeros(merged.n_classes)
    for c, number in enumerate(merged.nonzero):
        occupancy = 0.0
        if abs(merged.class_logp[c]) <= LOG_RANGE:
            occupancy = float(np.exp(merged.class_logp[c] - np.log(max(merged.images, 1))))
        if occupancy > 0:
            classes[number] = np.fft.irfft2(
                merged.sums[c] / (np.abs(merged.ctf_sums[c]) + occupancy), s=(box, box)
            )
        shares[number] = occupancy
    for number, share in enumerate(shares, start=1):
        out(f"Class = {number:4d}, average occupancy = {100 * share:10.4f}\n")
    if mode == "nan":  # a numerical blow-up: one class average of NaN
        classes[0] = float("nan")
    if mode != "no-output":
        formats.write_stack(classes_out, classes)
    out(f"\nTotal logp = {merged.sum_logp_total:g}\n")
    out("\nMerge2D: Normal termination\n\n")


if __name__ == "__main__":
    main()
