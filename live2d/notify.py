"""Notifications: every alert that fires or clears (:mod:`live2d.alerts`) sent to where the people
at the microscope look when they are not watching the page: a chat's incoming webhook (Slack,
Mattermost, Teams: an HTTP POST of JSON whose ``text`` they display) or an e-mail.

Targets are ``http://``/``https://`` URLs and ``mailto:ADDRESS`` (with a mail server,
``HOST[:PORT]``). The session keeps them in ``session.json``, so a restart keeps sending.

Delivery never holds up classification: :class:`Notifier` hands messages to one background
thread through a bounded queue. A receiver that fails (refused, timed out, HTTP 5xx, a mail
server's 4xx) is said once in the log per streak of failures, tried again with exponential
backoff a few times, and the message is then dropped with a log line; a permanent refusal (HTTP
4xx, a mail server's 5xx) drops it at once, since trying again cannot help.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from live2d import __version__
from live2d.alerts import RULE_TITLES
from live2d.errors import NotifyError

log = logging.getLogger("live2d")

DEFAULT_SMTP_PORT = 25
TRIES = 4  # a message's tries per target before it is dropped
FIRST_WAIT = 2.0  # seconds before the second try; doubled before each later one
LONGEST_WAIT = 60.0
TIMEOUT = 10.0  # seconds one try may take (connect and answer)
QUEUE_SIZE = 100  # messages waiting; more are dropped (a receiver down for hours)
TEST = "test"  # the kind of live2d notify-test's message
# What each kind is called in an e-mail's subject (the sentence says the rest).
KIND_TITLES = RULE_TITLES | {TEST: "Test notification"}


def check_target(text: str) -> str:
    """``text`` as a notification target, or NotifyError saying what is wrong with it."""
    text = text.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise NotifyError(f"notification URL {text!r} names no host: give e.g. "
                              "https://hooks.slack.com/services/...")
        try:
            _ = parts.port  # a port that is not a number raises here, not at the first alert
        except ValueError:
            raise NotifyError(f"notification URL {text!r} has an invalid port") from None
        return text
    if scheme == "mailto":
        address = parts.path
        _, parsed = parseaddr(address)
        if not parsed or parsed != address or "@" not in parsed or "," in address:
            raise NotifyError(f"{text!r} is not one e-mail address: give mailto:NAME@HOST, one "
                              "address per target")
        return f"mailto:{parsed}"
    raise NotifyError(f"cannot send notifications to {text!r}: give an http:// or https:// URL "
                      "(a Slack, Mattermost or Teams incoming webhook) or mailto:ADDRESS")


def parse_smtp(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` as (host, port), port 25 by default; NotifyError when it is not one."""
    host, colon, port = text.strip().partition(":")
    if not colon:
        port = str(DEFAULT_SMTP_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NotifyError(f"mail server {text!r} is not HOST[:PORT] (e.g. smtp.example.org or "
                          "smtp.example.org:587)")
    return host, int(port)


def check_targets(targets: Sequence[str], smtp: str) -> list[str]:
    """Every target checked (:func:`check_target`), and a mail server given where a mailto:
    target needs one; raises NotifyError saying what to change."""
    checked = [check_target(target) for target in targets]
    if smtp:
        parse_smtp(smtp)
    elif any(target.startswith("mailto:") for target in checked):
        raise NotifyError("mailto: notifications need a mail server, the facility's SMTP "
                          "relay: add --smtp HOST[:PORT] (in the page: Mail server)")
    return checked


def shown(target: str) -> str:
    """``target`` as the log may show it: a webhook's path is its secret (anyone holding a
    Slack webhook URL can post to the channel), so only its host is said."""
    if target.startswith("mailto:"):
        return target
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Message:
    """One notification: ``text`` the plain sentence chats display, ``kind`` the alert's rule
    (``test`` for a test), ``subject`` the e-mail's short form."""

    text: str
    kind: str
    time: float
    session: str  # the output folder
    subject: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What a webhook is sent."""
        return {"text": self.text, "kind": self.kind, "time": iso_time(self.time),
                "session": self.session, "details": self.details}

    def to_email(self, sender: str, address: str) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = self.subject
        mail["From"] = sender
        mail["To"] = address
        lines = [self.text, "", f"time: {iso_time(self.time)}", f"session: {self.session}"]
        lines += [f"{name}: {value}" for name, value in self.details.items()]
        mail.set_content("\n".join(lines) + "\n")
        return mail


def alert_message(key: str, sentence: str, since: float, active: bool, session: str | Path,
                  warp_dir: str | Path) -> Message:
    """The message of the alert ``key`` (its rule, and ``:`` what it names) that fired
    (``active``) or cleared."""
    rule, _, where = key.partition(":")
    title = KIND_TITLES.get(rule, rule)
    if where:
        title = f"{title} {where}"
    folder = Path(warp_dir).name
    return Message(
        text=sentence if active else f"Cleared: {sentence}",
        kind=rule, time=since if active else time.time(), session=str(session),
        subject=f"Live2D {folder}: {title}" + ("" if active else " (cleared)"),
        details={"key": key, "state": "fired" if active else "cleared",
                 "since": iso_time(since), "warp_dir": str(warp_dir)})


def check_message(session: str | Path, warp_dir: str | Path) -> Message:
    """The message ``live2d notify-test`` sends: where it came from, so the receiver knows
    which session's alerts will arrive there."""
    host = socket.gethostname()
    return Message(
        text=f"Live2D test notification from {host}: alerts of {warp_dir} will arrive here",
        kind=TEST, time=time.time(), session=str(session),
        subject=f"Live2D {Path(warp_dir).name}: {KIND_TITLES[TEST]}",
        details={"host": host, "warp_dir": str(warp_dir), "version": __version__})


class DeliveryError(Exception):
    """One try failed; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def deliver(target: str, message: Message, smtp: str = "", smtp_from: str = "",
            timeout: float = TIMEOUT) -> None:
    """Send ``message`` to ``target`` once; raises DeliveryError."""
    if target.startswith("mailto:"):
        _mail(target.removeprefix("mailto:"), message, smtp, smtp_from, timeout)
    else:
        _post(target, message, timeout)


def _post(url: str, message: Message, timeout: float) -> None:
    body = json.dumps(message.to_json()).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"live2d/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        # 5xx and 429 are the receiver's passing trouble; other 4xx mean a wrong URL.
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}",
                            exc.code >= 500 or exc.code == 429) from None
    except urllib.error.URLError as exc:
        raise DeliveryError(str(exc.reason), True) from None
    except (OSError, ValueError) as exc:  # a timeout while reading, a reset connection
        raise DeliveryError(str(exc) or type(exc).__name__, True) from None


def _mail(address: str, message: Message, smtp: str, smtp_from: str, timeout: float) -> None:
    host, port = parse_smtp(smtp)
    sender = smtp_from or f"live2d@{socket.getfqdn()}"
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as server:
            server.send_message(message.to_email(sender, address))
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise DeliveryError(f"{address} refused: {exc.recipients}",
                            all(400 <= code < 500 for code in codes)) from None
    except smtplib.SMTPResponseException as exc:
        # 4xx: try later (greylisting, a busy relay); 5xx: refused for good.
        raise DeliveryError(f"mail server {host}:{port} answered {exc.smtp_code} "
                            f"{exc.smtp_error!r}", 400 <= exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"mail server {host}:{port}: {exc or type(exc).__name__}",
                            True) from None


class Notifier:
    """Sends messages to ``targets`` from a background thread; :meth:`send` never blocks nor
    raises. Tries, waits and timeout are the module's constants, which suit a facility."""

    def __init__(self, targets: Sequence[str], smtp: str = "", smtp_from: str = "") -> None:
        self.targets = check_targets(targets, smtp)
        self.smtp, self.smtp_from = smtp, smtp_from
        # Read when made, not when defined: a test shortens the waits for the notifiers that
        # its sessions make.
        self.tries, self.first_wait, self.longest_wait = TRIES, FIRST_WAIT, LONGEST_WAIT
        self.timeout = TIMEOUT
        self._queue: queue.Queue[Message | None] = queue.Queue(QUEUE_SIZE)
        self._closing = threading.Event()
        self._failing: set[str] = set()  # targets in a streak of failures: said once
        self._full = False  # the queue overflowed: said once until it has room again
        self._thread = threading.Thread(target=self._run, name="live2d-notify", daemon=True)
        self._thread.start()

    def send(self, message: Message) -> None:
        """Queue ``message`` for every target; when the queue is full it is dropped and the log
        says so (once until the queue has room)."""
        try:
            self._queue.put_nowait(message)
            self._full = False
        except queue.Full:
            if not self._full:
                log.warning("notifications are not keeping up (%d waiting): dropping %r and "
                            "any more until they do", self._queue.maxsize, message.text)
            self._full = True

    def close(self, wait: float = 5.0) -> None:
        """Stop trying again, send what is queued once more each and stop, waiting at most
        ``wait`` seconds (the thread is a daemon: an exiting program does not wait for it)."""
        deadline = time.monotonic() + wait
        self._closing.set()
        with contextlib.suppress(queue.Full):  # still full: the thread stops with the program
            self._queue.put(None, timeout=wait)
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            for target in self.targets:
                self._deliver(target, message)

    def _deliver(self, target: str, message: Message) -> None:
        wait = self.first_wait
        for attempt in range(1, self.tries + 1):
            try:
                deliver(target, message, self.smtp, self.smtp_from, self.timeout)
            except DeliveryError as exc:
                if attempt == self.tries or not exc.retry or self._closing.is_set():
                    log.warning("notification to %s dropped after %d %s (%s): %s",
                                shown(target), attempt, "try" if attempt == 1 else "tries",
                                exc, message.text)
                    return
                if target not in self._failing:
                    self._failing.add(target)
                    log.warning("notification to %s failed: %s; trying again up to %d times "
                                "(said once until it works again)", shown(target), exc,
                                self.tries - attempt)
                # Waits on the closing event: a session that closes cuts the backoff short, and
                # the try after it is the last.
                self._closing.wait(wait)
                wait = min(wait * 2, self.longest_wait)
                continue
            if target in self._failing:
                self._failing.discard(target)
                log.info("notifications to %s are delivered again", shown(target))
            return
