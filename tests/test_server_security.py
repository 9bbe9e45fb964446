"""Each security rule of the web app, with a test that fails if the rule is broken."""

import contextlib
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from server_helpers import SMALL, Client, RunningServer, classified_folder, small_warp
from tornado.httpclient import HTTPClientError

from live2d.server.control import Controller
from live2d.server.serving import needs_token

TOKEN = "s3cret-token"


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    return classified_folder(tmp_path_factory.mktemp("classified"))


@pytest.fixture
def session_with_a_cycle(classified):
    """A controller over a session whose first job is done (this test's copy of it)."""
    return Controller(classified.restore() / "warp", engine="builtin", settings=SMALL)


@pytest.fixture
def open_server(session_with_a_cycle):
    server = RunningServer(session_with_a_cycle)
    yield server
    server.stop()


@pytest.fixture
def token_server(session_with_a_cycle):
    server = RunningServer(session_with_a_cycle, token=TOKEN)
    yield server
    server.stop()


def test_only_localhost_goes_without_a_token():
    assert not needs_token("127.0.0.1") and not needs_token("localhost")
    assert needs_token("0.0.0.0") and needs_token("192.168.1.20") and needs_token("::")


def test_serving_on_every_interface_prints_a_url_with_a_generated_token(tmp_path):
    warp = small_warp(tmp_path / "warp", particles=40)
    process = subprocess.Popen(
        [sys.executable, "-m", "live2d.cli", "serve", str(warp), "--host", "0.0.0.0",
         "--port", "0", "--engine", "builtin"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "?token=" in line and len(line.split("?token=")[1].strip()) >= 20


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/files/cycle_001.mrc", "/report"])
def test_without_the_token_everything_is_forbidden(token_server, path):
    status, _, _ = get(token_server.url + path)
    assert status == 403
    status, _, _ = get(token_server.url + path + "?token=wrong")
    assert status == 403


def test_the_token_opens_the_page_and_then_a_cookie_carries_it(token_server):
    status, body, headers = get(f"{token_server.url}/?token={TOKEN}")
    assert status == 200 and b"Live2D" in body
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"]
    status, body, _ = get(f"{token_server.url}/files/cycle_001.star", {"Cookie": cookie})
    assert status == 200 and b"_cisTEMPositionInStack" in body


def test_the_session_report_is_a_download_with_the_token_only(token_server):
    status, _, headers = get(f"{token_server.url}/?token={TOKEN}")
    cookie = headers["Set-Cookie"].split(";")[0]
    before = sorted(token_server.controller.session.output_dir.rglob("*"))
    status, body, headers = get(f"{token_server.url}/report", {"Cookie": cookie})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.fullmatch(r'attachment; filename="live2d_report_warp_\d{8}_\d{4}\.html"',
                        headers["Content-Disposition"])
    page = body.decode("utf-8")
    assert "Live2D session report" in page and "Classes of cycle" in page
    assert page.count("alt='class ") == SMALL["classes"]
    assert sorted(token_server.controller.session.output_dir.rglob("*")) == before


def test_a_websocket_without_the_token_is_refused(token_server):
    with pytest.raises(HTTPClientError) as refused:
        Client(token_server)
    assert refused.value.code == 403
    client = Client(token_server, query=f"?token={TOKEN}")
    assert client.receive()["type"] == "state"
    client.close()


def test_a_websocket_from_another_origin_is_refused(open_server):
    with pytest.raises(HTTPClientError) as refused:
        Client(open_server, origin="http://evil.example")
    assert refused.value.code == 403
    client = Client(open_server)
    assert client.receive()["type"] == "state"
    client.close()


@pytest.mark.parametrize("path", [
    "/files/../session.json", "/files/%2e%2e/session.json", "/files/session.json",
    "/files/particles.mrcs", "/files/cycle_001.mrc/../../session.json",
    "/static/../control.py", "/static/%2e%2e/control.py", "/files/thumbnails/../live2d.log",
    "/files/selection.json", "/files/exports/../session.json", "/files/exports/session.json",
    "/files/exports/%2e%2e/session.json", "/files/exports/good_cycle_001.star/../../session.json",
    "/files/cycle_001_classes.json/../session.json", "/files/exports/.good_cycle_001.star.tmp",
    "/files/exports/good_cycle_001.json",
])
def test_only_the_sessions_own_outputs_and_static_files_are_served(open_server, path):
    status, body, _ = get(open_server.url + path)
    assert status in (403, 404), body[:200]
    assert b"warp_dir" not in body and b"import " not in body


def test_outputs_and_static_files_are_served(open_server):
    status, body, headers = get(open_server.url + "/files/cycle_001.mrc")
    assert status == 200 and len(body) > 1024 and "attachment" in headers["Content-Disposition"]
    status, body, headers = get(open_server.url + "/files/thumbnails/cycle_001/class_001.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, body, _ = get(open_server.url + "/static/app.js")
    assert status == 200 and b"WebSocket" in body
    status, body, headers = get(open_server.url + "/files/cycle_001_classes.json")
    assert status == 200 and b'"reason"' in body
    assert headers["Content-Type"].startswith("application/json")


def test_an_export_is_served_from_the_exports_folder_and_nothing_else_there(open_server,
                                                                             tmp_path):
    session = open_server.controller.session
    (session.output_dir / "exports").mkdir()
    exported = session.selection.export(session.output_dir / "exports" / "good_cycle_003.star")
    status, body, headers = get(open_server.url + "/files/exports/good_cycle_003.star")
    assert status == 200 and body == exported.path.read_bytes()
    assert "attachment" in headers["Content-Disposition"]
    assert headers["Cache-Control"] == "no-cache"  # a later export replaces it
    # a file the session did not write there, linked in, is not served
    secret = tmp_path / "secret.star"
    secret.write_text("do not serve me")
    os.symlink(secret, session.output_dir / "exports" / "good_cycle_009.star")
    status, body, _ = get(open_server.url + "/files/exports/good_cycle_009.star")
    assert status == 404 and b"do not serve" not in body
    # nor a folder of exports that is itself a link out of the output folder
    (session.output_dir / "exports" / "good_cycle_009.star").unlink()
    (session.output_dir / "exports").rename(tmp_path / "moved")
    os.symlink(tmp_path / "moved", session.output_dir / "exports")
    status, body, _ = get(open_server.url + "/files/exports/good_cycle_003.star")
    assert status == 404


def test_an_export_larger_than_a_piece_is_sent_whole(open_server, monkeypatch):
    from live2d.server import app

    monkeypatch.setattr(app, "CHUNK_BYTES", 1000)
    session = open_server.controller.session
    (session.output_dir / "exports").mkdir()
    exported = session.selection.export(session.output_dir / "exports" / "good_cycle_003.star")
    assert exported.path.stat().st_size > 3000
    status, body, headers = get(open_server.url + "/files/exports/good_cycle_003.star")
    assert status == 200 and body == exported.path.read_bytes()
    assert int(headers["Content-Length"]) == len(body)


def test_symlinks_cannot_escape_the_output_or_static_folders(open_server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    output = open_server.controller.session.output_dir
    os.symlink(secret, output / "cycle_999.star")
    status, body, _ = get(open_server.url + "/files/cycle_999.star")
    assert status == 404 and b"do not serve" not in body
    from live2d.server.app import STATIC_DIR

    link = STATIC_DIR / "escape.txt"
    os.symlink(secret, link)
    try:
        status, body, _ = get(open_server.url + "/static/escape.txt")
    finally:
        link.unlink()
    assert status in (403, 404) and b"do not serve" not in body


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}",
                                  "192.168.1.20:{port}", "127.0.0.1.attacker.example"])
def test_without_a_token_only_loopback_host_names_are_answered(open_server, host):
    """DNS rebinding: a site whose name now resolves to 127.0.0.1 sends its own name as Host
    (and as Origin), and must get neither the outputs nor the websocket."""
    host = host.format(port=open_server.port)
    status, body, _ = get(open_server.url + "/files/cycle_001.star", {"Host": host})
    assert status == 403 and b"_cisTEMPositionInStack" not in body
    assert b"localhost" in body  # says which names it answers to
    with pytest.raises(HTTPClientError) as refused:
        Client(open_server, origin=f"http://{host}", headers={"Host": host})
    assert refused.value.code == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}",
                                  "127.1.2.3:{port}", "[::1]:{port}", "LOCALHOST:{port}"])
def test_loopback_host_names_are_answered(open_server, host):
    host = host.format(port=open_server.port)
    status, body, _ = get(open_server.url + "/files/cycle_001.star", {"Host": host})
    assert status == 200 and b"_cisTEMPositionInStack" in body
    client = Client(open_server, origin=f"http://{host}", headers={"Host": host})
    assert client.receive()["type"] == "state"
    client.close()


def test_with_a_token_any_host_name_is_answered(token_server):
    status, _, _ = get(f"{token_server.url}/?token={TOKEN}", {"Host": "workstation.lab:8181"})
    assert status == 200


def test_the_token_is_not_written_to_the_log(token_server, caplog):
    caplog.set_level(logging.INFO)
    # Importing dask.distributed (the cluster tests) sets Tornado's loggers to CRITICAL.
    caplog.set_level(logging.INFO, logger="tornado.access")
    for path in ("/files/nonexist.png", "/", "/nowhere", "/ws"):
        get(f"{token_server.url}{path}?token={TOKEN}")
    get(f"{token_server.url}/?token={TOKEN}&x=1")
    assert "404 GET /files/nonexist.png?token=" in caplog.text  # the failed request is logged
    assert TOKEN not in caplog.text


def test_token_guesses_are_limited(token_server):
    statuses = [get(f"{token_server.url}/?token=guess{i}")[0] for i in range(12)]
    assert statuses[:10] == [403] * 10 and statuses[10:] == [429, 429]
    status, body, _ = get(f"{token_server.url}/?token={TOKEN}")  # no longer even checked
    assert status == 429 and b"wait" in body
    with pytest.raises(HTTPClientError) as refused:
        Client(token_server, query=f"?token={TOKEN}")
    assert refused.value.code == 429


def test_a_missing_token_is_not_a_guess(token_server):
    for _ in range(15):
        assert get(f"{token_server.url}/")[0] == 403
    assert get(f"{token_server.url}/?token={TOKEN}")[0] == 200


def test_slow_connections_beyond_the_descriptor_limit_leave_the_page_served(tmp_path):
    """Slowloris: hundreds of connections that never finish their headers, more than the
    server has descriptors for. The page is still served at once and the log stays short.
    And when the descriptors run out all the same (the session's own files), the accept
    error that repeats on every turn of the loop is logged once, not thousands of times."""
    limit = 128

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "live2d.cli", "serve", "--port", "0", "--warp-root",
             str(tmp_path), "--engine", "builtin"],
            stdout=subprocess.PIPE, stderr=log_file, text=True, preexec_fn=lowered)
    slow: list[socket.socket] = []
    try:
        port = int(re.search(r"localhost:(\d+)/", process.stdout.readline()).group(1))
        # Descriptors all but used up by something else: accept() fails with EMFILE.
        in_use = len(os.listdir(f"/proc/{process.pid}/fd"))
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (in_use + 2, limit))
        starved = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
        for _ in range(100):  # until the server has met the error (a few turns of its loop)
            if "Too many open files" in log_path.read_text():
                break
            time.sleep(0.1)
        time.sleep(1)  # it meets it again and again meanwhile
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (limit, limit))
        for connection in starved:
            connection.close()
        # Slowloris.
        for _ in range(2 * limit):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow.append(connection)
            with contextlib.suppress(OSError):  # closed by the server meanwhile
                connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        status, body, _ = get(f"http://localhost:{port}/")
        assert status == 200 and b"Live2D" in body
    finally:
        for connection in slow:
            connection.close()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    log = log_path.read_text()
    assert len(log) < 10_000, log[:2000]  # no flood of "Too many open files"
    assert log.count("Too many open files") == 1, log[:2000]  # said once
    assert log.count("connections are open") == 1
