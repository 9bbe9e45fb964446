"""Websocket round-trip latency of the web app while a classification cycle runs.

Starts the server on a simulated session, starts a job with the built-in engine using every
core, and pings the server over the websocket until the job ends; prints p50/p99 (target: p99
under 100 ms, i.e. the page stays responsive while the engine works).

    python bench/ws_latency.py                  # 3,000 particles of 64 px
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_helpers import Client, RunningServer

from live2d.server.control import Controller
from live2d.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between pings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        warp = Path(scratch) / "warp"
        simulate(warp, particles=args.particles, per_micrograph=200, box=64, pixel_size=3.0,
                 snr=0.05, views=8)
        settings = {"classes": 20, "particles_per_class": 100, "startup_cycles": 3,
                    "refinement_cycles": 1, "high_res_initial": 30.0, "high_res_final": 8.0}
        server = RunningServer(Controller(warp, engine="builtin", settings=settings))
        client = Client(server)
        client.receive()
        client.send({"command": "start_job", "job_type": "abinit"})
        client.wait_for(lambda m: m["type"] == "state" and m["status"] == "running")
        latencies, running = [], True
        while running:
            sent = time.perf_counter()
            client.send(json.dumps({"command": "ping", "id": len(latencies)}))
            while True:  # state, log and progress messages arrive in between
                message = client.receive(60)
                if message["type"] == "state" and message["status"] == "stopped":
                    running = False
                if message["type"] == "pong":
                    latencies.append(time.perf_counter() - sent)
                    break
            time.sleep(args.interval)
        client.close()
        server.stop()
    ms = np.array(latencies) * 1e3
    print(f"{len(ms)} pings during a {args.particles}-particle job on "
          f"{settings['classes']} classes: p50 {np.percentile(ms, 50):.1f} ms, "
          f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms")


if __name__ == "__main__":
    main()
