"""What hundreds of cycles cost around the engine: the same particles, cycle after cycle.

A running web server (the one ``live2d serve`` runs) watches a session whose cycles a stand-in
engine runs (bench/session_growth.py's), with a real headless Chromium page open throughout, as
a facility leaves one on the microscope's screen. Every ``--every`` cycles it prints the time
outside the engine per cycle, the size of session.json and history.jsonl, what the pages are
sent per cycle (the cycle and the update after it) and when they connect (the whole state), the
server process's memory, a fresh page's load time (until it shows the latest cycle's classes)
and the open page's JavaScript heap. None of these should grow with the number of cycles except
the state sent on connecting and the history file (one record per cycle).

    python bench/many_cycles.py                      # 300 cycles of 10,000 particles, K = 50
    python bench/many_cycles.py --cycles 500 --every 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from session_growth import BOX, PER_MICROGRAPH, StandInEngine, grow, new_warp_folder, rss_mb
from tornado import ioloop, netutil

from live2d.output_folder import HISTORY
from live2d.server.app import connect_events, make_app
from live2d.server.control import Controller
from live2d.server.serving import start_server


def serve_in_thread(controller: Controller) -> tuple[int, ioloop.IOLoop]:
    ready = threading.Event()
    found: dict = {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = ioloop.IOLoop.current()
        app = make_app(controller)
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        start_server(app, sockets)
        connect_events(app, loop)
        found.update(port=sockets[0].getsockname()[1], loop=loop)
        ready.set()
        loop.start()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return found["port"], found["loop"]


def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--window-size=1280,1000",
                 "--enable-precise-memory-info"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(shutil.which("chromedriver")))


def page_load_seconds(url: str, last_cycle: int, classes: int) -> float:
    """A new page, from navigation until it shows the latest cycle's classes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        began = time.monotonic()
        driver.get(url)
        WebDriverWait(driver, 120, poll_frequency=0.05).until(
            lambda d: f"cycle {last_cycle}" in d.find_element(By.ID, "cycle-select").text
            and len(d.find_elements(By.CSS_SELECTOR, ".tile img")) == classes)
        return time.monotonic() - began
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="cycles between measurements")
    parser.add_argument("--particles", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--no-browser", action="store_true", help="skip the page figures")
    parser.add_argument("--dir", type=Path, help="work here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        warp = new_warp_folder(root)
        grow(warp, args.particles // PER_MICROGRAPH, [])
        engine = StandInEngine()
        settings = {"classes": args.classes, "startup_cycles": 1, "refinement_cycles":
                    args.every, "particles_per_class": 10**6, "first_job_at": 1,
                    "high_res_initial": 20.0, "high_res_final": 12.0, "threads": 1}
        controller = Controller(warp, root / "out", engine=engine, settings=settings)
        session = controller.session
        assert session is not None
        port, loop = serve_in_thread(controller)
        url = f"http://127.0.0.1:{port}/"
        watcher = None if args.no_browser else browser()
        if watcher is not None:
            watcher.get(url)
        print(f"stand-in engine, {args.particles} particles of {BOX} px, K = {args.classes}; "
              f"a page open throughout{'' if watcher else ' (no: --no-browser)'}")
        print("cycles  outside-engine s/cycle  session.json KB  history KB  per-cycle msgs KB"
              "  connect state KB  server RSS MB  page load s  open page heap MB")
        try:
            session.run_job("abinit")
            while len(session.history) < args.cycles:
                engine.seconds = 0.0
                began = time.monotonic()
                before = len(session.history)
                session.run_job("refine")
                cycles = len(session.history) - before
                outside = (time.monotonic() - began - engine.seconds) / max(cycles, 1)
                out = session.output_dir
                last = session.history[-1]
                per_cycle = len(json.dumps({"type": "cycle", "cycle": last.__dict__})) + \
                    len(json.dumps(controller.update(), default=str))
                whole = len(json.dumps(controller.state(with_log=True), default=str))
                load = heap = float("nan")
                if watcher is not None:
                    load = page_load_seconds(url, last.number, args.classes)
                    heap = watcher.execute_script(
                        "return performance.memory.usedJSHeapSize") / 2**20
                print(f"{len(session.history):6d}  {outside:22.2f}  "
                      f"{(out / 'session.json').stat().st_size / 1024:15.1f}  "
                      f"{(out / HISTORY).stat().st_size / 1024:10.0f}  "
                      f"{per_cycle / 1024:17.1f}  {whole / 1024:16.0f}  {rss_mb():13.0f}  "
                      f"{load:11.2f}  {heap:17.1f}", flush=True)
        finally:
            if watcher is not None:
                watcher.quit()
            loop.add_callback(loop.stop)
            controller.close()


if __name__ == "__main__":
    main()
