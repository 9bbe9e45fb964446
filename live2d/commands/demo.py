"""Simulate a live Warp session in the background and serve the page on it, with the built-in
engine and small settings, so classes appear within minutes on a laptop. Open the printed URL.

The simulated microscope names its movies as EPU does and writes its EPU session folder, which
the session is given (``--epu``): ``live2d yield`` and the session's yield tables give good
particles per grid square, and the second square, mostly empty ice, fires the bad-square alert
that the page and ``live2d status`` show."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

DEMO_SETTINGS = {"classes": 10, "particles_per_class": 60, "startup_cycles": 4,
                 "refinement_cycles": 2, "high_res_initial": 30.0, "high_res_final": 10.0,
                 # a square and a half (DEMO_HOLES_PER_SQUARE): the first classes then hold
                 # the bad square's empty ice, and streaming updates send its later picks there
                 "first_job_at": 1200, "update_every": 1500, "poll_seconds": 3.0,
                 # after the first job, a streaming update every 500 new particles (10 s)
                 "stream_every": 500, "stream_interval": 30.0,
                 # once the simulated microscope stops, its last particles are classified too
                 "catch_up_after": 10.0}
# Squares of 8 micrographs, as many as the bad-square rule needs to judge one. The bad one is
# the second, so that the first classes are of good particles and its empty ice both.
DEMO_HOLES_PER_SQUARE, DEMO_BAD_SQUARE = 2, 2


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8181,
                        help="port of the page on localhost (default 8181)")
    parser.add_argument("--dir", type=Path, help="where the simulated Warp folder and its "
                                                 "classification go, kept on exit (default: a "
                                                 "temporary folder, removed on exit)")
    parser.add_argument("--particles", type=int, default=6000,
                        help="particles the simulated microscope collects before it stops "
                             "(default 6000)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between simulated micrographs of 100 particles")
    parser.add_argument("--bad-square", type=int, default=DEMO_BAD_SQUARE, metavar="N",
                        help="the grid square (from 1) the simulated microscope finds mostly "
                             f"empty ice, for the bad-square alert (default {DEMO_BAD_SQUARE}, "
                             "0: none)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def main(args: argparse.Namespace) -> int:
    from live2d.server.control import Controller
    from live2d.server.serving import serve
    from live2d.simulate import simulate

    temporary = args.dir is None
    folder = Path(tempfile.mkdtemp(prefix="live2d-demo-")) if temporary else args.dir
    warp = folder / "warp"
    epu = folder / "epu"  # the simulated microscope's EPU session folder: grid squares
    done = threading.Event()

    def collect() -> None:
        # SNR 0.1, not lower: at 0.05 the classes take in about half of the bad square's empty
        # ice, and whether the square falls below half the others' share is a coin toss.
        simulate(warp, particles=args.particles, per_micrograph=100, interval=args.interval,
                 box=64, pixel_size=3.0, snr=0.1, views=8, keep_going=lambda: not done.is_set(),
                 epu_dir=epu, holes_per_square=DEMO_HOLES_PER_SQUARE,
                 bad_square=args.bad_square)

    microscope = threading.Thread(target=collect, name="simulated-warp", daemon=True)
    controller = None
    try:
        microscope.start()
        while not (warp / "previous.settings").exists():
            time.sleep(0.1)
        print(f"simulating a Warp session in {warp} (a micrograph every {args.interval:g} s)")
        controller = Controller(warp, engine="builtin", device=args.device,
                                settings=DEMO_SETTINGS, epu_dir=epu)
        controller.handle({"command": "start_automatic"})
        serve(controller, "127.0.0.1", args.port, None)  # until Ctrl-C; it closes the controller
    except KeyboardInterrupt:  # Ctrl-C before the page was up
        if controller is not None:
            controller.close()
    finally:
        done.set()
        # It stops after the micrograph it is writing; the folder goes only then, and the
        # process does not exit while it is inside torch (which aborts the interpreter).
        if microscope.is_alive():
            print("stopping the simulated microscope after its current micrograph…")
            microscope.join()
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"removed the demo's folder {folder} (keep it next time with --dir)")
        else:
            print(f"the demo's session is kept in {warp}")
    return 0
