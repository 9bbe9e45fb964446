"""Streaming updates under SIGKILL: nothing lost, nothing counted twice, whenever the kill lands."""

import signal
import subprocess
import time

import numpy as np
from harness import Microscope, check_invariants, grow, run_command, start_run

from live2d.history import read_history

# Updates every 40 new particles (or 2 s), re-visiting as many older ones: a kill lands in one.
STREAM = ("--stream-every", "40", "--stream-interval", "2", "--stream-revisit", "1",
          "--startup-cycles", "1", "--refinement-cycles", "1")


def test_sigkills_during_streaming_updates_lose_and_count_nothing_twice(tmp_path):
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 60)
    finished = subprocess.run(run_command(warp, "--once", *STREAM), capture_output=True,
                              text=True)  # the ab initio job: updates follow
    assert finished.returncode == 0, finished.stderr
    microscope = Microscope(warp, 60, 240, interval=2.0)
    microscope.start()
    rng = np.random.default_rng(3)
    inside = 0
    for attempt in range(6):
        process = start_run(warp, *STREAM)
        if attempt % 2:  # anywhere, long enough for some updates to finish
            time.sleep(rng.uniform(3.0, 6.0))
        else:  # aim inside an update: a moment after its scratch folder appears
            # Long enough for a loaded machine, where the run may still be starting Python.
            deadline = time.monotonic() + 30.0
            while not (out / "work").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
        inside += (out / "work").exists()
        process.send_signal(signal.SIGKILL)
        process.wait()
        check_invariants(warp, out, complete=False)
    microscope.join()
    finished = subprocess.run(run_command(warp, "--once", *STREAM), capture_output=True,
                              text=True)
    assert finished.returncode == 0, finished.stderr
    figures = check_invariants(warp, out, complete=True)
    latest = read_history(out)[-1]
    assert latest.job_type == "stream" and figures["particles"] == 240 == latest.particles
    assert inside >= 2, inside  # the kills really landed inside updates
