"""The page's websocket protocol, with several clients on a real server and the built-in engine."""

import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from urllib.error import HTTPError

import mrcfile
import numpy as np
import pytest
from server_helpers import SMALL, Client, RunningServer, classified_folder, small_warp

from live2d import cistem_star
from live2d.cli import main as cli_main
from live2d.forecast import particle_times
from live2d.server.control import Controller, LatestMeasurement
from live2d.store import read_committed_table
from live2d.streaming import keeping_up

STATES = ("state", "update")  # the whole state, or what changed in it


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
        done = client.wait_for_view(lambda m: len(m["history"]) == 4
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
    ({"command": "set_warp_dir", "path": "/data/grid\u0000s"}, "must be the Warp folder"),
    ({"command": "dismiss_alert"}, "'key' must"),
    ({"command": "dismiss_alert", "key": ["warp_stalled"]}, "'key' must"),
    ({"command": "dismiss_alert", "key": "x" * 201}, "'key' must"),
    ({"command": "dismiss_alert", "key": "warp_stalled", "all": True}, "unexpected field"),
    ({"command": "dismiss_alert", "key": "warp_stalled"}, "no alert 'warp_stalled' is in force"),
    ("x" * 70_000, "longer than"),
])
def test_bad_messages_get_an_error_and_the_server_carries_on(server, message, complaint):
    client = Client(server)
    client.receive()
    client.send(message)
    reply = client.wait_for(lambda m: m["type"] in ("error", "ok"))
    assert reply["type"] == "error" and complaint in reply["message"]
    client.send({"command": "get_state"})
    assert client.wait_for(lambda m: m["type"] in STATES)["status"] == "stopped"
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
    state = client.wait_for(lambda m: m["type"] in STATES)
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
    client.wait_for(lambda m: m["type"] in STATES and m["status"] == "listening")
    client.send({"command": "start_job"})
    refused = client.wait_for(lambda m: m["type"] == "error")
    assert "running" in refused["message"]
    client.send({"command": "stop"})
    client.wait_for(lambda m: m["type"] in STATES and m["status"] == "stopped"
                    and not m["busy"], timeout=30)
    client.close()


def test_a_stop_sent_the_moment_after_a_start_is_not_lost(tmp_path):
    """Ctrl-C right after `live2d demo` or `serve` started its automatic jobs: the stop must
    reach the worker, however late its thread begins (it used to clear the request, run on,
    and outlive the 30 s the server waits for it)."""
    controller = Controller(small_warp(tmp_path / "warp"), engine="builtin",
                            settings={**SMALL, "first_job_at": 10_000})
    for _ in range(20):
        controller.handle({"command": "start_automatic"})
        controller.handle({"command": "stop"})
        controller._worker.join(timeout=10)
        assert not controller._worker.is_alive()
    controller.close()


def test_the_last_event_of_a_stopped_loop_tells_pages_it_is_no_longer_busy(tmp_path):
    """The worker's last event is sent from its thread, still alive then: a page that read
    "busy" from the thread kept showing a running job after the stop, until some later event."""
    controller = Controller(small_warp(tmp_path / "warp"), engine="builtin",
                            settings={**SMALL, "first_job_at": 10_000})
    seen = []
    controller.publish = lambda event: seen.append((event["type"], controller.busy))
    controller.handle({"command": "start_automatic"})
    deadline = time.monotonic() + 30
    while controller.session.status != "listening" and time.monotonic() < deadline:
        time.sleep(0.05)
    controller.handle({"command": "stop"})
    controller._worker.join(timeout=30)
    assert seen[-1] == ("status", False), seen[-3:]
    controller.close()


def test_changing_the_warp_folder_is_checked(server, tmp_path):
    client = Client(server)
    assert client.receive()["missing"] == ""  # a Warp folder with particles lacks nothing
    client.send({"command": "set_warp_dir", "path": str(tmp_path / "elsewhere")})
    assert "outside" in client.wait_for(lambda m: m["type"] == "error")["message"]
    client.send({"command": "set_warp_dir", "path": str(tmp_path / "grids" / "typo")})
    assert "does not exist" in client.wait_for(lambda m: m["type"] == "error")["message"]
    # A folder Warp has not started in yet is accepted, the page saying what it lacks.
    (tmp_path / "grids" / "empty").mkdir()
    client.send({"command": "set_warp_dir", "path": str(tmp_path / "grids" / "empty")})
    state = client.wait_for(lambda m: m["type"] in STATES
                            and m["warp_dir"] == str(tmp_path / "grids" / "empty"))
    assert state["missing"].startswith("no previous.settings in")
    second = small_warp(tmp_path / "grids" / "second", particles=80)
    client.send({"command": "set_warp_dir", "path": str(second)})
    state = client.wait_for(lambda m: m["type"] in STATES and m["warp_dir"] == str(second))
    assert state["settings"]["classes"] == SMALL["classes"]  # settings carry over
    assert state["missing"] == ""
    client.close()


def test_a_server_started_without_a_folder_waits_for_the_page_and_then_for_warp(tmp_path):
    root = tmp_path / "grids"
    root.mkdir()
    running = RunningServer(Controller(engine="builtin", warp_root=root, settings=SMALL))
    try:
        client = Client(running)
        state = client.receive()
        assert state["warp_dir"] is None and state["history"] == [] and state["log"] == []
        assert "Update Warp Directory" in state["missing"] and str(root) in state["missing"]
        assert state["settings"]["classes"] == SMALL["classes"]
        client.send({"command": "start_job"})
        refused = client.wait_for(lambda m: m["type"] in ("error", "ok"))
        assert refused["type"] == "error" and "Update Warp Directory" in refused["message"]
        client.send({"command": "stop"})
        assert client.wait_for(lambda m: m["type"] in ("error", "ok"))["type"] == "ok"
        with pytest.raises(HTTPError) as missing_file:
            urllib.request.urlopen(f"{running.url}/files/cycle_000.star", timeout=10)
        assert missing_file.value.code == 404

        client.send({"command": "set_warp_dir", "path": str(root / "warp")})  # not made yet
        assert "does not exist" in client.wait_for(lambda m: m["type"] == "error")["message"]
        (root / "warp").mkdir()  # the session's folder, before Warp writes anything
        client.send({"command": "set_warp_dir", "path": str(root / "warp")})
        state = client.wait_for(lambda m: m["type"] in STATES and m["warp_dir"])
        assert state["warp_dir"] == str(root / "warp")
        assert state["missing"].startswith(f"no previous.settings in {root / 'warp'} yet")

        small_warp(root / "warp")  # Warp starts: the page hears of it without asking
        state = client.wait_for(lambda m: m["type"] in STATES and m["missing"] == "", 30)
        client.send({"command": "start_job", "job_type": "abinit"})
        assert client.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
        done = client.wait_for_view(lambda m: len(m["history"]) == 4
                                    and m["status"] == "stopped")
        assert done["particles"] == 120 and len(done["history"][-1]["class_counts"]) == 3
        client.close()
    finally:
        running.stop()


def refuse_to_serve(*args, **kwargs):
    raise AssertionError("live2d serve served instead of refusing")


def test_live2d_serve_starts_without_a_folder_and_refuses_one_that_does_not_exist(
        tmp_path, capsys, monkeypatch):
    root = tmp_path / "grids"
    root.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "live2d.cli", "serve", "--port", "0", "--warp-root", str(root),
         "--engine", "builtin"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "choose the Warp folder there (Update Warp Directory)" in line and str(root) in line
    assert process.returncode == 0
    # The refusals in this process (a `live2d` process spends seconds importing); one that
    # served instead would fail here rather than block.
    monkeypatch.setattr("live2d.server.serving.serve", refuse_to_serve)
    for args, complaint in ([str(root / "typo")], "does not exist"), \
                           (["--output", str(tmp_path / "out")], "--output needs WARP_DIR"):
        assert cli_main(["serve", *args]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("live2d serve:") and complaint in stderr
    assert not (root / "typo").exists()


def test_ping_answers_with_its_id(server):
    client = Client(server)
    client.receive()
    client.send({"command": "ping", "id": 7})
    assert client.wait_for(lambda m: m["type"] == "pong")["id"] == 7
    client.close()


@pytest.fixture(scope="module")
def classified_template(tmp_path_factory):
    return classified_folder(tmp_path_factory.mktemp("classified"), "grids/warp")


@pytest.fixture
def classified(classified_template):
    """A server over a session with one finished job (cycles 1-3 scored): this test's copy."""
    warp = classified_template.restore() / "grids" / "warp"
    running = RunningServer(Controller(warp, engine="builtin", settings=SMALL))
    yield running
    running.stop()


def test_a_new_page_gets_the_selection_and_the_latest_class_table(classified):
    client = Client(classified)
    state = client.receive()
    selection = state["selection"]
    assert selection["cycle"] == 3 and selection["marks"] == {}
    assert selection["classes"] == selection["proposed"]
    assert [h["cycle"] for h in selection["history"]] == [1, 2, 3]
    table = state["class_tables"]["3"]
    assert [row["number"] for row in table] == [1, 2, 3]
    assert all(row["reason"] and 0 <= row["score"] <= 1 for row in table)
    assert state["good_score"] == 0.5
    # the tables of earlier cycles are served as files
    status = urllib.request.urlopen(f"{classified.url}/files/cycle_001_classes.json",
                                    timeout=10)
    assert json.loads(status.read())[0]["number"] == 1
    client.close()


def test_the_selection_says_per_class_how_many_particles_the_curation_keeps(classified):
    from live2d.curation import session_cycle_curation

    session = classified.controller.session
    # a strict cut, so that these clean simulated classes lose some; its change is measured
    # anew (the curation is kept per cycle and cut)
    session.update_settings({"curation_cut": 1.0})
    client = Client(classified)
    client.receive()
    view = client.wait_for_view(lambda m: m["selection"]["curation"] is not None)
    selection = view["selection"]
    record = session.selection.latest_scored()
    expected = session_cycle_curation(session.output_dir, record)
    assert selection["curation"] == {
        str(c.number): {"particles": c.particles, "kept": c.kept, "rule": c.rule()}
        for c in expected.classes}
    kept = {c.number: c.kept for c in expected.classes}
    assert selection["kept"] == sum(kept[k] for k in selection["classes"])
    assert 0 < selection["kept"] < selection["particles"]
    # a mark changes the selection's total at once (the classes' counts are kept)
    first = selection["classes"][0]
    client.send({"command": "mark", "classes": {str(first): "junk"}})
    view = client.wait_for_view(lambda m: first not in m["selection"]["classes"])
    # (the marks may change other classes' proposals too: the proposal learns from them)
    assert view["selection"]["kept"] == sum(kept[k] for k in view["selection"]["classes"])
    assert view["selection"]["kept"] <= selection["kept"] - kept[first]
    # a session that does not curate sends none
    session.update_settings({"curate_particles": False})
    client.send({"command": "get_state"})
    state = client.wait_for(lambda m: m["type"] == "state")
    assert state["selection"]["curation"] is None and state["selection"]["kept"] is None
    client.close()


def test_a_mark_changes_the_selection_on_every_page(classified):
    first, second = Client(classified), Client(classified)
    first.receive()
    second.receive()
    counts = classified.controller.session.selection.latest_scored().class_counts
    first.send({"command": "mark", "classes": {"1": "junk"}})
    reply = first.wait_for(lambda m: m["type"] in ("ok", "error"))
    assert reply["type"] == "ok"
    for client in (first, second):
        state = client.wait_for(lambda m: m["type"] in STATES
                                and m["selection"]["marks"] == {"1": "junk"})
        # the mark, and what the proposal learned from it, for the unmarked classes
        chosen = state["selection"]["classes"]
        assert chosen == [k for k in state["selection"]["proposed"] if k != 1]
        assert state["selection"]["particles"] == sum(counts[k - 1] for k in chosen)
        # the reply says how many proposals the mark changed (the first mark: all it taught)
        changed = state["selection"]["learned"]["changed"]
        assert (f"{len(changed)} proposal" in reply["message"]) == bool(changed)
    second.send({"command": "mark", "cycle": 3, "classes": {"1": None, "2": "good"}})
    state = first.wait_for(lambda m: m["type"] in STATES
                           and m["selection"]["marks"] == {"2": "good"})
    assert state["selection"]["classes"] == sorted({*state["selection"]["proposed"], 2})
    # kept by the session, in its folder
    assert json.loads((classified.controller.session.output_dir / "selection.json")
                      .read_text())["marks"] == {"2": "good"}
    first.close()
    second.close()


@pytest.mark.parametrize("message, complaint", [
    ({"command": "mark"}, "'classes' must be an object"),
    ({"command": "mark", "classes": {}}, "'classes' must be an object"),
    ({"command": "mark", "classes": ["1", "good"]}, "'classes' must be an object"),
    ({"command": "mark", "classes": "1=good"}, "'classes' must be an object"),
    ({"command": "mark", "classes": {"0": "good"}}, "not a class number"),
    ({"command": "mark", "classes": {"-1": "good"}}, "not a class number"),
    ({"command": "mark", "classes": {" 1": "good"}}, "not a class number"),
    ({"command": "mark", "classes": {"1.0": "good"}}, "not a class number"),
    ({"command": "mark", "classes": {"1" * 40: "good"}}, "not a class number"),
    ({"command": "mark", "classes": {"../x": "good"}}, "not a class number"),
    ({"command": "mark", "classes": {"4": "good"}}, "there is no class 4"),
    ({"command": "mark", "classes": {"1": "great"}}, "good, junk or null"),
    ({"command": "mark", "classes": {"1": True}}, "good, junk or null"),
    ({"command": "mark", "classes": {"1": {"$ne": 1}}}, "good, junk or null"),
    ({"command": "mark", "classes": {str(k): "good" for k in range(1, 1002)}}, "at most"),
    ({"command": "mark", "classes": {"1": "good"}, "cycle": 2}, "not the latest"),
    ({"command": "mark", "classes": {"1": "good"}, "cycle": "3"}, "'cycle' must be"),
    ({"command": "mark", "classes": {"1": "good"}, "cycle": True}, "'cycle' must be"),
    ({"command": "mark", "classes": {"1": "good"}, "path": "/etc"}, "unexpected field"),
    ({"command": "start_job", "classes": {"1": "good"}}, "unexpected field"),
    ({"command": "export", "to": "/tmp/x.star"}, "unexpected field"),
    ({"command": "export", "classes": [1]}, "unexpected field"),
])
def test_bad_marks_and_exports_are_refused_and_change_nothing(classified, message, complaint):
    client = Client(classified)
    client.receive()
    client.send(message)
    reply = client.wait_for(lambda m: m["type"] in ("error", "ok", "exported"))
    assert reply["type"] == "error" and complaint in reply["message"], reply
    client.send({"command": "get_state"})
    state = client.wait_for(lambda m: m["type"] in STATES)
    assert state["selection"]["marks"] == {} and state["selection"]["exports"] == []
    assert not (classified.controller.session.output_dir / "exports").exists()
    client.close()


def test_before_any_cycle_nothing_can_be_marked_or_exported(server):
    client = Client(server)
    assert client.receive()["selection"]["cycle"] is None
    for message in ({"command": "mark", "classes": {"1": "good"}}, {"command": "export"}):
        client.send(message)
        reply = client.wait_for(lambda m: m["type"] in ("error", "ok", "exported"))
        assert reply["type"] == "error" and "no classified cycle yet" in reply["message"]
    client.close()


def test_export_writes_the_selection_for_download_and_an_empty_one_is_refused(classified):
    import starfile

    first, second = Client(classified), Client(classified)
    selection = first.receive()["selection"]
    second.receive()
    first.send({"command": "export"})
    reply = first.wait_for(lambda m: m["type"] in ("error", "exported"))
    assert reply["type"] == "exported", reply
    assert reply["download"] == "exports/good_cycle_003.star"
    # The selected classes' particles, less those the particle curation leaves out.
    assert 0 < reply["particles"] <= selection["particles"]
    assert reply["classes"] == selection["classes"]
    output = classified.controller.session.output_dir
    written = starfile.read(output / "exports" / "good_cycle_003.star")
    assert len(written["particles"]) == reply["particles"]
    assert set(written["particles"]["rlnClassNumber"]) == set(selection["classes"])
    assert written["optics"]["rlnImagePixelSize"][0] == 4.0
    # every page offers it, and the server serves it as a download
    state = second.wait_for(lambda m: m["type"] in STATES and m["selection"]["exports"])
    assert state["selection"]["exports"][-1]["download"] == reply["download"]
    response = urllib.request.urlopen(f"{classified.url}/files/{reply['download']}",
                                      timeout=10)
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.read() == (output / "exports" / "good_cycle_003.star").read_bytes()

    first.send({"command": "mark", "classes": {"1": "junk", "2": "junk", "3": "junk"}})
    assert first.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
    first.send({"command": "export"})
    refused = first.wait_for(lambda m: m["type"] in ("error", "exported"))
    assert refused["type"] == "error" and "no class of cycle 3 is selected" in \
        refused["message"]
    assert len(starfile.read(output / "exports" / "good_cycle_003.star")["particles"]) == \
        reply["particles"]  # the earlier export is left as it was
    assert sorted(p.name for p in (output / "exports").iterdir()) == ["good_cycle_003.star"]
    first.close()
    second.close()


def test_new_particles_reach_the_pages_as_a_small_message_not_the_whole_history(server):
    client = Client(server)
    client.receive()
    client.send({"command": "start_job", "job_type": "abinit", "settings": {"classes": 2}})
    client.wait_for_view(lambda m: len(m["history"]) == 4 and m["status"] == "stopped")
    imports = [m for m in client.messages if m["type"] == "import"]
    assert imports and imports[0]["particles"] == 120 and "history" not in imports[0]
    disk = [m for m in client.messages if m["type"] == "disk"]
    assert disk and "free" in disk[-1]["disk"]["text"] and "history" not in disk[-1]
    client.close()


def test_no_message_of_a_running_session_grows_with_its_cycles(server):
    client = Client(server)
    client.receive()
    for job in ("abinit", "seeded"):
        client.send({"command": "start_job", "job_type": job, "settings": {"classes": 2}})
        assert client.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
        client.wait_for(lambda m: m["type"] == "update" and m["status"] == "stopped"
                        and not m["busy"])
    cycles = [m["cycle"]["number"] for m in client.messages if m["type"] == "cycle"]
    assert cycles == list(range(len(cycles))) and len(cycles) >= 6  # each cycle sent once
    updates = [m for m in client.messages if m["type"] == "update"]
    assert updates and all("history" not in m for m in updates)
    assert all(len(m["selection"]["history"]) <= 1 for m in updates if m["selection"])
    sizes = [len(json.dumps(m)) for m in updates if m["selection"]["history"]]
    assert max(sizes) - min(sizes) < 2000, sizes  # as small after cycle 7 as after cycle 1
    # pieced together, the page holds what a page that connects now is sent whole
    fresh = Client(server)
    whole = fresh.receive()
    assert client.view["history"] == whole["history"]
    assert client.view["selection"]["history"] == whole["selection"]["history"]
    assert [p["cycle"] for p in whole["selection"]["history"]] == cycles[1:]
    fresh.close()
    client.close()


def test_pruned_thumbnails_are_made_again_from_the_averages_when_a_page_asks(tmp_path):
    from PIL import Image

    from live2d.thumbnails import display_image

    controller = Controller(small_warp(tmp_path / "warp"), engine="builtin",
                            settings={**SMALL, "keep_cycle_results": 1})
    controller.session.run_job("abinit")
    running = RunningServer(controller)
    try:
        out = controller.session.output_dir
        old = controller.session.history[1]
        assert not old.thumbnails_kept and not (out / old.thumbnails).exists()
        averages = mrcfile.read(out / old.classes)
        for k in range(len(old.class_counts)):
            url = f"{running.url}/files/{old.thumbnails}/class_{k + 1:03d}.png"
            with urllib.request.urlopen(url, timeout=30) as response:
                png = Image.open(io.BytesIO(response.read()))
            assert (np.asarray(png) == display_image(averages[k])).all()
        with pytest.raises(HTTPError) as missing:  # no averages of that cycle: nothing to make
            urllib.request.urlopen(f"{running.url}/files/thumbnails/cycle_099/class_001.png",
                                   timeout=10)
        assert missing.value.code == 404 and not (out / "thumbnails" / "cycle_099").exists()
    finally:
        running.stop()


def test_a_streaming_updates_star_is_made_for_its_download(classified):
    session = classified.controller.session
    assert session.run_job("stream")
    latest = session.history[-1]
    assert latest.streamed and latest.star == ""
    name = f"cycle_{latest.number:03d}.star"
    response = urllib.request.urlopen(f"{classified.url}/files/{name}", timeout=30)
    assert name in response.headers["Content-Disposition"]
    rows = cistem_star.parse_star(response.read().decode(), name)
    assert len(rows) == latest.particles and rows["POS"].tolist() == \
        list(range(1, latest.particles + 1))
    assert not list(session.output_dir.glob(f".{name}*"))  # made for the download, then gone
    with pytest.raises(HTTPError) as missing:  # no such update: nothing is made
        urllib.request.urlopen(f"{classified.url}/files/cycle_999.star", timeout=10)
    assert missing.value.code == 404


def test_pages_get_the_latency_over_the_last_hour_and_the_oldest_alignment(classified):
    """What `live2d status` says of a streaming session's latency (KeepingUp): the figures of
    the latest update, in the state a page gets and in the update after each cycle."""
    session = classified.controller.session
    client = Client(classified)
    assert client.receive()["keeping_up"] is None  # ab initio only: nothing streams yet

    def expected() -> dict:
        history = session.history
        written = particle_times(read_committed_table(session.output_dir))[0]
        return {"cycle": history[-1].number,
                **keeping_up(history, written).to_dict()}  # one generation here

    for particles in (200, 240):  # two updates, Warp going on meanwhile
        small_warp(session.warp_dir, particles=particles)
        cycle = len(session.history)  # the update's
        # Batches of 40: the second update leaves the first's older ones as they were.
        client.send({"command": "start_job", "job_type": "stream",
                     "settings": {"stream_every": 40}})
        assert client.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
        client.wait_for_view(lambda v, cycle=cycle: v["keeping_up"] is not None
                             and v["keeping_up"]["cycle"] == cycle)
        assert session.history[-1].number == cycle and session.history[-1].streamed
        figures = client.view["keeping_up"]
        assert figures == expected()
        assert figures["p50"] is not None and figures["p99"] >= figures["p50"] > 0
        assert figures["oldest_alignment"] is not None and figures["in_classes"] > 0
    assert figures["imported"] == 240 and figures["latest_latency"] is not None
    history = session.history
    assert figures["oldest_alignment"] == history[-1].finished - history[-2].finished > 0
    fresh = Client(classified)  # a page that connects now is sent them at once
    assert fresh.receive()["keeping_up"] == figures
    fresh.close()
    client.close()


def test_a_dismissed_alert_is_hidden_for_every_page_until_it_fires_anew(server):
    """One page dismisses an alert: every page hears it, a page connecting later gets it
    dismissed (alerts.json keeps it), and once it clears and fires again it is shown again."""
    from live2d.alerts import WARP_STALLED, read_alerts

    session = server.controller.session
    stalled = {WARP_STALLED: "Warp stalled: no new particle in /warp for 25 min"}
    session._update_alerts((WARP_STALLED,), stalled)  # as the stall rule fires it
    first, second = Client(server), Client(server)
    for client in (first, second):
        alerts = client.receive()["alerts"]
        assert [(a["key"], a["dismissed"]) for a in alerts] == [(WARP_STALLED, False)]

    first.send({"command": "dismiss_alert", "key": WARP_STALLED})
    assert first.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"
    for client in (first, second):
        client.wait_for_view(lambda v: [a["dismissed"] for a in v["alerts"]] == [True], 10)
    assert [a.dismissed for a in read_alerts(session.output_dir)] == [True]
    later = Client(server)
    assert [a["dismissed"] for a in later.receive()["alerts"]] == [True]
    first.send({"command": "dismiss_alert", "key": WARP_STALLED})  # twice is once
    assert first.wait_for(lambda m: m["type"] in ("ok", "error"))["type"] == "ok"

    session._update_alerts((WARP_STALLED,), {})  # particles arrive: it clears
    second.wait_for_view(lambda v: v["alerts"] == [], 10)
    session._update_alerts((WARP_STALLED,), stalled)  # and Warp stalls again: a new alert
    shown = second.wait_for_view(lambda v: len(v["alerts"]) == 1, 10)["alerts"][0]
    assert not shown["dismissed"]
    for client in (first, second, later):
        client.close()


def test_a_page_gets_the_grid_square_map_with_the_state_and_after_each_cycle(tmp_path):
    """An EPU-named session: each square with its holes in the state, in collection order; an
    update between cycles leaves the map out (it changes with cycles only)."""
    from live2d.collection_yield import read_table
    from live2d.simulate import HOLES_PER_SQUARE, simulate

    warp, epu = tmp_path / "warp", tmp_path / "epu"
    simulate(warp, particles=480, per_micrograph=10, box=32, pixel_size=4.0, snr=0.5, views=3,
             epu_dir=epu)
    controller = Controller(warp, engine="builtin", settings=SMALL, epu_dir=epu)
    try:
        assert controller.state()["grid_map"] is None  # no scored cycle yet
        controller.session.run_job("abinit")
        grid = controller.state()["grid_map"]
        squares = read_table(controller.session.output_dir, "square")
        assert [s["grid_square"] for s in grid["squares"]] == sorted(
            (s["grid_square"] for s in squares), key=lambda name: next(
                s["first_seen"] for s in squares if s["grid_square"] == name))
        assert len(grid["squares"]) == 3
        for shown, row in zip(grid["squares"], squares, strict=True):
            assert shown["good_fraction"] == row["good_fraction"]
            assert shown["holes_total"] == len(shown["holes"]) == HOLES_PER_SQUARE
            assert sum(h["particles"] for h in shown["holes"]) == shown["particles"] == 160
        assert grid["micrographs"] == 48 and grid["particles"] == 480
        # Where the simulated stage put each square (a raster, 80 µm apart), from EPU's files.
        assert [(s["x_um"], s["y_um"]) for s in grid["squares"]] == [
            (0.0, 0.0), (80.0, 0.0), (160.0, 0.0)]
        assert "grid_map" not in controller.update()
        assert controller.update(new_cycle=True)["grid_map"] == grid
    finally:
        controller.close()


def test_the_map_sends_at_most_so_many_holes_per_square(tmp_path, monkeypatch):
    """A square of many holes: the first ones in collection order, and how many it has."""
    from live2d import collection_yield
    from live2d.collection_yield import grid_map, table_csv

    holes = [{"grid_square": "7", "foil_hole": str(100 + i), "micrographs": 1, "particles": 10,
              "good_particles": 5, "good_fraction": 0.5,
              "first_seen": f"2024-01-01T00:{i:02d}:00Z", "last_seen": ""} for i in range(30)]
    square = {"grid_square": "7", "micrographs": 30, "particles": 300, "good_particles": 150,
              "good_fraction": 0.5, "first_seen": "2024-01-01T00:00:00Z", "last_seen": ""}
    (tmp_path / "yield_squares.csv").write_text(table_csv([square], "square"))
    (tmp_path / "yield_holes.csv").write_text(table_csv(holes[::-1], "hole"))
    (tmp_path / "yield_micrographs.csv").write_text(table_csv([], "micrograph"))
    monkeypatch.setattr(collection_yield, "MAX_MAP_HOLES", 12)
    shown = grid_map(tmp_path)["squares"][0]
    assert shown["holes_total"] == 30
    assert [h["foil_hole"] for h in shown["holes"]] == [str(100 + i) for i in range(12)]


def test_the_epu_folder_set_on_a_page_is_checked_kept_and_used_from_the_next_cycle(tmp_path):
    """``set_epu_dir``: refused for what is no readable folder (nothing kept), kept in
    session.json and shown on every page, used by the next scored cycle's tables and map (not
    at once), kept across a restart, and forgotten with ""."""
    from live2d.output_folder import SESSION_STATE
    from live2d.simulate import simulate

    warp, epu = tmp_path / "warp", tmp_path / "epu"
    simulate(warp, particles=480, per_micrograph=10, box=32, pixel_size=4.0, snr=0.5, views=3,
             epu_dir=epu)
    (tmp_path / "a_file").write_text("not a folder")
    saved = warp / "classification" / SESSION_STATE
    server = RunningServer(Controller(warp, engine="builtin", settings=SMALL))
    try:
        page, other = Client(server), Client(server)
        assert page.receive()["epu_dir"] is None and other.receive()["epu_dir"] is None
        for message, complaint in (
                ({"command": "set_epu_dir"}, "'path' must be"),
                ({"command": "set_epu_dir", "path": 12}, "'path' must be"),
                ({"command": "set_epu_dir", "path": "x" * 5000}, "'path' must be"),
                ({"command": "set_epu_dir", "path": f"{epu}\0"}, "'path' must be"),
                ({"command": "set_epu_dir", "path": str(epu), "hard": True}, "unexpected field"),
                ({"command": "set_epu_dir", "path": "epu"}, "not an absolute path"),
                ({"command": "set_epu_dir", "path": str(tmp_path / "typo")}, "is not there"),
                ({"command": "set_epu_dir", "path": str(tmp_path / "a_file")}, "not a folder")):
            page.send(message)
            assert complaint in page.wait_for(lambda m: m["type"] == "error")["message"]
        assert json.loads(saved.read_text())["epu_dir"] == ""  # nothing kept by a refusal

        page.send({"command": "set_epu_dir", "path": f" {epu}/ "})
        reply = page.wait_for(lambda m: m["type"] in ("epu_saved", "error"))
        assert reply["type"] == "epu_saved", reply
        assert "12 foil holes on 3 grid squares so far" in reply["message"]
        assert "next classified cycle" in reply["message"]
        assert other.wait_for_view(lambda v: v["epu_dir"] == str(epu))["grid_map"] is None
        assert json.loads(saved.read_text())["epu_dir"] == str(epu)
        assert any("12 foil holes" in line for line in server.controller.state(True)["log"])

        server.controller.session.run_job("abinit")  # the next scored cycle uses it
        squares = server.controller.state()["grid_map"]["squares"]
        assert len(squares) == 3 and all(s["holes_total"] == 4 for s in squares)
        page.close()
        other.close()
    finally:
        server.stop()

    restarted = Controller(warp, engine="builtin")  # no --epu: session.json's is kept
    try:
        assert restarted.state()["epu_dir"] == str(epu)
        assert restarted.handle({"command": "set_epu_dir", "path": ""})["type"] == "epu_saved"
        assert restarted.state()["epu_dir"] is None
        assert json.loads(saved.read_text())["epu_dir"] == ""
    finally:
        restarted.close()


def test_a_thinned_updates_averages_and_thumbnails_are_refused_saying_why(classified_template):
    """An older streaming update's averages are thinned: the pages hear which with the next
    cycle, and its averages and thumbnails are answered with why and the nearest kept."""
    warp = classified_template.restore() / "grids" / "warp"
    running = RunningServer(Controller(warp, engine="builtin",
                                       settings={**SMALL, "keep_cycle_results": 1}))
    try:
        client = Client(running)
        client.receive()
        session = running.controller.session
        assert session.run_job("stream") and session.run_job("stream")
        first = session.history[-2]
        # cycles 3 and 5 keep theirs: the later of two as near is named
        assert first.streamed and not first.averages_kept
        assert [r.number for r in session.history if not r.averages_kept] == [first.number]
        out = session.output_dir
        assert not (out / first.classes).exists() and (out / first.class_table).exists()
        view = client.wait_for_view(lambda v: len(v["history"]) == first.number + 2)
        assert not view["history"][first.number]["averages_kept"]  # the page marks it
        for name in (first.classes, f"{first.thumbnails}/class_001.png"):
            with pytest.raises(HTTPError) as refused:
                urllib.request.urlopen(f"{running.url}/files/{name}", timeout=10)
            said = refused.value.read().decode()
            assert refused.value.code == 410, said
            assert f"The class averages of cycle {first.number} (a streaming update) were " \
                   f"thinned" in said and f"nearest kept: cycle {first.number + 1}" in said
        assert not (out / first.thumbnails).exists()  # nothing made again
        client.close()
    finally:
        running.stop()


class Told:
    """What a LatestMeasurement says it measured, key by key, and an event set once it says
    ``awaited``."""

    def __init__(self, awaited: str) -> None:
        self.keys: list[str] = []
        self.awaited = awaited
        self.arrived = threading.Event()

    def __call__(self, key: str) -> None:
        self.keys.append(key)
        if key == self.awaited:
            self.arrived.set()


def test_a_value_asked_for_while_another_is_measured_is_measured_next():
    # The page asks again only when told a measurement ended: a key asked for while another
    # was measured (e.g. a new curation cut) was dropped, and the page waited for ever.
    started, release = threading.Event(), threading.Event()
    told = Told("new")

    def measure(key: str) -> str:
        if key == "old":
            started.set()
            release.wait(10)
        return key.upper()

    measurement = LatestMeasurement("test", measure, told)
    assert measurement.get("old") == (False, None)
    assert started.wait(10)
    assert measurement.get("new") == (False, None)  # while "old" is measured
    release.set()
    assert told.arrived.wait(10), f"only {told.keys} measured"
    measurement.join(10)
    assert told.keys == ["old", "new"]
    assert measurement.get("new") == (True, "NEW")


def test_a_measurement_that_fails_counts_as_none_and_the_next_is_measured():
    # A measurement that raised ended its thread without saying so: no later key was measured.
    told = Told("good")

    def measure(key: str) -> str:
        if key == "bad":
            raise AttributeError("'NoneType' object has no attribute 'classes'")
        return key.upper()

    measurement = LatestMeasurement("test", measure, told)
    measurement.get("bad")
    measurement.join(10)
    assert measurement.get("bad") == (True, None) and told.keys == ["bad"]
    measurement.get("good")
    assert told.arrived.wait(10), f"only {told.keys} measured"
    measurement.join(10)
    assert measurement.get("good") == (True, "GOOD")


def test_figures_with_none_to_be_had_are_none(classified):
    # Both measurements can find nothing to measure (no streaming update as the latest cycle:
    # the history changed since it was asked for; a cycle whose particle results are gone).
    controller = classified.controller
    session = controller.session
    folder, history = session.output_dir, session.history
    assert controller._measure_keeping_up((folder, len(history), history[-1].number, 0.0),
                                          history) is None
    record = session.selection.latest_scored()
    assert controller._measure_curation((folder, record.number, 1.0),
                                        replace(record, star_kept=False)) is None
