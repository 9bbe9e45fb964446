"""Running the web app: address checks, the token, the printed URL."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable

from tornado import httpserver, ioloop

from live2d.server.app import connect_events, make_app
from live2d.server.control import Controller

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def needs_token(host: str) -> bool:
    return host not in LOCAL_HOSTS


def page_url(host: str, port: int, token: str | None) -> str:
    shown = "localhost" if host in LOCAL_HOSTS else ("[::]" if host == "::" else host)
    if shown == "0.0.0.0":
        shown = "<this machine's name>"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(controller: Controller, host: str = "127.0.0.1", port: int = 8181,
          token: str | None = None, on_ready: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM. Any address other than localhost requires a token: the given
    one, or a fresh one printed in the URL."""
    if needs_token(host) and not token:
        token = secrets.token_urlsafe(18)
    app = make_app(controller, token)
    server = httpserver.HTTPServer(app, xheaders=False)
    server.listen(port, address=host)
    loop = ioloop.IOLoop.current()
    connect_events(app, loop)

    def stop(*_: object) -> None:
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = page_url(host, port, token)
    if controller.session is None:
        on_ready(f"Live2D is serving at {url}: choose the Warp folder there (Update Warp "
                 f"Directory), under {controller.warp_root}")
    else:
        on_ready(f"Live2D is serving {controller.session.warp_dir} at {url}")
    try:
        loop.start()
    finally:
        server.stop()
        controller.close()
