"""Shared by the fault-injection suite and bench/soak.py: a small live session, `live2d run`
as a subprocess, and the invariants that must hold after any fault and restart."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mrcfile

from live2d.history import particle_table, read_history
from live2d.output_folder import STREAM_SUMS, batch_halves_name, batch_rows_name, batch_sums_name
from live2d.simulate import simulate, truth_dir_for
from live2d.source_images import open_images
from live2d.store import ParticleStore

SIMULATION = {"per_micrograph": 20, "box": 32, "pixel_size": 4.0, "snr": 0.5, "views": 3}
RUN_OPTIONS = ["--classes", "3", "--particles-per-class", "30", "--startup-cycles", "4",
               "--refinement-cycles", "2", "--high-res-initial", "30", "--high-res-final",
               "16", "--threads", "1", "--first-job-at", "60", "--update-every", "60",
               "--stream-every", "60", "--poll-seconds", "0.5", "--engine", "builtin",
               "--angular-step", "3"]


def grow(warp: Path, particles: int, seed: int = 0) -> None:
    simulate(warp, particles=particles, seed=seed, **SIMULATION)


class Microscope(threading.Thread):
    """Adds a micrograph to the Warp folder every ``interval`` seconds up to ``total``."""

    def __init__(self, warp: Path, start: int, total: int, interval: float) -> None:
        super().__init__(name="microscope", daemon=True)
        self.warp, self.count, self.total, self.interval = warp, start, total, interval
        self.finished = threading.Event()
        # Held by whoever breaks the folder on purpose, so Warp's writes do not undo the fault.
        self.lock = threading.Lock()

    def run(self) -> None:
        while self.count < self.total:
            time.sleep(self.interval)
            with self.lock:
                self.count = min(self.total, self.count + SIMULATION["per_micrograph"])
                grow(self.warp, self.count)
        self.finished.set()


def run_command(warp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "live2d.cli", "run", str(warp), *RUN_OPTIONS, *extra]


def run_once_here(warp: Path, *extra: str) -> None:
    """`live2d run WARP --once` in this process, which spares a second Python its seconds of
    imports where no fault needs a process of its own (what it says goes to this stderr)."""
    from live2d.cli import main as cli_main

    assert cli_main(["run", str(warp), *RUN_OPTIONS, "--once", *extra]) == 0


def start_run(warp: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(run_command(warp, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


# Forks `live2d run` processes from one Python that imported Live2D (and torch) once, and does
# nothing else: each run is a process of its own, killed by its pid, reaped by the kernel.
FORKING_RUNNER = """
import json, os, signal, sys
import live2d.engines.builtin, live2d.importer, live2d.session  # what a run imports, once
from live2d.cli import main
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for line in sys.stdin:
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(devnull, stream)
    try:
        code = main(json.loads(line))
    except BaseException:
        code = 1
    os._exit(code or 0)
"""


class ForkedRuns:
    """`live2d run` processes started without a fresh Python's seconds of imports, for faults
    that need a run's process but not its start-up (a SIGKILL at some moment of the run)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", FORKING_RUNNER],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)

    def start(self, warp: Path, *extra: str) -> int:
        """The pid of a new `live2d run WARP` (RUN_OPTIONS, ``extra``)."""
        self.process.stdin.write(json.dumps(["run", str(warp), *RUN_OPTIONS, *extra]) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    @staticmethod
    def kill(pid: int) -> None:
        """SIGKILL, and wait until the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, f"run {pid} outlived SIGKILL"
            time.sleep(0.01)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


@contextlib.contextmanager
def run_ended_by_sigterm(warp: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """`live2d run` in a process for the block, which SIGTERM must then end cleanly (exit 0);
    killed if the block fails, so no run outlives its test."""
    process = start_run(warp, *extra)
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def warp_image_names(warp: Path) -> list[str]:
    """What Warp wrote, from the simulation's truth (the star file itself may be broken)."""
    with open(truth_dir_for(warp) / "particles.csv") as handle:
        return [row["image_name"] for row in csv.DictReader(handle)]


def check_invariants(warp: Path, out: Path, complete: bool = True) -> dict:
    """Every Warp particle imported exactly once (all of them if ``complete``), state readable,
    history contiguous, the latest classes readable. Returns figures for reports."""
    store = ParticleStore(out)  # opening reconciles whatever a kill left
    names = store.read_table()["ORIGNAME"].tolist()
    assert len(names) == len(set(names)), "a particle was imported twice"
    if store.box:  # (a kill may land before the store was first made)
        images = open_images(store.images_path)  # the copy, or Warp's stacks read in place
        assert len(images) == len(names), "stack and star disagree"
    expected = warp_image_names(warp)
    if complete:
        assert names == expected, "the store does not hold exactly Warp's particles, in order"
    else:
        assert set(names) <= set(expected), "the store holds particles Warp never wrote"
    history = read_history(out)
    assert [c.number for c in history] == list(range(len(history))), "history has a gap"
    if history:
        latest = history[-1]
        with mrcfile.open(out / latest.classes) as mrc:
            assert mrc.data.shape[0] == len(latest.class_counts)
        table = particle_table(out, latest)
        assert len(table) == latest.particles
        if latest.batches:  # a streaming update: each particle in one batch, its sums kept
            covered = sorted(i for start, stop, _ in latest.batches for i in range(start, stop))
            assert covered == list(range(latest.particles)), "a particle in no or two batches"
            assert sum(latest.class_counts) == \
                latest.particles - latest.left_out - latest.waiting
            in_classes = table["2DCLS"].between(1, len(latest.class_counts))
            assert int(in_classes.sum()) == sum(latest.class_counts), "rows and counts differ"
            for start, _, cycle in latest.batches:
                for name in (batch_sums_name, batch_halves_name, batch_rows_name):
                    assert (out / STREAM_SUMS / name(start, cycle)).is_file()
    return {"particles": len(names), "cycles": len(history)}
