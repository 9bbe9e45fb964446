"""Running the web app: address checks, the token, the printed URL, and the HTTP server's
bounds (time to send headers, open connections, repeated errors logged once)."""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from tornado import httpserver, httputil, ioloop, iostream, netutil, web

from live2d.server.app import connect_events, make_app
from live2d.server.control import Controller

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# A page sends its headers within milliseconds; a slowloris client never finishes them. Tornado
# uses idle_connection_timeout as the time allowed for a request's headers too.
HEADER_SECONDS = 10.0
BODY_SECONDS = 30.0
MAX_BODY_BYTES = 1 << 20  # the page only GETs; websocket messages have their own limit
MAX_CONNECTIONS = 1000  # far beyond a lab's pages (a few connections each)
REPEAT_SECONDS = 60.0  # an error that repeats is logged again at most this often
log = logging.getLogger("live2d")


class Repeats:
    """Which of a repeated error's occurrences to log: the first, then at most one per
    REPEAT_SECONDS with the count left out (the loop may hit one thousands of times a
    second, e.g. "Too many open files" on accept)."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, int]] = {}

    def due(self, key: Any) -> int | None:
        """None to stay quiet, else how many occurrences went unlogged since the last one."""
        now = time.monotonic()
        last, skipped = self._last.get(key, (-REPEAT_SECONDS, 0))
        if now - last < REPEAT_SECONDS:
            self._last[key] = (last, skipped + 1)
            return None
        self._last[key] = (now, 0)
        return skipped


def fd_budget() -> int:
    """Connections to allow: a quarter of the descriptors stays for the session's own files,
    so accept() does not run out first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft * 3 // 4))


class _HeadersSeen(httputil.HTTPMessageDelegate):
    """Passes a request through, telling the server when its headers are complete."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, seen: Callable[[], None]) -> None:
        self._delegate = delegate
        self._seen = seen

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self._seen()
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


class BoundedServer(httpserver.HTTPServer):
    """At most :func:`fd_budget` connections. When they are all open, the connection that has
    waited longest for a request's headers (a slowloris one, or an idle keep-alive one, which
    the browser reopens) is closed to make room: a page's new request gets in at once."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.max_connections = fd_budget()
        self._open: set[iostream.IOStream] = set()
        self._waiting: OrderedDict[iostream.IOStream, None] = OrderedDict()
        self._repeats = Repeats()

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        # Closed connections leave both tables here: Tornado keeps the close callback for itself.
        self._open = {s for s in self._open if not s.closed()}
        self._waiting = OrderedDict((s, None) for s in self._waiting if not s.closed())
        if len(self._open) >= self.max_connections:
            oldest = next(iter(self._waiting), None)
            if oldest is None:  # every one is busy (websockets, downloads): refuse the new one
                stream.close()
                self._warn("refused", "connection refused: %d connections are open, the most "
                           "this server allows", len(self._open))
                return
            self._warn("closed", "%d connections are open, the most this server allows: "
                       "closing those slowest to send their headers", len(self._open))
            del self._waiting[oldest]
            self._open.discard(oldest)
            oldest.close()
        self._open.add(stream)
        self._waiting[stream] = None
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        stream = getattr(request_conn, "stream", None)
        if stream is not None:  # the next request on a kept-alive connection: waiting again
            self._waiting[stream] = None
            self._waiting.move_to_end(stream)
        delegate = super().start_request(server_conn, request_conn)
        return _HeadersSeen(delegate, lambda: self._waiting.pop(stream, None))

    def _warn(self, key: str, message: str, *args: Any) -> None:
        skipped = self._repeats.due(key)
        if skipped is not None:
            log.warning(message + (f" ({skipped} more times)" if skipped else ""), *args)


def start_server(app: web.Application, sockets: Iterable[socket.socket]) -> BoundedServer:
    """Serve ``app`` on ``sockets`` from the current IOLoop, within the bounds above."""
    server = BoundedServer(app, xheaders=False, idle_connection_timeout=HEADER_SECONDS,
                           body_timeout=BODY_SECONDS, max_body_size=MAX_BODY_BYTES)
    server.add_sockets(sockets)
    repeats = Repeats()

    def quiet_repeats(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        key = (type(error), getattr(error, "errno", None)) if error else context.get("message")
        skipped = repeats.due(key)
        if skipped is not None:
            if skipped:
                context = {**context, "message": f"{context.get('message')} (and {skipped} "
                                                 f"times more since it was last logged)"}
            loop.default_exception_handler(context)

    ioloop.IOLoop.current().asyncio_loop.set_exception_handler(  # type: ignore[attr-defined]
        quiet_repeats)
    return server


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
    sockets = netutil.bind_sockets(port, address=host)
    port = sockets[0].getsockname()[1]  # the one the system chose for --port 0
    server = start_server(app, sockets)
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
        read_only = controller.session.snapshot(with_history=False)["read_only"]
        on_ready(f"Live2D is serving {controller.session.warp_dir} at {url}"
                 + (f"\n{read_only}" if read_only else ""))
    try:
        loop.start()
    finally:
        server.stop()
        controller.close()
