"""Classification quality on simulated data with known truth, cycle by cycle, for either engine.

Simulates a Warp session (`live2d simulate`'s phantom, CTF, shifts, noise), runs one ab initio
job on it with the chosen engine, and prints for every cycle the two scores of issue 3
(live2d/evaluate.py): homogeneity (1: each class holds one view, perfectly aligned; random
assignment about 0.1) and average fidelity (class averages against their members' true mean).
The same seed gives the same particles, so two engines are compared on identical data.
With ``--junk`` a share of the picks are junk (empty ice, contamination, carbon edges,
aggregates) and ``--off-centre`` moves picks up to that many pixels off the particle: both
scores then count true particles only, and two more columns say how well the classes separate
them from junk (the best selection the truth allows: the classes that are mostly true particles,
its precision and recall of true particles), next to the selection Live2D proposes (classes
scored 0.5 or more by live2d.class_quality) and to the particles of that selection the
particle curation keeps (live2d.curation, at ``--curation-cut``; what exports hold):

    python bench/quality.py                                     # built-in engine
    python bench/quality.py --engine cistem --cistem-bin DIR    # the same data through cisTEM
    python bench/quality.py --particles 1200 --box 64 --pixel-size 3 --views 6 --snr 0.05 \\
        --classes 8 --startup-cycles 4 --refinement-cycles 2 --high-res-initial 30 \\
        --high-res-final 9
    python bench/quality.py --particles 10000 --classes 20 --junk 0.3 --off-centre 10

With ``--rescue DIR`` nothing runs: the last cycle of a session kept with ``--keep DIR`` is
scored curated, then with the particles of unselected classes that fit a selected class as well
as its members rescued (live2d.curation.rescued, at several spreads), and how long the search
for them took:

    python bench/quality.py --particles 3000 --classes 12 --junk 0.3 --off-centre 10 --keep K
    python bench/quality.py --rescue K

With ``--learn-marks N``, after the job the N classes of its last cycle whose proposal is most
wrong against the truth are marked as the truth says (the wrong ones with the most misplaced
particles first; then, if fewer are wrong, the right ones scored nearest 0.5), as a user would,
and the proposal learned from those marks (live2d.learned_proposal) is compared with the scores'
on the classes left unmarked: precision and recall of true particles, before and after:

    python bench/quality.py --particles 3000 --classes 12 --junk 0.3 --off-centre 10 \
        --learn-marks 3 --seed 1 --keep /tmp/seed1
    python bench/quality.py --learn-marks 3 --keep /tmp/seed1 --reuse   # again, on that job

With ``--stream START STEP`` the particles arrive as in a session: an ab initio job on the first
START, then a streaming update every STEP more; and, on a copy of the same start, one seeded
job over all of them, the full-pass job streaming is measured against (the last two rows):

    python bench/quality.py --particles 3000 --classes 12 --junk 0.3 --off-centre 10 \
        --stream 1000 500

With ``--stream`` each update also prints the classes it re-seeded because they duplicated
another (live2d.engines.builtin.averages.reseed_duplicates) and the particles left waiting for
that, and, against the truth, the similarity (view_similarity) of the averages of pairs of
classes holding the same view (duplicates) and different views (the highest of those); at the
end, how many pairs of each kind reach some thresholds. ``--duplicate-similarity 2`` turns the
re-seeding off, to compare:

    python bench/quality.py --particles 3000 --box 64 --pixel-size 3 --classes 16 --views 12 \
        --stream 1000 500 --duplicate-similarity 2

``--inject-duplicate`` makes the ab initio job's last class a turned copy of the one before, in
both sessions: one view in two classes, and the view the last class held left to the others.

With ``--spare S`` an idle engine re-visits older batches between updates, as a streaming
session's does (live2d.streaming.spare_revisit_due): up to S re-visited particles per new one
between arrivals (the time an engine S times faster than collection has left), and, once the
last particles arrived, until every batch was aligned against the classes that hold them all.
Each job's particle-passes (particles classified, summed over its cycles) are printed:

    python bench/quality.py --particles 6000 --classes 20 --junk 0.3 --off-centre 10 \
        --stream 1000 1000 --spare 2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

from live2d.curation import curate_cycle, cycle_shares, rescued, selected_fits
from live2d.engines.builtin import averages
from live2d.engines.builtin.io import write_classes
from live2d.evaluate import (
    classified_picks,
    curated_selection,
    score_cycle,
    selection_of,
    truth_rows,
)
from live2d.history import particle_table, read_history
from live2d.imaging import rotate
from live2d.mrc import read_images
from live2d.schedule import Settings
from live2d.selection import SelectionState, changed_proposals, follow_cycle, mark, proposed
from live2d.session import Session
from live2d.simulate import simulate, truth_dir_for
from live2d.warp import read_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("builtin", "cistem"), default="builtin")
    parser.add_argument("--cistem-bin", help="folder holding refine2d and merge2d")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="of the simulated particles")
    parser.add_argument("--junk", type=float, default=0.0, help="fraction of junk picks")
    parser.add_argument("--off-centre", type=float, default=0.0,
                        help="picks up to this many pixels off centre (0: a good picker)")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--startup-cycles", type=int, default=5)
    parser.add_argument("--refinement-cycles", type=int, default=2)
    parser.add_argument("--high-res-initial", type=float, default=40.0)
    parser.add_argument("--high-res-final", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--curation-cut", type=float, default=Settings().curation_cut,
                        help="the particle curation's cut (robust SDs below the class median)")
    parser.add_argument("--keep", type=Path, help="work here and keep the files (default: a "
                                                  "temporary folder)")
    parser.add_argument("--revisit", type=float, default=Settings().stream_revisit,
                        help="with --stream: re-visited particles per new particle")
    parser.add_argument("--rescue", type=Path, metavar="DIR",
                        help="score the rescue on the last cycle of a session kept with --keep")
    parser.add_argument("--learn-marks", type=int, default=0, metavar="N",
                        help="mark the N classes whose proposal is most wrong; compare the "
                             "learned proposal with the scores' on the other classes")
    parser.add_argument("--stream", type=int, nargs=2, metavar=("START", "STEP"),
                        help="ab initio on START particles, then a streaming update every STEP "
                             "more; compared with one seeded job on them all")
    parser.add_argument("--duplicate-similarity", type=float,
                        default=averages.DUPLICATE_SIMILARITY,
                        help="with --stream: re-seed a class whose average correlates this well "
                             "with another's (above 1: never)")
    parser.add_argument("--inject-duplicate", action="store_true",
                        help="with --stream: after the ab initio job, the last class becomes a "
                             "turned copy of the one before (a view lost, one view in two "
                             "classes), in both sessions")
    parser.add_argument("--spare", type=float, metavar="S",
                        help="with --stream: re-visits in spare time, up to S re-visited "
                             "particles per new one between updates, then a last sweep")
    parser.add_argument("--seeded-seeds", type=int, nargs="+", default=[0], metavar="SEED",
                        help="with --stream: run the seeded job once per engine seed (the "
                             "session's seed setting), each from the same start: how far "
                             "two seeded jobs on the same particles differ")
    parser.add_argument("--no-seeded", action="store_true",
                        help="with --stream: leave the seeded job out (it does not depend on "
                             "the streaming settings)")
    parser.add_argument("--mark-cycle", type=int, help="with --learn-marks: mark this cycle's "
                        "classes (default: the last); later cycles are measured too")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep and --learn-marks: the job kept there, not a new one")
    args = parser.parse_args()
    if args.rescue:
        score_rescue(args.rescue, args.curation_cut)
        return
    if args.reuse:
        if not (args.keep and args.learn_marks):
            parser.error("--reuse needs --keep (a folder a finished run kept) and --learn-marks")
        output = args.keep / "classification"
        learn_from_marks(output, args.keep / "warp", read_history(output), args.learn_marks,
                         args.mark_cycle)
        return
    if args.stream:
        averages.DUPLICATE_SIMILARITY = args.duplicate_similarity  # the session runs in here
        stream(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        warp = root / "warp"
        simulate(warp, particles=args.particles, per_micrograph=200, box=args.box,
                 pixel_size=args.pixel_size, snr=args.snr, views=args.views, seed=args.seed,
                 junk=args.junk, off_centre=args.off_centre)
        values = {"classes": args.classes, "startup_cycles": args.startup_cycles,
                  "refinement_cycles": args.refinement_cycles,
                  "high_res_initial": args.high_res_initial,
                  "high_res_final": args.high_res_final,
                  "particles_per_class": max(1, args.particles // args.classes),
                  "first_job_at": 1, "mode": "abinit"}
        if args.threads:
            values["threads"] = args.threads
        session = Session(warp, root / "classification", engine=args.engine,
                          device=args.device, cistem_bin=args.cistem_bin,
                          settings=Settings(**values))
        began = time.monotonic()
        try:
            session.run_job()
            history = session.history
            engine = session.engine.describe()
        finally:
            session.close()
        wall = time.monotonic() - began
        describe(args, engine)
        print_header()
        for record in history:
            if record.block != "start":
                print_row(record, root / "classification", warp, args.curation_cut)
        print(f"job: {len(history)} cycles in {wall:.0f} s")
        if args.learn_marks:
            learn_from_marks(root / "classification", warp, history, args.learn_marks,
                             args.mark_cycle)


def describe(args: argparse.Namespace, engine: str) -> None:
    print(f"{engine}; {args.particles} picks of {args.box} px at {args.pixel_size} Å/px, "
          f"{args.views} views, SNR {args.snr:g}, junk {args.junk:.0%}, off centre "
          f"{args.off_centre:g} px, seed {args.seed}; {args.classes} classes")


def print_header() -> None:
    print("cycle  block        high-res  used  homogeneity  fidelity  classes  "
          "best-precision  best-recall  auto-precision  auto-recall  curated-precision  "
          "curated-recall  seconds")


def print_row(record, output: Path, warp: Path, cut: float) -> None:
    """One cycle's scores against the truth, as the table's row."""
    scores, best, auto = score_cycle(output, record.number, truth_dir_for(warp),
                                     0.6 * read_settings(warp).diameter,
                                     proposed=proposed(record))
    table = particle_table(output, record)
    curated = curated_selection(output, record.number, truth_dir_for(warp), proposed(record),
                                curate_cycle(output, record, cut, table).keep)
    print(f"{record.number:5d}  {record.block:<11s} {record.high_res:6.1f} Å "
          f"{record.fraction:5.0%}  {scores.homogeneity:11.3f}  {scores.fidelity:8.3f}  "
          f"{scores.classes_used:7d}  {best.precision:14.3f}  {best.recall:11.3f}  "
          f"{auto.precision:14.3f}  {auto.recall:11.3f}  "
          f"{curated.precision:17.3f}  {curated.recall:14.3f}  "
          f"{record.finished - record.started:7.1f}", flush=True)


def score_rescue(root: Path, cut: float) -> None:
    """The last cycle of the session kept in ``root``: its proposed selection curated, then with
    the unselected classes' particles rescued at each spread (robust SDs below the median
    member's fit)."""
    output, warp = root / "classification", root / "warp"
    record = read_history(output)[-1]
    table = particle_table(output, record)
    chosen = proposed(record)
    keep = curate_cycle(output, record, cut, table).keep
    shares = cycle_shares(output, record, table)
    began = time.monotonic()
    fits = selected_fits(output, record, chosen, keep, table)
    seconds = time.monotonic() - began
    labels = table["2DCLS"].to_numpy()
    candidates = int(((labels > 0) & ~table["2DCLS"].isin(chosen).to_numpy()).sum())
    print(f"cycle {record.number}, classes {chosen} proposed; {candidates} particles in the "
          f"others searched against them in {seconds:.0f} s")
    print("selection               precision  recall  rescued")
    truth = truth_dir_for(warp)
    curated = curated_selection(output, record.number, truth, chosen, keep)
    print(f"curated                 {curated.precision:9.3f}  {curated.recall:6.3f}        0")
    for spread in (-1.0, 0.0, 1.0, 2.0):
        into = rescued(fits, labels, chosen, shares, cut, spread) > 0
        both = curated_selection(output, record.number, truth, chosen, keep, into)
        print(f"curated + rescued {spread:+.0f} SD {both.precision:9.3f}  {both.recall:6.3f}  "
              f"{int(into.sum()):7d}")


def learn_from_marks(output: Path, warp: Path, history: list, n_marks: int,
                     mark_cycle: int | None = None) -> list[dict]:
    """Mark ``n_marks`` classes of cycle ``mark_cycle`` (default: the last) as the truth says,
    those whose proposal is most wrong first; print, for that cycle and each later one (the
    marks carried as the session carries them), how the proposal fares on the unmarked classes
    before and after it learned from the marks. Returns the rows printed."""
    truth = truth_dir_for(warp)
    scored = [r for r in history if r.assessed]
    marked = scored[-1] if mark_cycle is None else next(r for r in scored
                                                         if r.number == mark_cycle)
    labels, true_particle = classified_picks(output, marked.number, truth)
    numbers = [k for k in range(1, len(marked.class_counts) + 1) if (labels == k).any()]
    good = {k: bool(true_particle[labels == k].mean() > 0.5) for k in numbers}
    before = proposed(marked)

    def misplaced(k: int) -> int:  # the true particles it leaves out, or the junk it lets in
        wrong = true_particle[labels == k] if good[k] else ~true_particle[labels == k]
        return int(wrong.sum()) if (k in before) != good[k] else 0

    score = marked.class_score
    ranked = sorted(numbers, key=lambda k: (-misplaced(k), abs(score[k - 1] - 0.5)))
    marks = {str(k): "good" if good[k] else "junk" for k in ranked[:n_marks]}
    state = SelectionState.load(output)
    mark(state, marked, marks)
    print(f"marked on cycle {marked.number}: "
          + ", ".join(f"{k} {v} ({misplaced(int(k))} misplaced)" for k, v in marks.items()))
    print("cycle  unmarked classes: precision  recall  wrong-classes  (scores' -> learned)  "
          "changed")
    rows = []
    previous = None
    for record in [r for r in scored if r.number >= marked.number]:
        if previous is not None:
            follow_cycle(state, previous, record, None,
                         read_images(output / record.classes), 1.0)
        previous = record
        labels, true_particle = classified_picks(output, record.number, truth)
        numbers = [k for k in range(1, len(record.class_counts) + 1) if (labels == k).any()]
        good = {k: bool(true_particle[labels == k].mean() > 0.5) for k in numbers}
        scores_said, learned = proposed(record), proposed(record, state)
        unmarked = [k for k in numbers if str(k) not in state.marks]
        picks = np.isin(labels, unmarked)
        row = {"cycle": record.number, "changed": changed_proposals(scores_said, learned,
                                                                     state.marks)}
        for name, proposal in (("before", scores_said), ("after", learned)):
            chosen = [k for k in proposal if k in unmarked]
            fared = selection_of(chosen, labels[picks], true_particle[picks])
            row[name] = [round(fared.precision, 4), round(fared.recall, 4),
                         sum((k in proposal) != good[k] for k in unmarked)]
        print(f"{record.number:5d}  {row['before'][0]:.3f} -> {row['after'][0]:.3f}  "
              f"{row['before'][1]:.3f} -> {row['after'][1]:.3f}  "
              f"{row['before'][2]:2d} -> {row['after'][2]:2d}  {row['changed'] or ''}")
        rows.append(row)
    print("learn-marks " + json.dumps({"output": str(output), "marks": marks, "rows": rows}))
    return rows


def stream(args: argparse.Namespace) -> None:
    """Streaming updates as the particles arrive, then the seeded job they stand in for."""
    start, step = args.stream
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        warp = root / "warp"

        # Whole micrographs arrive: with the same seed, those written before do not change
        # (a micrograph written again with more particles would hold other images).
        per_micrograph = math.gcd(start, step, 200)

        def arrive(count: int) -> None:
            simulate(warp, particles=count, per_micrograph=per_micrograph, box=args.box,
                     pixel_size=args.pixel_size, snr=args.snr, views=args.views,
                     seed=args.seed, junk=args.junk, off_centre=args.off_centre)

        arrive(start)
        pairs: dict[str, list[float]] = {"same view": [], "different views": []}
        values = {"classes": args.classes, "startup_cycles": args.startup_cycles,
                  "refinement_cycles": args.refinement_cycles,
                  "high_res_initial": args.high_res_initial,
                  "high_res_final": args.high_res_final,
                  "particles_per_class": max(1, start // args.classes), "first_job_at": 1,
                  "mode": "abinit", "stream_every": step, "stream_revisit": args.revisit}
        if args.threads:
            values["threads"] = args.threads
        streamed = root / "streamed"
        session = Session(warp, streamed, engine="builtin", device=args.device,
                          settings=Settings(**values))
        try:
            session.run_job("abinit")
            describe(args, session.engine.describe())
            print_header()
            print_row(session.history[-1], streamed, warp, args.curation_cut)
            if args.inject_duplicate:
                duplicate_last_class(streamed / session.history[-1].classes)
            shutil.copytree(streamed, root / "seeded")  # the same classes to start from
            for count in range(start + step, args.particles + step, step):
                arrive(min(count, args.particles))
                began = time.monotonic()
                session.run_job("stream")
                print_row(session.history[-1], streamed, warp, args.curation_cut)
                print(f"  update over {session.store.count} particles: "
                      f"{time.monotonic() - began:.1f} s")
                print_duplicates(session.history[-1], streamed, warp, pairs)
                if args.spare is not None:
                    last = count >= args.particles  # then idle until every batch is swept
                    spare_revisits(session, math.inf if last else args.spare * step,
                                   streamed, warp, args.curation_cut)
            print(f"particle-passes: {particle_passes(session.history):,} streaming "
                  f"(ab initio and updates)")
        finally:
            session.close()
        print_thresholds(pairs)
        if args.no_seeded:
            return
        for engine_seed in args.seeded_seeds:
            folder = root / "seeded"
            if engine_seed != args.seeded_seeds[-1]:  # the others on copies of the same start
                folder = root / f"seeded_{engine_seed}"
                shutil.copytree(root / "seeded", folder)
            seeded = Session(warp, folder, engine="builtin", device=args.device)
            try:
                seeded.update_settings({"seed": engine_seed})
                before = len(seeded.history)
                seeded.run_job("seeded")
                print("the same particles, one seeded job (startup ramp, then refinement), "
                      f"engine seed {engine_seed}:")
                print_row(seeded.history[-1], folder, warp, args.curation_cut)
                print(f"particle-passes: {particle_passes(seeded.history):,} ab initio and "
                      f"seeded job, {particle_passes(seeded.history[before:]):,} of them the "
                      "seeded job")
            finally:
                seeded.close()


def duplicate_last_class(classes: Path) -> None:
    """The last class of ``classes`` replaced by the one before it, turned a quarter."""
    images = torch.as_tensor(read_images(classes).copy())
    images[-1] = rotate(images[-2:-1], np.array([90.0]))[0]
    with mrcfile.open(classes) as mrc:
        pixel_size = float(mrc.voxel_size.x)
    write_classes(classes, images, pixel_size)


def print_duplicates(record, output: Path, warp: Path, pairs: dict[str, list[float]]) -> None:
    """The classes an update re-seeded as duplicates, and the similarity of its classes'
    averages by what the truth says they hold (classes at least 60 % one view, 5 members or
    more), added to ``pairs``."""
    reseeded = record.reseeded
    table = particle_table(output, record)
    view = np.array([int(r["view"]) for r in truth_rows(output, table, truth_dir_for(warp))])
    labels = table["2DCLS"].to_numpy(dtype=np.int64)
    held = {}
    for k in range(1, len(record.class_counts) + 1):
        members = view[(labels == k) & (view >= 0)]
        if len(members) >= 5:
            top = np.bincount(members).argmax()
            if (members == top).mean() >= 0.6:
                held[k] = int(top)
    classes = read_images(output / record.classes)
    settings = read_settings(warp)
    mask_px = 0.6 * settings.diameter / settings.pixel_size
    numbers = sorted(held)
    similarity = averages.view_similarity(torch.as_tensor(classes[[k - 1 for k in numbers]]),
                                          mask_px)
    same, different = [], []
    for i, j in zip(*np.triu_indices(len(numbers), 1), strict=True):
        value = float(max(similarity[i, j], similarity[j, i]))
        (same if held[numbers[i]] == held[numbers[j]] else different).append(value)
    pairs["same view"] += same
    pairs["different views"] += different
    print(f"  re-seeded as duplicates: {reseeded or 'none'}, {record.waiting} particles "
          f"waiting; same-view pairs {len(same)} (similarity "
          f"{', '.join(f'{v:.2f}' for v in sorted(same)) or '-'}), different-view pairs "
          f"{len(different)} (highest {max(different, default=float('nan')):.2f})")


def print_thresholds(pairs: dict[str, list[float]]) -> None:
    """How many class pairs of each kind, over every update, reach each threshold."""
    print("pairs of classes reaching a similarity: " + "  ".join(
        f"{name} ({len(values)}): " + ", ".join(
            f">={t:.2f} {sum(v >= t for v in values)}" for t in (0.7, 0.8, 0.85, 0.9, 0.95))
        for name, values in pairs.items()))


def spare_revisits(session: Session, budget: float, output: Path, warp: Path,
                   cut: float) -> None:
    """What an idle engine does before the next particles arrive: spare-time re-visits while
    the session finds them due, up to ``budget`` re-visited particles; the last one's row."""
    revisited = cycles = 0
    while revisited < budget and session.spare_revisit_due():
        session.run_job(spare=True)
        revisited += session.history[-1].revisited
        cycles += 1
    if cycles:
        print_row(session.history[-1], output, warp, cut)
        print(f"  spare time: {revisited:,} particles re-visited in {cycles} update(s)")


def particle_passes(records: list) -> int:
    """Particles classified over ``records``' cycles: a streaming update's batches classified
    in it, any other cycle's share of its particles (the random start classifies none)."""
    passes = 0
    for record in records:
        if record.streamed:
            passes += sum(stop - start for start, stop, aligned in record.batches
                          if aligned == record.number)
        elif record.block != "start":
            passes += round(record.fraction * (record.particles - record.left_out))
    return passes


if __name__ == "__main__":
    main()
