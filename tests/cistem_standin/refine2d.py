#!/usr/bin/env python3
"""Stand-in for cisTEM 2's refine2d 1.02, for tests only.

Asks refine2d's 25 questions (24 for a build without OpenMP) exactly as the real program does in
scripted mode and rejects what it would reject, then computes real, simple results in cisTEM's
formats:

* init mode (classes > 0): each class the mean of a random subset of the particles, protein
  white; no star file.
* refine mode: each particle in first..last scored against every nonzero class at 0/90/180/270°
  (the real program searches a finer psi grid and shifts); likelihood weights give OCC and the
  class sums; the star file holds rows first..last, unused particles with a negated class; in
  dump mode the class sums go to the dump file and no class file is written.

The CTF is taken as 1: the stand-in checks the CTF columns are there, but does not apply them.
The random generator is seeded with the start second, like cisTEM's time(NULL).
"""

from __future__ import annotations

import time

SEED_SECOND = int(time.time())  # cisTEM seeds its global generator at start-up

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from cistem_standin import formats  # noqa: E402
from cistem_standin.runtime import (  # noqa: E402
    ProgressBar,
    act_on,
    failure_mode,
    openmp_build,
    particle_delay,
)
from cistem_standin.userinput import ScriptedInput, crash, out  # noqa: E402

NOWHERE = "/dev/null"
LOG_RANGE = 20.0
LIKELIHOOD_SCALE = 10.0  # stands in for the ML score's sharpness


def main() -> None:
    if len(sys.argv) > 1:
        crash("Error: the stand-in has no GUI (socket) mode")
    ui = ScriptedInput("Refine2D", "1.02")
    a = {
        "stack": ui.filename("Input particle images", must_exist=True),
        "star_in": ui.filename("Input cisTEM star file", must_exist=True),
        "classes_in": ui.filename("Input class averages"),
        "star_out": ui.filename("Output cisTEM star file"),
        "classes_out": ui.filename("Output class averages"),
        "n_classes": ui.integer("Number of classes (>0 = initialize classes)", 0),
        "first": ui.integer("First particle to refine (0 = first in stack)", 0),
        "last": ui.integer("Last particle to refine (0 = last in stack)", 0),
        "fraction": ui.real("Percent of particles to use (1 = all)", 0.0, 1.0),
        "pixel_size": ui.real("Pixel size of class averages (A)", 0.0),
        "mask_radius": ui.real("Mask radius (A)", 0.0),
        "low_res": ui.real("Low resolution limit (A)", 0.0),
        "high_res": ui.real("High resolution limit (A)", 0.0),
        "angular_step": ui.real("Angular step (0.0 = set automatically)", 0.0),
        "search_range": ui.real("Search range (A) (0.0 = max)", 0.0),
        "smoothing": ui.real("Tuning parameter: smoothing factor", 0.01),
        "padding": ui.integer("Tuning parameter: padding factor for interpol.", 1),
        "normalize": ui.yes_no("Normalize particles"),
        "invert": ui.yes_no("Invert particle contrast"),
        "exclude_blank_edges": ui.yes_no("Exclude images with blank edges"),
        "auto_mask": ui.yes_no("Automatically mask class averages"),
        "auto_center": ui.yes_no("Automatically center class averages"),
        "dump": ui.yes_no("Dump intermediate arrays (merge later)"),
        "dump_file": ui.filename("Output dump filename for intermediate arrays"),
    }
    openmp = openmp_build()
    a["threads"] = ui.integer("Max. threads to use for calculation", 1) if openmp else 1
    ui.record(seed_second=SEED_SECOND, openmp=openmp, **a)

    stack = formats.read_stack(a["stack"])
    if stack.shape[1] != stack.shape[2]:
        crash("Error: Particles are not square")
    rows = formats.read_star(a["star_in"])
    if a["last"] != 0 and a["last"] < a["first"]:
        crash("Error: Number of last particle to refine smaller than number of first particle")
    first = a["first"] or 1
    last = min(a["last"] or len(stack), len(stack))
    in_range = [row for row in rows if first <= row["POS"] <= last]
    mode = failure_mode("refine2d", first)
    rng = np.random.default_rng(SEED_SECOND)
    sigmas = np.array([row["SIGMA"] for row in rows])
    out(
        f"\nShift averages x, y = 0, 0, shift std x, y = 0, 0, average SNR = "
        f"{1.0 / max(float(sigmas.mean()), 0.01) ** 2:g}\n"
    )
    if a["n_classes"] > 0:
        start_classes(a, stack, in_range, rng, mode)
    else:
        refine(a, stack, in_range, first, last, rng, mode)
    out("\nRefine2D: Normal termination\n\n")


def start_classes(a: dict, stack: np.ndarray, rows: list[dict], rng, mode: str | None) -> None:
    k = a["n_classes"]
    box = stack.shape[1]
    out(
        f"\nNumber of classes = {k}, nonzero classes = {k}, box size = {box}, binning factor = "
        f"1.000000, new pixel size = {a['pixel_size']:f}, resolution limit = "
        f"{2 * a['pixel_size']:f}, angular step size = 15.000000, percent_used = "
        f"{a['fraction']:f}\n"
    )
    out(f"\nGenerating {k} starting class averages...\n\n")
    bar = ProgressBar(len(rows))
    act_on(mode, bar)
    sums = np.zeros((k, box, box))
    counts = np.zeros(k)
    for done, row in enumerate(rows, start=1):
        bar.update(done)
        if rng.uniform(-1, 1) < 1 - 2 * a["fraction"]:
            continue
        image = prepare(stack[int(row["POS"]) - 1], a)
        joins = rng.uniform(size=k) < 1.0 / k  # each class independently, as cisTEM does
        sums[joins] += image
        counts[joins] += 1
    bar.finish()
    if a["exclude_blank_edges"]:
        out("\nNumber of excluded images with blank edges = 0\n")
    classes = sums / np.maximum(counts, 1)[:, None, None]
    if mode != "no-output":
        formats.write_stack(a["classes_out"], classes)


def refine(a, stack, rows, first: int, last: int, rng, mode: str | None) -> None:
    if not Path(a["classes_in"]).is_file():
        crash(f"Error: Input class averages {a['classes_in']} not found")
    classes = formats.read_stack(a["classes_in"])
    if classes.shape[1:] != stack.shape[1:]:
        crash("Error: Dimension of particles and input classes differ")
    k, box = classes.shape[0], stack.shape[1]
    nonzero = [c for c in range(k) if classes[c].var() != 0.0]
    mask = circular_mask(box, a["mask_radius"] / a["pixel_size"])
    references = np.array([unit(classes[c] * mask) for c in nonzero])
    psi_step = a["angular_step"] or 15.0
    rng.uniform(-1, 1)  # psi_start = psi_step / 2 · U[-1, 1], drawn once per run
    out(
        f"\nNumber of classes = {k}, nonzero classes = {len(nonzero)}, box size = {box}, "
        f"binning factor = 1.000000, new pixel size = {a['pixel_size']:f}, resolution limit = "
        f"{2 * a['pixel_size']:f}, angular step size = {psi_step:f}, percent_used = "
        f"{a['fraction']:f}\n"
    )
    if a["normalize"]:
        out("\nCalculating noise power spectrum...\n\n")
        noise_bar = ProgressBar(min(len(rows), 2000))
        noise_bar.finish()
        if a["exclude_blank_edges"]:
            out("\nNumber of excluded images with blank edges = 0\n")
    out("\nCalculating new class averages...\n\n")
    bar = ProgressBar(len(rows))
    act_on(mode, bar)
    shape = (len(nonzero), box, box // 2 + 1)
    sums, ctf_sums = np.zeros(shape, np.complex128), np.zeros(shape, np.complex128)
    class_logp = np.full(len(nonzero), -np.inf)
    sum_logp_total, sum_snr, images = -np.inf, 0.0, 0
    results = []
    delay = particle_delay()
    for done, row in enumerate(rows, start=1):
        bar.update(done)
        time.sleep(delay)
        row = dict(row)
        if rng.uniform(-1, 1) < 1 - 2 * a["fraction"] or not nonzero:
            row["2DCLS"] = -abs(row["2DCLS"])
            row["CHANGE"] = 0.0
            results.append(row)
            continue
        image = prepare(stack[int(row["POS"]) - 1], a)
        rotated = np.array([np.rot90(image, r) * mask for r in range(4)])
        scores = np.einsum("kyx,ryx->kr", references, rotated) / np.sqrt(
            (rotated**2).sum(axis=(1, 2))
        )
        best_turn = scores.argmax(axis=1)
        logp = a["smoothing"] * LIKELIHOOD_SCALE * scores.max(axis=1)
        total = np.logaddexp.reduce(logp)
        weights = np.exp(logp - total)
        best = int(weights.argmax())
        for c in range(len(nonzero)):
            if logp[c] - total >= -LOG_RANGE:
                sums[c] += weights[c] * np.fft.rfft2(np.rot90(image, best_turn[c]))
                ctf_sums[c] += weights[c]
                class_logp[c] = np.logaddexp(class_logp[c], logp[c] - total)
        sum_logp_total = np.logaddexp(sum_logp_total, total)
        sum_snr += 1.0 / row["SIGMA"] if row["SIGMA"] else 0.0
        images += 1
        score = 100.0 * float(scores[best, best_turn[best]])
        row.update(
            {
                "2DCLS": nonzero[best] + 1,
                "PSI": 90.0 * best_turn[best],
                "SHX": 0.0,
                "SHY": 0.0,
                "OCC": 100.0 * weights[best],
                "LogP": float(logp.max()),
                "CHANGE": score - row["SCORE"],
                "SCORE": score,
            }
        )
        results.append(row)
    bar.finish()
    if a["exclude_blank_edges"] and not a["normalize"]:
        out("\nNumber of excluded images with blank edges = 0\n")
    if a["star_out"] != NOWHERE and mode != "no-output":
        formats.write_star(a["star_out"], results, star_comments(a, first, last))
    if a["dump"]:
        out("\nDumping intermediate files...\n")
        if mode != "no-output":
            formats.write_dump(
                a["dump_file"],
                formats.Dump(
                    box=box,
                    n_classes=k,
                    nonzero=nonzero,
                    images=images,
                    sum_logp_total=float(sum_logp_total),
                    sum_snr=sum_snr,
                    pixel_size=a["pixel_size"],
                    mask_radius=a["mask_radius"],
                    class_logp=class_logp,
                    sums=sums,
                    ctf_sums=ctf_sums,
                ),
            )
    else:
        out("\n")
        averages = np.zeros((k, box, box))
        for c, number in enumerate(nonzero):
            occupancy = np.exp(class_logp[c] - np.log(max(images, 1)))
            if occupancy > 0:
                averages[number] = np.fft.irfft2(
                    sums[c] / (np.abs(ctf_sums[c]) + occupancy), s=(box, box)
                )
        for number in range(k):
            share = (
                float(np.exp(class_logp[nonzero.index(number)]) / max(images, 1))
                if number in nonzero
                else 0.0
            )
            out(f"Class = {number + 1:4d}, average occupancy = {100 * share:10.4f}\n")
        if mode != "no-output":
            formats.write_stack(a["classes_out"], averages)
    out(f"\nTotal logP = {sum_logp_total:g}\n")


def prepare(image: np.ndarray, a: dict) -> np.ndarray:
    """Normalised (if asked) with protein white: flipped unless the stack already is."""
    image = image.astype(np.float64)
    if a["normalize"]:
        image = (image - image.mean()) / (image.std() or 1.0)
    return image if a["invert"] else -image


def circular_mask(box: int, radius_px: float) -> np.ndarray:
    y, x = np.indices((box, box)) - box // 2
    return (x * x + y * y <= radius_px * radius_px).astype(np.float64)


def unit(image: np.ndarray) -> np.ndarray:
    norm = np.sqrt((image**2).sum())
    return image / norm if norm else image


def star_comments(a: dict, first: int, last: int) -> list[str]:
    echoed = [f"# {name}: {value}" for name, value in a.items()]
    echoed[6:8] = [f"# First particle to refine: {first}", f"# Last particle to refine: {last}"]
    return [f"# Refine2D run date and time: {time.strftime('%Y-%m-%d %H:%M:%S')}", *echoed, "#"]


if __name__ == "__main__":
    main()
