"""Notifications: alerts sent to a real HTTP receiver and a real SMTP server on this machine;
failing receivers retried, said once and dropped while classification goes on."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from test_alerts import BAD, BAD_SENTENCE, grid
from test_collection_yield import open_session, output  # noqa: F401 (a fixture)
from test_session import SMALL, small_session

import live2d.notify
from live2d.cli import main as cli_main
from live2d.errors import NotifyError
from live2d.notify import Notifier, alert_message
from live2d.output_folder import LOG, SESSION_STATE
from live2d.session import Session


class Receiver(ThreadingHTTPServer):
    """A webhook on 127.0.0.1: keeps every POST's path, headers and JSON body and answers
    ``status``; while ``hold`` is clear it holds each request unanswered (a slow receiver)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.status = 200
        self.posts: list[dict] = []
        self.arrived = threading.Condition()
        self.hold = threading.Event()
        self.hold.set()
        self.waiting = threading.Event()  # a request is held

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/T000/B000/secret"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, timeout), self.posts
            return list(self.posts)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.server.hold.is_set():
            self.server.waiting.set()
            self.server.hold.wait(30)
        with self.server.arrived:
            self.server.posts.append({"path": self.path, "type": self.headers["Content-Type"],
                                      "json": json.loads(body)})
            self.server.arrived.notify_all()
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:  # quiet: the test says what it saw
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.hold.set()
    server.shutdown()
    server.server_close()


class Mailbox:
    """aiosmtpd's handler: keeps each envelope."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def quick_retries(monkeypatch) -> None:
    """Backoff of milliseconds, so that a dropped message takes a test well under a second."""
    monkeypatch.setattr(live2d.notify, "FIRST_WAIT", 0.05)
    monkeypatch.setattr(live2d.notify, "TIMEOUT", 5.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def log_lines(folder: Path, text: str) -> list[str]:
    return [line for line in (folder / LOG).read_text().splitlines() if text in line]


def test_an_alert_that_fires_and_clears_is_posted_as_json(output, tmp_path,  # noqa: F811
                                                          receiver):
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp", notify=[receiver.url])
    try:
        session._check_cycle_alerts(pd.DataFrame(), grid(BAD), None)
        fired = receiver.wait_for(1)[0]
        session._check_cycle_alerts(pd.DataFrame(), grid(BAD | {"1834522": 0.7}), None)
        cleared = receiver.wait_for(2)[1]
    finally:
        session.close()
    assert fired["path"] == "/hooks/T000/B000/secret" and fired["type"] == "application/json"
    body = fired["json"]
    assert set(body) == {"text", "kind", "time", "session", "details"}
    assert body["text"] == BAD_SENTENCE and body["kind"] == "square"
    assert body["session"] == str(output.resolve())
    assert body["time"].endswith("+00:00") and body["time"][:4].isdigit()
    assert body["details"]["key"] == "square:1834522" and body["details"]["state"] == "fired"
    assert cleared["json"]["text"] == f"Cleared: {BAD_SENTENCE}"
    assert cleared["json"]["details"]["state"] == "cleared"
    assert len(receiver.posts) == 2  # an alert in force is not sent again
    assert "secret" not in (output / LOG).read_text()  # a webhook's path is its secret


def test_an_alert_is_mailed_and_the_targets_are_kept_across_a_restart(output, tmp_path,  # noqa: F811
                                                                      mailbox, capsys):
    box, port = mailbox
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp", notify=["mailto:ops@facility.org"],
                           smtp=f"127.0.0.1:{port}", smtp_from="live2d@krios.facility.org")
    session.close()
    state = json.loads((output / SESSION_STATE).read_text())
    assert (state["notify"], state["smtp"]) == (["mailto:ops@facility.org"], f"127.0.0.1:{port}")
    restarted = open_session(output, tmp_path / "warp")  # not told again
    try:
        restarted._check_stall(1300.0, False)
        wait_until(lambda: len(box.envelopes) == 1)
    finally:
        restarted.close()
    envelope = box.envelopes[0]
    assert envelope.mail_from == "live2d@krios.facility.org"
    assert envelope.rcpt_tos == ["ops@facility.org"]
    mail = message_from_bytes(envelope.content)
    assert mail["Subject"] == "Live2D warp: Warp stalled"
    body = mail.get_payload(decode=True).decode()
    assert body.startswith("Warp stalled: no new particle in ")
    assert "state: fired" in body and f"session: {output.resolve()}" in body

    assert cli_main(["status", str(output)]) == 0
    assert f"alerts sent to: mailto:ops@facility.org (mail through 127.0.0.1:{port})" in \
        capsys.readouterr().out

    forgotten = open_session(output, tmp_path / "warp", notify=[])  # --no-notify
    forgotten.close()
    assert json.loads((output / SESSION_STATE).read_text())["notify"] == []


def test_a_failing_receiver_is_said_once_per_streak_retried_then_dropped(receiver, tmp_path,
                                                                        quick_retries, caplog):
    caplog.set_level(logging.INFO, logger="live2d")
    receiver.status = 500
    notifier = Notifier([receiver.url])
    try:
        for n in (1, 2):
            notifier.send(alert_message("warp_stalled", f"stall {n}", time.time(), True,
                                        tmp_path, tmp_path))
        wait_until(lambda: caplog.text.count("dropped after 4 tries") == 2)
        assert len(receiver.posts) == 8  # four tries of each
        assert caplog.text.count("failed: HTTP 500") == 1  # one streak: said once
        receiver.status = 200
        notifier.send(alert_message("warp_stalled", "stall 3", time.time(), True, tmp_path,
                                    tmp_path))
        wait_until(lambda: "delivered again" in caplog.text)
        receiver.status = 404  # a wrong URL: trying again cannot help
        notifier.send(alert_message("warp_stalled", "stall 4", time.time(), True, tmp_path,
                                    tmp_path))
        wait_until(lambda: "dropped after 1 try (HTTP 404" in caplog.text)
    finally:
        notifier.close()
    assert [post["json"]["text"] for post in receiver.posts[8:]] == ["stall 3", "stall 4"]


def test_receivers_that_fail_or_hang_do_not_hold_up_a_cycle(tmp_path, receiver, quick_retries):
    warp = tmp_path / "warp"
    small_session(warp)
    broken = Receiver()  # answers 500
    broken.status = 500
    threading.Thread(target=broken.serve_forever, daemon=True).start()
    closed = f"http://127.0.0.1:{free_port()}/hook"  # connection refused
    receiver.hold.clear()  # the working receiver hangs until the cycle is done
    settings = {**SMALL, "startup_cycles": 0, "target_good_particles": 1}
    session = Session(warp, engine="builtin", notify=[broken.url, closed, receiver.url])
    try:
        session.update_settings(settings)
        assert session.run_job()
        # The job finished, with its cycles recorded, while the receiver still holds the alert.
        assert [c.number for c in session.history] == [0, 1]
        assert receiver.waiting.wait(10) and receiver.posts == []
        receiver.hold.set()
        assert receiver.wait_for(1)[0]["json"]["kind"] == "target_reached"
        out = session.output_dir
        assert len(broken.posts) == 4 and len(log_lines(out, "dropped after 4 tries")) == 2
        assert len(log_lines(out, "failed: HTTP 500")) == 1
        assert len(log_lines(out, "failed: [Errno 111] Connection refused")) == 1
    finally:
        session.close()
        broken.shutdown()
        broken.server_close()


def test_targets_that_cannot_be_used_are_refused_saying_what_to_give(tmp_path, capsys):
    warp = tmp_path / "warp"
    warp.mkdir()
    with pytest.raises(SystemExit) as refused:  # argparse's refusal: usage and the reason
        cli_main(["run", str(warp), "--notify", "ftp://x/hook"])
    assert refused.value.code == 2
    assert "give an http:// or https:// URL" in capsys.readouterr().err
    assert cli_main(["run", str(warp), "--notify", "mailto:ops@facility.org"]) == 1
    assert "add --smtp HOST[:PORT]" in capsys.readouterr().err
    with pytest.raises(NotifyError, match="not one e-mail address"):
        Session(warp, notify=["mailto:ops"])
    with pytest.raises(NotifyError, match="is not HOST"):
        Session(warp, notify=["mailto:ops@facility.org"], smtp="relay:smtp")
    assert not (warp / "classification" / SESSION_STATE).exists() or \
        json.loads((warp / "classification" / SESSION_STATE).read_text())["notify"] == []


def test_notify_test_sends_one_message_to_each_kept_target(output, tmp_path,  # noqa: F811
                                                          receiver, mailbox, capsys):
    box, port = mailbox
    (output / SESSION_STATE).unlink()
    closed = f"http://127.0.0.1:{free_port()}/hook"
    open_session(output, tmp_path / "warp", notify=[receiver.url, "mailto:ops@facility.org"],
                 smtp=f"127.0.0.1:{port}").close()
    assert cli_main(["notify-test", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"sent: http://127.0.0.1:{receiver.server_address[1]}/…" in out
    assert "sent: mailto:ops@facility.org" in out
    test = receiver.wait_for(1)[0]["json"]
    assert test["kind"] == "test" and "alerts of" in test["text"]
    assert message_from_bytes(box.envelopes[0].content)["Subject"] == \
        "Live2D warp: Test notification"
    assert cli_main(["notify-test", str(output), "--notify", closed]) == 1  # tried, not kept
    assert "failed: http://127.0.0.1" in capsys.readouterr().out
    assert json.loads((output / SESSION_STATE).read_text())["notify"][0] == receiver.url


def test_the_page_server_keeps_the_targets_it_is_given(tmp_path, receiver, capsys):
    from live2d.server.control import Controller

    warp = tmp_path / "warp"
    warp.mkdir()
    assert cli_main(["serve", "--notify", receiver.url]) == 1  # no session to keep them
    assert "--notify and --smtp need WARP_DIR" in capsys.readouterr().err
    controller = Controller(warp, engine="builtin", notify={"notify": [receiver.url]})
    try:
        controller.session._check_stall(1300.0, False)
        assert receiver.wait_for(1)[0]["json"]["kind"] == "warp_stalled"
    finally:
        controller.close()
    state = json.loads((warp / "classification" / SESSION_STATE).read_text())
    assert state["notify"] == [receiver.url]


def test_the_page_protocol_replaces_and_tests_the_targets(tmp_path, receiver, mailbox):
    from live2d.server.control import CommandError, Controller

    box, port = mailbox
    warp = tmp_path / "warp"
    warp.mkdir()
    events = []
    controller = Controller(warp, engine="builtin", publish=events.append)
    try:
        with pytest.raises(CommandError, match="no notification targets"):
            controller.handle({"command": "test_notify"})
        reply = controller.handle({"command": "set_notify", "notify": [
            receiver.url, "mailto:ops@facility.org"], "smtp": f"127.0.0.1:{port}"})
        shown_url = f"http://127.0.0.1:{receiver.server_address[1]}/…"
        assert reply["message"] == f"alerts are sent to {shown_url}, mailto:ops@facility.org"
        summary = controller.state()["notify"]  # every page sees it: no webhook secret
        assert summary["targets"] == [shown_url, "mailto:ops@facility.org"]
        assert "secret" not in json.dumps(controller.state())
        assert [e["notify"] for e in events if e["type"] == "notify"] == [summary]

        tested = controller.handle({"command": "test_notify"})
        assert tested["type"] == "notify_test" and tested["ok"]
        assert tested["message"] == f"sent to {shown_url}; sent to mailto:ops@facility.org"
        assert receiver.wait_for(1)[0]["json"]["kind"] == "test" and len(box.envelopes) == 1

        with pytest.raises(CommandError, match="give an http:// or https:// URL"):
            controller.handle({"command": "set_notify", "notify": ["ftp://x/hook"]})
        with pytest.raises(CommandError, match="must be a list"):
            controller.handle({"command": "set_notify", "notify": receiver.url})
        assert controller.session.state.notify[0] == receiver.url  # unchanged by refusals

        controller.session._check_stall(1300.0, False)  # the targets set are the ones used
        assert receiver.wait_for(2)[1]["json"]["kind"] == "warp_stalled"
        controller.handle({"command": "set_notify", "notify": []})
        assert controller.state()["notify"]["targets"] == []
    finally:
        controller.close()
    assert json.loads((warp / "classification" / SESSION_STATE).read_text())["notify"] == []


def test_a_page_switching_to_a_session_with_unusable_targets_is_told_why(tmp_path):
    from live2d.server.control import CommandError, Controller

    other = tmp_path / "other"
    other.mkdir()
    Session(other, engine="builtin").close()
    state_file = other / "classification" / SESSION_STATE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(state | {"notify": ["gopher://x"]}))  # edited by hand
    controller = Controller(engine="builtin", warp_root=tmp_path)
    try:
        with pytest.raises(CommandError, match="cannot send notifications to 'gopher://x'"):
            controller.handle({"command": "set_warp_dir", "path": str(other)})
        assert controller.session is None
    finally:
        controller.close()
