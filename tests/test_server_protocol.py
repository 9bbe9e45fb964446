"""The page's websocket protocol, with several clients on a real server and the built-in engine."""

import pytest
from server_helpers import SMALL, Client, RunningServer, small_warp

from live2d.server.control import Controller


@pytest.fixture
def server(tmp_path):
    warp = small_warp(tmp_path / "grids" / "warp")
    running = RunningServer(Controller(warp, engine="builtin", settings=SMALL))
    yield running
    running.stop()


def test_every_client_gets_the_state_and_sees_a_job_run(server):
    first, second = Client(server), Client(server)
    for client in (first, second):
        state = client.receive()
        assert state["type"] == "state" and state["history"] == []
        assert {spec["name"] for spec in state["specs"]} >= {"classes", "mask_radius", "mode"}
        assert state["status"] == "stopped" and not state["busy"]

    first.send({"command": "start_job", "job_type": "abinit", "settings": {"classes": 2}})
    assert first.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
    for client in (first, second):  # global state: both pages follow the same job
        done = client.wait_for(lambda m: m["type"] == "state" and len(m["history"]) == 4
                               and m["status"] == "stopped")
        assert done["settings"]["classes"] == 2 and done["particles"] == 120
        assert len(done["history"][-1]["class_counts"]) == 2
    assert any(m["type"] == "log" and "job 1" in m["line"] for m in second.messages)
    assert any(m["type"] == "progress" for m in second.messages)
    first.close()
    second.close()


@pytest.mark.parametrize("message, complaint", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ({"command": "format_disk"}, "unknown command"),
    ({"command": "get_state", "extra": 1}, "unexpected field"),
    ({"command": "start_job", "settings": {"classes": -3}}, "Number of classes"),
    ({"command": "start_job", "settings": {"classes": 2.5}}, "whole number"),
    ({"command": "start_job", "settings": {"no_such_setting": 1}}, "no_such_setting"),
    ({"command": "start_job", "job_type": "rm -rf"}, "job_type"),
    ({"command": "stop", "hard": "yes"}, "true or false"),
    ({"command": "set_warp_dir", "path": 42}, "path"),
    ("x" * 70_000, "longer than"),
])
def test_bad_messages_get_an_error_and_the_server_carries_on(server, message, complaint):
    client = Client(server)
    client.receive()
    client.send(message)
    reply = client.wait_for(lambda m: m["type"] in ("error", "ok"))
    assert reply["type"] == "error" and complaint in reply["message"]
    client.send({"command": "get_state"})
    assert client.wait_for(lambda m: m["type"] == "state")["status"] == "stopped"
    client.close()


@pytest.mark.parametrize("message", ["[" * 5000 + "]" * 5000,
                                     '{"a":' * 5000 + "1" + "}" * 5000])
def test_json_nested_thousands_deep_is_refused_as_invalid_without_a_traceback(server, message):
    client = Client(server)
    client.receive()
    for _ in range(3):
        client.send(message)
        reply = client.wait_for(lambda m: m["type"] in ("error", "ok"))
        assert reply == {"type": "error", "message": "the message is not valid JSON"}
    client.send({"command": "get_state"})
    state = client.wait_for(lambda m: m["type"] == "state")
    assert state["status"] == "stopped"
    session = server.controller.session
    written = (session.output_dir / "live2d.log").read_text()
    for text in (written, "\n".join(state["log"])):  # the file and the page's Job Output
        assert "Traceback" not in text and "RecursionError" not in text
    client.close()


def test_a_second_start_while_busy_is_refused_and_stop_ends_the_job(server):
    client = Client(server)
    client.receive()
    client.send({"command": "start_automatic", "settings": {"first_job_at": 10_000}})
    assert client.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
    client.wait_for(lambda m: m["type"] == "state" and m["status"] == "listening")
    client.send({"command": "start_job"})
    refused = client.wait_for(lambda m: m["type"] == "error")
    assert "running" in refused["message"]
    client.send({"command": "stop"})
    client.wait_for(lambda m: m["type"] == "state" and m["status"] == "stopped"
                    and not m["busy"], timeout=30)
    client.close()


def test_changing_the_warp_folder_is_checked(server, tmp_path):
    client = Client(server)
    client.receive()
    client.send({"command": "set_warp_dir", "path": str(tmp_path / "elsewhere")})
    assert "outside" in client.wait_for(lambda m: m["type"] == "error")["message"]
    (tmp_path / "grids" / "empty").mkdir()
    client.send({"command": "set_warp_dir", "path": str(tmp_path / "grids" / "empty")})
    assert "previous.settings" in client.wait_for(lambda m: m["type"] == "error")["message"]
    second = small_warp(tmp_path / "grids" / "second", particles=80)
    client.send({"command": "set_warp_dir", "path": str(second)})
    state = client.wait_for(lambda m: m["type"] == "state" and m["warp_dir"] == str(second))
    assert state["settings"]["classes"] == SMALL["classes"]  # settings carry over
    client.close()


def test_ping_answers_with_its_id(server):
    client = Client(server)
    client.receive()
    client.send({"command": "ping", "id": 7})
    assert client.wait_for(lambda m: m["type"] == "pong")["id"] == 7
    client.close()
