"""Streaming updates under SIGKILL: nothing lost, nothing counted twice, whenever the kill lands."""

import re
import signal
import time
from pathlib import Path

import numpy as np
from harness import Microscope, check_invariants, grow, run_once_here, start_run

from live2d.history import read_history

# Updates every 40 new particles (or 2 s), re-visiting as many older ones: a kill lands in one.
STREAM = ("--stream-every", "40", "--stream-interval", "2", "--stream-revisit", "1",
          "--startup-cycles", "1", "--refinement-cycles", "1")
# The first and the last log line of an update: "cycle 4 (job 2, streaming update) at ..." and
# "cycle 4 (job 2, cycle 1 of 1) done in ...".
UPDATE_LINE = re.compile(r"\(job \d+, (streaming update)\)|\(job \d+, cycle \d+ of \d+\) done in")


def inside_an_update(log: Path, offset: int) -> bool:
    """Whether the run that started when ``log`` was ``offset`` bytes long is inside an update:
    it began one and has not finished it. (Not the scratch folder: a killed run leaves it
    until the next run opens the session.)"""
    if not log.exists():
        return False
    with open(log, "rb") as handle:
        handle.seek(offset)
        lines = UPDATE_LINE.findall(handle.read().decode(errors="replace"))
    return bool(lines) and lines[-1] != ""


def test_sigkills_during_streaming_updates_lose_and_count_nothing_twice(tmp_path):
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 60)
    run_once_here(warp, *STREAM)  # the ab initio job: updates follow
    microscope = Microscope(warp, 60, 240, interval=2.0)
    microscope.start()
    log = out / "live2d.log"
    rng = np.random.default_rng(3)
    inside = kills = 0
    # At least four kills: every other one aimed inside an update (its batches classified,
    # merged, committed), the rest anywhere (start-up, import while Warp writes, between
    # updates); more, up to eight, until two aimed ones have landed inside, since on a loaded
    # machine an update can end before the kill. (Aiming by the scratch folder failed: a killed
    # update leaves it until the next run opens the session, so later aims landed in start-up.)
    while kills < 4 or (inside < 2 and kills < 8):
        offset = log.stat().st_size
        process = start_run(warp, *STREAM)
        if kills % 2:  # anywhere, long enough for some updates to finish
            time.sleep(rng.uniform(3.0, 6.0))
        else:  # aim inside an update: a moment after this run starts one
            # Long enough for a loaded machine, where the run may still be starting Python.
            deadline = time.monotonic() + 30.0
            while not inside_an_update(log, offset) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        # Read after the kill: what the log holds then is what the run had done.
        inside += inside_an_update(log, offset) and not kills % 2
        kills += 1
        check_invariants(warp, out, complete=False)
    microscope.join()
    run_once_here(warp, *STREAM)  # reads only what the killed runs left on disk
    figures = check_invariants(warp, out, complete=True)
    latest = read_history(out)[-1]
    assert latest.job_type == "stream" and figures["particles"] == 240 == latest.particles
    assert inside >= 2, inside  # the kills really landed inside updates
