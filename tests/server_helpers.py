"""A real Live2D web server on a free port in a background thread, and a websocket client."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tornado import ioloop, netutil, websocket

from live2d.server.app import connect_events, make_app
from live2d.server.control import Controller
from live2d.server.serving import start_server
from live2d.simulate import simulate

SMALL = {"classes": 3, "particles_per_class": 30, "startup_cycles": 2, "refinement_cycles": 1,
         "high_res_initial": 30.0, "high_res_final": 16.0, "threads": 1, "first_job_at": 60,
         "update_every": 1000, "poll_seconds": 0.5}


def small_warp(folder: Path, particles: int = 120) -> Path:
    simulate(folder, particles=particles, per_micrograph=40, box=32, pixel_size=4.0, snr=0.5,
             views=3)
    return folder


class FolderTemplate:
    """Folders made once (a Warp session and what a job classified in it: seconds of work),
    then put back byte for byte, at the same path, before each test that uses them: every such
    test starts from the files it would have made itself, and changes only its own copy."""

    def __init__(self, root: Path, make: Callable[[Path], None]) -> None:
        self.live, self._pristine = root / "live", root / "pristine"
        make(self.live)
        shutil.copytree(self.live, self._pristine, symlinks=True)

    def restore(self) -> Path:
        """The folders as ``make`` left them; returns their root."""
        shutil.rmtree(self.live)
        shutil.copytree(self._pristine, self.live, symlinks=True)
        return self.live


def classified_folder(root: Path, warp_name: str = "warp", **options) -> FolderTemplate:
    """A template of a small Warp session (``root``/``warp_name``) whose first job (ab initio,
    cycles 0-3) is done, as a Controller over it runs it; ``options`` go to the Controller."""

    def make(live: Path) -> None:
        controller = Controller(small_warp(live / warp_name), engine="builtin",
                                **{"settings": SMALL, **options})
        try:
            assert controller.session.run_job("abinit")
        finally:
            close_controller(controller)

    return FolderTemplate(root, make)


def close_controller(controller: Controller) -> None:
    """Close it, and wait for the threads measuring a cycle's curation or latency that a page's
    state may have started: nothing of them touches the folder after the test."""
    controller.close()
    for measurement in (controller.curations, controller.keeping_up):
        measurement.join(30)


class RunningServer:
    def __init__(self, controller: Controller, token: str | None = None) -> None:
        self.controller = controller
        self.token = token
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = ioloop.IOLoop.current()
        app = make_app(self.controller, self.token)
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = start_server(app, sockets)
        connect_events(app, self.loop)
        self._ready.set()
        self.loop.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        close_controller(self.controller)
        self.loop.add_callback(self.server.stop)
        self.loop.add_callback(self.loop.stop)
        self._thread.join(10)


class Client:
    """A websocket client with its own event loop, used synchronously from tests."""

    def __init__(self, server: RunningServer, query: str = "", origin: str | None = None,
                 headers: dict | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        request_headers = dict(headers or {})
        request_headers["Origin"] = origin or server.url
        from tornado.httpclient import HTTPRequest

        request = HTTPRequest(f"ws://127.0.0.1:{server.port}/ws{query}",
                              headers=request_headers)
        self.connection = self._run(lambda: websocket.websocket_connect(request))
        self.messages: list[dict] = []
        self.view: dict | None = None  # the state as the page pieces it together

    def _run(self, start, timeout: float | None = None):
        """Start a Tornado call inside this client's loop (its futures belong to it), wait."""

        async def call():
            return await asyncio.wait_for(start(), timeout)

        return self.loop.run_until_complete(call())

    def send(self, message: dict | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self._run(lambda: self.connection.write_message(text))

    def receive(self, timeout: float = 10.0) -> dict:
        text = self._run(self.connection.read_message, timeout)
        assert text is not None, "the server closed the connection"
        message = json.loads(text)
        self.messages.append(message)
        self._follow(message)
        return message

    def _follow(self, message: dict) -> None:
        """What app.js does with ``state``, ``update`` and ``cycle`` messages."""
        if message["type"] == "state":
            self.view = dict(message)
        elif message["type"] == "update" and self.view is not None:
            points = {p["cycle"]: p for p in (self.view.get("selection") or {}).get("history", [])}
            self.view = {**self.view, **message, "type": "state",
                         "history": self.view["history"]}
            if message.get("selection"):
                points.update({p["cycle"]: p for p in message["selection"]["history"]})
                self.view["selection"] = {**message["selection"],
                                          "history": [points[c] for c in sorted(points)]}
        elif message["type"] == "cycle" and self.view is not None:
            cycles = [c for c in self.view["history"] if c["number"] != message["cycle"]["number"]]
            thinned = set(message.get("thinned") or [])  # their averages are gone
            cycles = [{**c, "averages_kept": False} if c["number"] in thinned else c
                      for c in cycles]
            self.view["history"] = sorted([*cycles, message["cycle"]], key=lambda c: c["number"])

    def wait_for_view(self, predicate, timeout: float = 60.0) -> dict:
        """Receive until the state pieced together from the messages satisfies ``predicate``
        (at once where it does already: what was awaited may have come with the first state)."""
        if self.view is None or not predicate(self.view):
            self.wait_for(lambda _m: self.view is not None and predicate(self.view), timeout)
        assert self.view is not None
        return self.view

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; last messages: {self.messages[-3:]}"
            try:
                message = self.receive(remaining)
            except TimeoutError:
                # what every thread of the server was doing, for the report
                faulthandler.dump_traceback(sys.stderr)
                raise AssertionError(f"timed out; last messages: {self.messages[-3:]}") from None
            if predicate(message):
                return message

    def close(self) -> None:
        self.connection.close()
        self.loop.close()
