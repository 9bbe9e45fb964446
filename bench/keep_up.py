"""Does Live2D keep up with the microscope? A Warp folder fills at a set rate while `live2d run`
classifies it with its default automatic jobs (ab initio, then streaming updates), and the
bench prints, after the run, every cycle's particles, backlog and latency (a particle's stack
written -> the particle in published classes) and the summary `live2d status` gives.

The particles are simulated beforehand into a source folder (projections of the shipped
model with CTF, junk and off-centre picks, EPU names): ``--distinct`` micrographs, which the
feeder hands out again under new EPU names once used (simulating is slower than collecting;
repeats cost the engine what new particles do). During the run the feeder only links each
micrograph's stack into the live folder and rewrites Warp's star files, as Warp does, so the
cores measured are the classification's.

    python bench/keep_up.py                          # 150,000 an hour for 40 minutes, 128 px
    python bench/keep_up.py --rate 150000 --minutes 40 --box 128 --classes 50
    python bench/keep_up.py --minutes 2 --box 64 --first-job-at 2000   # a quick look
    python bench/keep_up.py --engine cistem --cistem-bin ../shared/cistem/bin --rate 50000
    python bench/keep_up.py --dask-workers 2          # the engine's slices on 2 Dask workers
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from live2d.forecast import particle_times
from live2d.history import read_history
from live2d.simulate import MODEL, epu_movie_name, simulate
from live2d.store import read_committed_table
from live2d.streaming import keeping_up

PER_MICROGRAPH = 200


def star_parts(star: Path) -> tuple[str, list[str]]:
    """A Warp star file as its header and its particle rows."""
    lines = star.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line and not line.startswith(("_", "d",
                                                                                 "l")))
    return "\n".join(lines[:first]) + "\n", [line for line in lines[first:] if line.strip()]


def acquired_now(movie: str) -> str:
    """EPU's name ``movie`` with the time of its acquisition now (UTC): the latency (stack
    written -> in the classes) is measured from it where the store copies the particles."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    return re.sub(r"_\d{8}_\d{6}_fractions$", f"_{stamp}_fractions", movie)


def feed(source: Path, live: Path, micrographs: int, interval: float, stop: threading.Event,
         fed: list[int]) -> None:
    """Every ``interval`` seconds link one micrograph's stack (the source's, in turn, under the
    next EPU name), then rewrite the star files with its rows added (in place, as Warp does)."""
    stars = sorted(source.glob("*particles_*.star"))
    header, source_rows = star_parts(stars[0])
    distinct = len(source_rows) // PER_MICROGRAPH
    (live / "particles").mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "previous.settings", live / "previous.settings")
    rows: list[str] = []
    started = time.monotonic()
    for index in range(micrographs):
        if stop.wait(max(0.0, started + index * interval - time.monotonic())):
            return
        original, movie = epu_movie_name(index % distinct), acquired_now(epu_movie_name(index))
        stack = live / "particles" / f"{movie}_{MODEL}.mrcs"
        # A new file written now, as Warp writes it: a hard link would share its time with the
        # source and every earlier link to it.
        shutil.copyfile(source / "particles" / f"{original}_{MODEL}.mrcs", stack)
        first = (index % distinct) * PER_MICROGRAPH
        rows += [row.replace(original, movie)
                 for row in source_rows[first:first + PER_MICROGRAPH]]
        text = header + "\n".join(rows) + "\n\n"
        for star in stars:
            (live / star.name).write_text(text)
        fed[0] = len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150_000, help="particles an hour")
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--first-job-at", type=int, default=None,
                        help="the first ab initio job's particle count (default: the setting's)")
    parser.add_argument("--distinct", type=int, default=50,
                        help="micrographs simulated (handed out again once used)")
    parser.add_argument("--root", type=Path, default=None, help="keep the folders here")
    parser.add_argument("--engine", choices=("builtin", "cistem"), default="builtin")
    parser.add_argument("--cistem-bin", help="where refine2d and merge2d are (--engine cistem)")
    parser.add_argument("--dask-workers", type=int, default=0,
                        help="run the engine's slices on a local Dask cluster of this many "
                             "single-threaded workers (default: in the run's process)")
    args = parser.parse_args()

    total = int(args.rate * args.minutes / 60.0)
    micrographs = -(-total // PER_MICROGRAPH)
    interval = 3600.0 * PER_MICROGRAPH / args.rate
    root = args.root or Path(tempfile.mkdtemp(prefix="live2d-keep-up-"))
    source, live, output = root / "source", root / "warp", root / "live2d"
    began = time.monotonic()
    distinct = min(micrographs, args.distinct)
    # A source kept from an earlier run (--root) is used as it is: simulating it again would
    # compute every particle anew only to find the stacks written.
    if len(list((source / "particles").glob("*.mrcs"))) < distinct:
        simulate(source, particles=distinct * PER_MICROGRAPH, box=args.box,
                 pixel_size=args.pixel_size, junk=0.2, off_centre=6.0, seed=1)
    print(f"prepared {distinct * PER_MICROGRAPH:,} particles of {args.box} px in "
          f"{time.monotonic() - began:.0f} s; feeding a micrograph of {PER_MICROGRAPH} every "
          f"{interval:.1f} s for {args.minutes:g} minutes", flush=True)

    live.mkdir(parents=True)
    command = [sys.executable, "-m", "live2d.cli", "run", str(live), "--output", str(output),
               "--classes", str(args.classes), "--engine", args.engine]
    if args.first_job_at:
        command += ["--first-job-at", str(args.first_job_at)]
    if args.cistem_bin:
        command += ["--cistem-bin", args.cistem_bin]
    if args.dask_workers:
        config = root / "cluster.json"
        config.write_text(json.dumps({"n_workers": args.dask_workers}))
        command += ["--cluster", "local", "--cluster-config", str(config)]
    stop, fed = threading.Event(), [0]
    feeder = threading.Thread(target=feed,
                              args=(source, live, micrographs, interval, stop, fed))
    feeder.start()
    while not (live / "previous.settings").exists():
        time.sleep(0.1)
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stop.wait(args.minutes * 60.0)
    finally:
        stop.set()
        feeder.join()
        run.send_signal(signal.SIGINT)  # ends after the running cycle is cancelled
        try:
            run.wait(timeout=300)
        except subprocess.TimeoutExpired:
            run.kill()

    history = read_history(output)
    table = read_committed_table(output)
    written = particle_times(table)[0]
    print(f"\n{fed[0]:,} particles written, {len(table):,} imported, {len(history)} cycles")
    print(f"{'cycle':>5} {'job':>8} {'ended (min)':>11} {'in classes':>10} {'new':>7} "
          f"{'latency p50/max (min)':>22}")
    start = history[0].started if history else 0.0
    for record in history:
        latency = (f"{record.latency[0] / 60:.1f} / {record.latency[2] / 60:.1f}"
                   if record.latency else "")
        print(f"{record.number:>5} {record.job_type:>8} {(record.finished - start) / 60:>11.1f} "
              f"{sum(record.class_counts):>10,} {record.new_particles or 0:>7,} {latency:>22}")
    current = [r for r in history if r.generation == history[-1].generation] if history else []
    state = keeping_up(current, written)
    if state is not None:
        print("\n" + "\n".join(state.lines()))
    print(f"\nfolders kept in {root}" if args.root else "")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
