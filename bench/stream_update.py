"""What one streaming update costs as the session grows: the same new particles at every size.

For each session size N it prepares a Warp 1.x folder of N particles (32-px boxes, micrographs
of 200, as bench/session_growth.py writes them), imports it, and puts in place what a session
that has streamed up to N would hold: classes, a star of every particle's class and alignment,
and a streaming record whose batches (of ``stream_every``) each have kept class sums. That state
is made up (random classes and assignments): classifying N particles first would take the cores
this measures. Then ``--new`` particles arrive and one update runs with the built-in engine
(classifying them and the re-visit budget); then as many again, and the update it prints: the
second, as a session that has been running makes it (the first reads what the session holds
once: the particle table, the batches' rows). It prints the update's wall time, the engine's
part, the rest, and the largest parts of the rest.

    python bench/stream_update.py                          # 20,000 and 200,000 particles
    python bench/stream_update.py --sizes 20000 1000000 --new 10000
    python bench/stream_update.py --engine cistem --cistem-bin ../shared/cistem/bin
    python bench/stream_update.py --sizes 20000 --dask-workers 2   # batches on 2 Dask workers

With ``--engine cistem`` the update runs cisTEM's refine2d on each batch it classifies and
merge2d over every batch's kept dump. The kept dumps are real: refine2d dumps the first batch
against the made-up classes, and every batch keeps a copy of that dump (made up, as the
built-in engine's sums are, but of the size and format merge2d reads at this box and K).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from session_growth import BOX, PER_MICROGRAPH, PIXEL, grow, new_warp_folder, rss_mb

from live2d import cistem_star, cycle, session
from live2d.class_quality import half_sums_key
from live2d.engines.base import CycleParams, CycleRequest, StreamBatch, class_counts
from live2d.engines.builtin import BuiltinEngine
from live2d.engines.builtin.averages import ReducedSums
from live2d.engines.builtin.engine import _write_sums, sums_key
from live2d.engines.builtin.geometry import plan_geometry
from live2d.engines.cistem import CistemEngine, _dump_key
from live2d.executors import DaskExecutor
from live2d.history import CycleHistory, CycleRecord
from live2d.kept_tensors import save_kept
from live2d.output_folder import OutputFolder
from live2d.schedule import Settings, plan_job
from live2d.session import Session
from live2d.streaming import Batch

PARTS = defaultdict(float)


def timed(owner, name: str, label: str) -> None:
    """Count the seconds spent in ``owner.name`` under ``label``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        began = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            PARTS[label] += time.monotonic() - began

    setattr(owner, name, wrapper)


def prepare(root: Path, size: int, settings: Settings, rows: list[str], engine: str,
            cistem_bin: str | None) -> Path:
    """A Warp folder of ``size`` particles and an output folder that has streamed them all."""
    warp = new_warp_folder(root)
    grow(warp, size // PER_MICROGRAPH, rows)
    out = root / "out"
    opened = Session(warp, out, engine=engine, settings=settings, cistem_bin=cistem_bin)
    try:
        opened.import_new()
        store, source = opened.store, opened.importer.source_settings()
        generation = store.generation
        inputs = cycle.CycleInputs(opened.output, store, settings, source, opened.engine,
                                   threading.Event(), set())
        table = store.read_table().drop(columns=list(cistem_star.PROVENANCE_COLUMNS),
                                        errors="ignore")
    finally:
        opened.close()
    output = OutputFolder(out)
    k = settings.classes
    spec = plan_job("stream", settings, size)[0]
    params = cycle.cycle_params(spec, inputs, "stream")
    geometry = plan_geometry(params, BOX, np.random.default_rng(0))
    key = sums_key(geometry, params, k)
    rng = np.random.default_rng(1)
    files = output.cycle(0)
    with mrcfile.new(files.classes, overwrite=True) as mrc:
        mrc.set_data(rng.standard_normal((k, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = PIXEL
    table["2DCLS"] = rng.integers(1, k + 1, len(table))
    table["PSI"] = rng.uniform(0, 360, len(table))
    output.stream_sums.mkdir(exist_ok=True)
    w = geometry.working
    halves_key = half_sums_key(k, BOX, PIXEL, params.high_res, params.invert_contrast)
    edges = [*range(0, size, settings.stream_every), size]
    batches = [Batch(a, b, 0) for a, b in itertools.pairwise(edges)]
    if isinstance(inputs.engine, CistemEngine):
        dump_batches(inputs.engine, output, store.images_path, files.classes, params, k,
                     table, batches)
    for batch in batches:
        sums = ReducedSums(torch.rand(k, w, w), torch.rand(k, w, w // 2 + 1) + 1.0,
                           torch.rand(k) * batch.size / k + 1.0)
        rows = table.iloc[batch.start:batch.stop]
        if not isinstance(inputs.engine, CistemEngine):
            _write_sums(batch.sums_path(output), sums, key, batch.size,
                        class_counts(rows["2DCLS"], k))
        half = int(halves_key["size"])
        save_kept(batch.halves_path(output), halves_key,
                  {"sums": torch.rand(k, 2, half, half)})
        cistem_star.write_star(batch.rows_path(output), rows)
    counts = class_counts(table["2DCLS"], k)
    record = CycleRecord(
        number=0, job=1, job_type="stream", block="update", block_cycle=1, job_cycle=1,
        job_cycles=1, high_res=params.high_res, fraction=1.0, particles=size,
        class_counts=counts, started=time.time(), finished=time.time(), engine="prepared",
        generation=generation, particles_per_second=0.0, classes=files.relative(files.classes),
        star="", thumbnails=files.relative(files.thumbnails),
        batches=[[b.start, b.stop, b.aligned] for b in batches])
    CycleHistory(out).append(record)
    state = json.loads(output.session_state.read_text())
    state.update(jobs_started=1, particles_at_last_job=size)
    state["settings"]["mode"] = "stream"
    output.session_state.write_text(json.dumps(state))
    return warp


def dump_batches(engine: CistemEngine, output: OutputFolder, stack: Path, classes: Path,
                 params: CycleParams, k: int, table: pd.DataFrame,
                 batches: list[Batch]) -> None:
    """Every batch's kept refine2d dump and counts: a real dump of the first batch, copied."""
    first = batches[0]
    work = output.work
    work.mkdir(exist_ok=True)
    star = work / "first_batch.star"
    cistem_star.write_star(star, table.iloc[first.start:first.stop])
    request = CycleRequest(
        stack=stack, star_in=star, star_out=work / "first_batch_out.star",
        classes_out=work / "first_batch.mrc", params=params, n_classes=k, classes_in=classes,
        workdir=work, threads=1,
        batches=(StreamBatch(first.start, first.stop, first.sums_path(output),
                             work / "first_batch.pt", True, None, first.dump_path(output),
                             work / "first_batch.dat"),))
    engine.run_update(request, lambda _: None, threading.Event())
    key = _dump_key(work / "first_batch.dat")
    for batch in batches:
        shutil.copyfile(work / "first_batch.dat", batch.dump_path(output))
        counts = class_counts(table["2DCLS"].iloc[batch.start:batch.stop], k)
        save_kept(batch.sums_path(output), key,
                  {"counts": torch.tensor(counts, dtype=torch.int64), "particles": batch.size})
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--new", type=int, default=10_000, help="particles per update")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--high-res", type=float, default=8.0)
    parser.add_argument("--revisit", type=float, default=0.5, help="stream_revisit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="work here (default: a temporary folder)")
    parser.add_argument("--engine", choices=("builtin", "cistem"), default="builtin")
    parser.add_argument("--cistem-bin", help="where refine2d and merge2d are (--engine cistem)")
    parser.add_argument("--dask-workers", type=int, default=0,
                        help="classify on a local Dask cluster of this many single-threaded "
                             "workers (default: in this process)")
    args = parser.parse_args()
    executor = DaskExecutor(n_workers=args.dask_workers) if args.dask_workers else None
    settings = Settings(classes=args.classes, high_res_final=args.high_res,
                        high_res_initial=max(40.0, args.high_res), stream_every=args.new,
                        stream_revisit=args.revisit, threads=args.threads, mode="stream",
                        angular_step=15.0)
    timed(CistemEngine if args.engine == "cistem" else BuiltinEngine, "run_update", "engine")
    timed(cycle, "_write_input", "input star")
    timed(cycle, "_write_update_input", "input star")
    timed(cycle, "_write_batch_rows", "batch rows")
    timed(cycle, "_left_out", "left-out check")
    timed(cycle, "_assess_classes", "class quality")
    timed(cycle, "_check_outputs", "output check")
    timed(session.Session, "_write_yield", "yield tables")
    timed(session.Session, "_check_cycle_alerts", "alerts")
    timed(cycle, "write_thumbnails", "thumbnails")
    name = "cisTEM" if args.engine == "cistem" else "built-in"
    print(f"{name} engine, {BOX}-px particles at {PIXEL} Å/px, K = {args.classes}, "
          f"{args.high_res} Å, {args.new:,} new per update, stream_revisit {args.revisit}, "
          f"{args.threads} threads" +
          (f", on {args.dask_workers} Dask workers" if args.dask_workers else ""))
    print("particles  update s  engine s  outside s  classified  RSS MB  largest parts outside")
    try:
        for size in args.sizes:
            with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
                root = Path(scratch)
                rows: list[str] = []
                warp = prepare(root, size, settings, rows, args.engine, args.cistem_bin)
                grow(warp, args.new // PER_MICROGRAPH, rows)
                opened = Session(warp, root / "out", engine=args.engine, cistem_bin=args.cistem_bin,
                                 executor=executor)
                try:
                    assert opened.run_job("stream")  # the session's first: caches filled
                    grow(warp, args.new // PER_MICROGRAPH, rows)
                    opened.import_new()
                    PARTS.clear()
                    began = time.monotonic()
                    assert opened.run_job("stream")
                    seconds = time.monotonic() - began
                    latest = opened.history[-1]
                finally:
                    opened.close()
                engine = PARTS.pop("engine", 0.0)
                parts = ", ".join(f"{name} {value:.1f}" for name, value in
                                  sorted(PARTS.items(), key=lambda item: -item[1])[:4])
                print(f"{size:9,d}  {seconds:8.1f}  {engine:8.1f}  {seconds - engine:9.1f}  "
                      f"{latest.new_particles + latest.revisited:10,d}  {rss_mb():6.0f}  {parts}",
                      flush=True)
    finally:
        if executor is not None:
            executor.close()


if __name__ == "__main__":
    main()
