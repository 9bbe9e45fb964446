"""The Tornado application: the page, its websocket, and the session's result files.

Security: the server binds to 127.0.0.1 unless told otherwise, and then needs a token, checked on
every request (``?token=`` once, then a cookie), with at most GUESSES wrong ones per client address
a minute; the token never reaches the log. Without a token only loopback Host names are answered
(DNS rebinding: a site whose name resolves to 127.0.0.1 sends its own). Websocket handshakes must
come from the page's own origin. Only the page's static files and the session's own outputs
(cycle MRC/star, class tables, class PNGs, the selection's exports) and the session's report are
served, each file after resolving symlinks and checking it lies under its root.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tornado import ioloop, iostream, web, websocket

from live2d.cistem_star import StarFormatError
from live2d.history import particle_results_kept, thinned_words, write_particle_star
from live2d.output_folder import (
    EXPORTS,
    SERVED_FILES,
    THUMBNAIL,
    THUMBNAILS,
    OutputFolder,
    cycle_stem,
)
from live2d.report import ReportError, report_name, session_report
from live2d.server.control import CommandError, Controller
from live2d.thumbnails import write_thumbnails

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "live2d_token"
MAX_MESSAGE_BYTES = 64 * 1024
CHUNK_BYTES = 1 << 20  # output files are sent in pieces this size
GUESSES = 10  # wrong tokens allowed per client address a minute
GUESS_SECONDS = 60.0
TOKEN_IN_URI = re.compile(r"(?<=[?&]token=)[^&]*")
log = logging.getLogger("live2d")
# A cycle's averages or one of its thumbnails (made from them): the cycle's number.
AVERAGES = re.compile(rf"^(?:{THUMBNAILS}/)?cycle_(\d{{3,}})(?:\.mrc|/class_\d{{3,}}\.png)$")
_remaking = threading.Lock()  # one cycle's thumbnails at a time: its classes are asked at once


def remake_thumbnails(root: Path, name: str) -> None:
    """The thumbnails of an older cycle, pruned to save space (CycleHistory.prune_results), made
    again from its class averages when a page asks for one."""
    match = THUMBNAIL.match(name)
    assert match is not None
    cycle = match.group(1)
    with _remaking:
        if (root / name).exists():  # another request made them meanwhile
            return
        averages = root / f"{cycle}.mrc"
        if averages.is_file():
            # Into a scratch folder renamed whole: a page never gets half a PNG.
            scratch = OutputFolder(root).thumbnail_folder(f".{cycle}.{os.getpid()}")
            shutil.rmtree(scratch, ignore_errors=True)
            write_thumbnails(averages, scratch)
            try:
                os.rename(scratch, OutputFolder(root).thumbnail_folder(cycle))
            except OSError:  # the session wrote them meanwhile
                shutil.rmtree(scratch, ignore_errors=True)


def is_loopback_name(host: str) -> bool:
    """localhost, 127.0.0.0/8 or [::1]: names that no other site can make its own."""
    name = host.lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guesses:
    """Wrong tokens per client address in the last GUESS_SECONDS: past GUESSES the address is
    not even checked (a guesser gets 10 a minute, not 830 a second)."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        times = self._times.setdefault(address, deque())
        while times and times[0] < time.monotonic() - GUESS_SECONDS:
            times.popleft()
        return times

    def exhausted(self, address: str) -> bool:
        exhausted = len(self._recent(address)) >= GUESSES
        if not self._times[address]:
            del self._times[address]  # the table holds only recent guessers
        return exhausted

    def wrong(self, address: str) -> None:
        self._recent(address).append(time.monotonic())
        if len(self._times) > 10_000:  # guessers from many addresses: forget the stale ones
            for stale in [a for a, times in self._times.items()
                          if times[-1] < time.monotonic() - GUESS_SECONDS]:
                del self._times[stale]


def redacted(uri: str) -> str:
    return TOKEN_IN_URI.sub("(hidden)", uri)


class _Guarded(web.RequestHandler):
    def prepare(self) -> None:
        token = self.settings["live2d_token"]
        if not token:
            if not is_loopback_name(self.request.host_name):
                raise web.HTTPError(
                    403, f"this server answers to localhost, 127.0.0.1 and [::1] only, not "
                         f"{self.request.host_name!r}; to open it under another name, serve "
                         f"with --host and a token")
            return
        guesses: Guesses = self.settings["live2d_guesses"]
        address = self.request.remote_ip or ""
        if guesses.exhausted(address):
            raise web.HTTPError(429, f"too many wrong tokens from {address}: wait a minute")
        given = self.get_query_argument("token", None) or self.get_cookie(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            if given:  # a page opened without the token is no guess
                guesses.wrong(address)
            raise web.HTTPError(403, "a valid token is needed (see the URL printed at start)")
        if self.get_query_argument("token", None):
            self.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")

    def _request_summary(self) -> str:
        # What Tornado's access log and its HTTPError warnings name a request by.
        return f"{self.request.method} {redacted(self.request.uri or '')} " \
               f"({self.request.remote_ip})"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The reason in words, which a bare "403: Forbidden" does not give."""
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{status_code} {self._reason}: {error.log_message}\n")
        else:
            super().write_error(status_code, **kwargs)

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                        "connect-src 'self' ws: wss:; frame-ancestors 'none'")


class NotFoundHandler(_Guarded):
    """Any other path: guarded and logged like the rest (Tornado's own would log the token)."""

    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(404)


class PageHandler(_Guarded):
    """The page itself, never cached (it must match the server that sends its state)."""
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write((STATIC_DIR / "index.html").read_bytes())
        self.set_header("Content-Type", "text/html; charset=utf-8")


class StaticHandler(_Guarded, web.StaticFileHandler):
    """The page's scripts and styles, only from the static folder (links resolved first)."""
    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        return str((Path(root) / path).resolve())  # symlinks resolved before the root check

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if not Path(absolute_path).is_relative_to(Path(root).resolve()):
            raise web.HTTPError(403, "outside the static folder")
        return super().validate_absolute_path(str(Path(root).resolve()), absolute_path)


class OutputHandler(_Guarded):
    """A cycle's class averages (MRC), star file, class table and thumbnails, and the
    selection's exports, nothing else."""

    async def get(self, name: str) -> None:
        if not SERVED_FILES.match(name):
            raise web.HTTPError(404)
        session = self.settings["controller"].session
        if session is None:  # no Warp folder chosen yet: no outputs
            raise web.HTTPError(404)
        root = session.output_dir.resolve()
        path = (root / name).resolve()
        if not path.exists() and (thinned := _thinned(session, name)) is not None:
            raise web.HTTPError(410, thinned)  # said, not a bare 404: they existed
        if path.is_relative_to(root) and not path.exists() and THUMBNAIL.match(name):
            await ioloop.IOLoop.current().run_in_executor(None, remake_thumbnails, root, name)
        made = None
        if path.is_relative_to(root) and not path.exists() and name.endswith(".star"):
            made = await ioloop.IOLoop.current().run_in_executor(
                None, _streamed_star, session, root, name)
        if made is not None:  # a streaming update's star, made for this download only
            try:
                await self._send(made, name)
            finally:
                made.unlink(missing_ok=True)
            return
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPError(404)
        await self._send(path, name)

    async def _send(self, path: Path, name: str) -> None:
        """The file at ``path``, sent as the file ``name`` (the route's)."""
        suffix = Path(name).suffix
        kind = {"png": "image/png", "mrc": "application/octet-stream",
                "star": "text/plain; charset=utf-8",
                "json": "application/json; charset=utf-8"}[suffix[1:]]
        self.set_header("Content-Type", kind)
        if name.startswith(f"{EXPORTS}/"):
            self.set_header("Cache-Control", "no-cache")  # a later export replaces it
        if suffix not in (".png", ".json"):
            self.set_header("Content-Disposition",
                            f'attachment; filename="{Path(name).name}"')
        with open(path, "rb") as handle:  # opened once: a replacement meanwhile is not mixed in
            remaining = os.fstat(handle.fileno()).st_size
            if remaining <= CHUNK_BYTES:  # in one piece, with an ETag for the browser's cache
                self.write(handle.read(remaining))
                return
            # In pieces: an export of a million particles is hundreds of MB, and every page
            # waits on this loop.
            self.set_header("Content-Length", str(remaining))
            while remaining > 0 and (piece := handle.read(min(CHUNK_BYTES, remaining))):
                remaining -= len(piece)
                self.write(piece)
                try:
                    await self.flush()
                except iostream.StreamClosedError:  # the browser went away: nothing to do
                    return


class ReportHandler(_Guarded):
    """The session's report (live2d.report), made for this download: the page's "Report"."""

    async def get(self) -> None:
        session = self.settings["controller"].session
        if session is None:  # no Warp folder chosen yet: no session to report on
            raise web.HTTPError(404, "no session yet: choose a Warp folder first")
        root = session.output_dir.resolve()
        # Made off the loop (it reads the store: seconds on a large session), kept in memory
        # rather than a file, so nothing is written into the folder or left behind.
        try:
            page = await ioloop.IOLoop.current().run_in_executor(None, session_report, root)
        except ReportError as exc:  # session.json unreadable at this moment
            raise web.HTTPError(503, str(exc)) from None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{report_name(root, time.time())}"')
        self.write(page.encode("utf-8"))


def _thinned(session, name: str) -> str | None:
    """What to say of a request for the averages or thumbnails of a cycle whose averages were
    thinned (CycleHistory.thin_averages); None for any other."""
    match = AVERAGES.match(name)
    if match is None:
        return None
    number = int(match.group(1))
    history = session.history
    record = next((r for r in reversed(history) if r.number == number), None)
    if record is None or record.averages_kept:
        return None
    return thinned_words(history, record)


def _streamed_star(session, root: Path, name: str) -> Path | None:
    """The star of the streaming update ``name`` (cycle_NNN.star) names, written to a
    temporary file from its batches' rows; None for any other name, or when they are gone."""
    record = next((r for r in session.history if r.streamed and
                   f"{cycle_stem(r.number)}.star" == name), None)
    if record is None or not particle_results_kept(root, record):
        return None
    handle, scratch = tempfile.mkstemp(prefix=f".{name}.", dir=root)
    os.close(handle)
    try:
        return write_particle_star(root, record, Path(scratch))
    except (OSError, StarFormatError):  # a later update replaced a batch meanwhile
        Path(scratch).unlink(missing_ok=True)
        return None


class SocketHandler(_Guarded, websocket.WebSocketHandler):
    """A page's websocket: the session's state on connect, every change after, and the page's
    commands (checked by the controller) in."""
    def check_origin(self, origin: str) -> bool:
        """Only the page this server served may connect (no cross-site websocket hijacking)."""
        return urlparse(origin).netloc == self.request.host

    def open(self) -> None:
        self.settings["clients"].add(self)
        self.send(self.settings["controller"].state(with_log=True))

    def on_close(self) -> None:
        self.settings["clients"].discard(self)

    async def on_message(self, message: str | bytes) -> None:
        controller: Controller = self.settings["controller"]
        try:
            if len(message) > MAX_MESSAGE_BYTES:
                raise CommandError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
            try:
                request = json.loads(message)
            except (ValueError, UnicodeDecodeError, RecursionError):
                # RecursionError: nested thousands deep ("[[[[..."), which no page sends.
                raise CommandError("the message is not valid JSON") from None
            if controller.is_slow(request):  # e.g. an export: the other pages go on meanwhile
                reply = await ioloop.IOLoop.current().run_in_executor(
                    None, controller.handle, request)
            else:
                reply = controller.handle(request)
        except CommandError as exc:
            reply = {"type": "error", "message": str(exc)}
        except Exception as exc:  # never let one message take the server down
            log.exception("websocket command failed")
            reply = {"type": "error", "message": f"the server could not do that: {exc}"}
        if reply is not None:
            self.send(reply)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(message, default=str))
        except websocket.WebSocketClosedError:
            self.settings["clients"].discard(self)


def make_app(controller: Controller, token: str | None = None) -> web.Application:
    """The application; call :func:`connect_events` once the IOLoop that serves it runs."""
    clients: set[SocketHandler] = set()
    return web.Application(
        [
            (r"/", PageHandler),
            (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
            (r"/files/(.+)", OutputHandler),
            (r"/report", ReportHandler),
            (r"/ws", SocketHandler),
        ],
        controller=controller,
        clients=clients,
        live2d_token=token or "",
        live2d_guesses=Guesses(),
        default_handler_class=NotFoundHandler,
        # Beyond this Tornado closes the connection; up to it on_message answers with an error.
        websocket_max_message_size=16 * MAX_MESSAGE_BYTES,
    )


def connect_events(app: web.Application, loop: ioloop.IOLoop) -> None:
    """Forward session events (raised on the worker thread) to every page, on the loop."""
    controller: Controller = app.settings["controller"]
    clients: set[SocketHandler] = app.settings["clients"]

    def broadcast(event: dict[str, Any]) -> None:
        # Nothing sent while a session runs grows with its cycles: small events go as they are,
        # a finished cycle goes alone and then what changed with it (Controller.update). Only
        # another folder's session resends the whole state, history included.
        small = event["type"] in ("log", "progress", "disk") or (
            event["type"] == "import" and not event.get("reimported"))
        if event["type"] == "session":
            messages = [controller.state()]
        elif small:
            messages = [event]
        elif event["type"] == "cycle":
            messages = [event, controller.update(new_cycle=True)]
        else:
            messages = [controller.update()]
        for client in list(clients):
            for message in messages:
                client.send(message)

    controller.publish = lambda event: loop.add_callback(broadcast, event)
