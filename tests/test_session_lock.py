"""One writer per output folder: a second writer beside a live one is refused and changes
nothing; a killed holder leaves no lock; the page and the reading commands watch a running
session read-only. The holder is a real second process with a real session open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_helpers import SMALL, small_warp

from live2d.cli import main as cli_main
from live2d.errors import SessionError, SessionInUse
from live2d.history import read_history
from live2d.server.control import CommandError, Controller
from live2d.session import Session
from live2d.session_lock import SessionLock, holder
from live2d.session_view import SessionView

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
# The other processes: each opens a session as live2d run does (importing, optionally one job),
# says "ready" and then sits on the folder, as a run does between polls or mid-cycle. Each is a
# fork of one process that imported Live2D once per module (its seconds of imports are paid
# once, not per holder); that process runs nothing else, and each holder is a process of its
# own, with its own pid, session and lock, killed by SIGKILL.
HOLDERS = """
import json, os, signal, sys, time, traceback
import live2d.engines.builtin, live2d.importer  # what a session opens imports, once: here
from live2d.schedule import Settings
from live2d.session import Session
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the holders
for line in sys.stdin:
    warp, out, what, settings = json.loads(line)
    if os.fork():
        continue
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        session = Session(warp, out, engine="builtin", device="cpu",
                          settings=Settings.from_dict(settings), owner="live2d run")
        if what == "classify":
            session.run_job("abinit")
        else:
            session.import_new()
        print(f"ready {os.getpid()}", flush=True)
    except BaseException:
        print(json.dumps(traceback.format_exc()), flush=True)
        os._exit(1)
    time.sleep(600)
    os._exit(0)
"""


class Holders:
    """The process that forks the holders."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDERS], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=ENV)

    def start(self, warp: Path, out: Path, classify: bool) -> int:
        self.process.stdin.write(json.dumps([str(warp), str(out),
                                             "classify" if classify else "import", SMALL]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line.startswith("ready "):
            raise AssertionError(f"the holder did not start: {line and json.loads(line)}")
        return int(line.split()[1])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture(scope="module")
def holders():
    forking = Holders()
    yield forking
    forking.close()


class Holder:
    def __init__(self, holders: Holders, warp: Path, out: Path, classify: bool = False) -> None:
        self.pid = holders.start(warp, out, classify)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive():  # gone once the kernel reaped it
            assert time.monotonic() < deadline, f"holder {self.pid} outlived SIGKILL"
            time.sleep(0.01)


@pytest.fixture
def folders(tmp_path):
    return small_warp(tmp_path / "warp"), tmp_path / "warp" / "classification"


@pytest.fixture
def holding(folders, holders):
    """A live writer (importing only) with what its running cycle has on disk but not
    committed: rows past the store's commit point, work/ scratch, an update's batch file."""
    warp, out = folders
    holder_process = Holder(holders, warp, out)
    plant_work_in_flight(out)
    yield warp, out, holder_process
    holder_process.kill()


@pytest.fixture(scope="module")
def classified_holder(tmp_path_factory, holders):
    """A live writer that has classified one job (for status, yield, export beside it)."""
    root = tmp_path_factory.mktemp("classified")
    warp = small_warp(root / "warp")
    out = warp / "classification"
    holder_process = Holder(holders, warp, out, classify=True)
    plant_work_in_flight(out)
    yield warp, out, holder_process
    holder_process.kill()


def plant_work_in_flight(out: Path) -> None:
    # What another opener would destroy: its cut_back, clean_work_folder, drop_unreferenced.
    with open(out / "particles.star", "ab") as star:
        star.write(b"uncommitted rows of the import under way\n")
    (out / "work").mkdir(exist_ok=True)
    (out / "work" / "cycle_009_input.star").write_bytes(b"the running cycle's input")
    (out / "stream").mkdir(exist_ok=True)
    (out / "stream" / "batch_000000000_cycle_009.pt").write_bytes(b"the running update's sums")


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_second_writer_is_refused_naming_the_holder_and_changes_nothing(holding, capsys):
    warp, out, holder_process = holding
    before = files(out)
    assert "work/cycle_009_input.star" in before and "stream/batch_000000000_cycle_009.pt" \
        in before

    with pytest.raises(SessionInUse) as refused:
        Session(warp, out, engine="builtin", device="cpu")
    message = str(refused.value)
    assert f"pid {holder_process.pid} on " in message
    assert "`live2d run`" in message and "stop it first" in message
    assert "live2d serve" in message  # what to do meanwhile

    # The command line: one line, no traceback, status 1.
    assert cli_main(["run", str(warp), "--once", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("live2d run: ") and "is in use by another Live2D process" in err
    assert f"pid {holder_process.pid}" in err and "Traceback" not in err

    assert files(out) == before  # byte for byte: store, work/, stream/, state, log, lock


def test_a_killed_holder_leaves_no_lock_and_the_next_writer_resumes(holding):
    warp, out, holder_process = holding
    found = holder(out)
    assert found is not None and found.pid == holder_process.pid
    holder_process.kill()  # SIGKILL: no clean-up ran in the holder
    assert (out / "session.lock").read_text()  # its text is still there, and means nothing
    assert holder(out) is None

    session = Session(warp, out, engine="builtin", device="cpu")
    try:
        assert session.store.count == 120  # the holder's committed import, kept
        assert not (out / "work").exists()  # the killed cycle's scratch, cleaned now
        assert not (out / "stream" / "batch_000000000_cycle_009.pt").exists()
        lock = json.loads((out / "session.lock").read_text())
        assert lock["pid"] == os.getpid()
    finally:
        session.close()
    assert holder(out) is None and (out / "session.lock").read_text() == ""


def test_the_lock_is_counted_within_one_process_and_released_by_the_last(tmp_path):
    first = SessionLock.acquire(tmp_path, "test")
    second = SessionLock.acquire(tmp_path, "test")  # the server reopening its own folder
    first.release()
    first.release()  # twice is once
    assert json.loads((tmp_path / "session.lock").read_text())["pid"] == os.getpid()
    second.release()
    assert (tmp_path / "session.lock").read_text() == ""


def test_the_page_attaches_read_only_beside_a_writer_and_refuses_changes(holding):
    warp, out, holder_process = holding
    before = files(out)
    controller = Controller(warp, engine="builtin", device="cpu", settings={"classes": 7})
    try:
        assert isinstance(controller.session, SessionView)
        state = controller.state(with_log=True)
        assert f"pid {holder_process.pid}" in state["read_only"]
        assert state["particles"] == 120 and state["settings"]["classes"] == SMALL["classes"]
        assert any("imported 120 particles" in line for line in state["log"])
        for message, what in ((
                {"command": "start_job", "job_type": "abinit"}, "start a job"),
                ({"command": "start_automatic"}, "start automatic jobs"),
                ({"command": "stop"}, "stop jobs"),
                ({"command": "mark", "classes": {"1": "good"}}, "mark classes"),
                ({"command": "export"}, "export particles"),
                ({"command": "dismiss_alert", "key": "warp_stalled"}, "dismiss alerts"),
                ({"command": "set_epu_dir", "path": str(out)}, "change the EPU session folder"),
                ({"command": "start_job", "settings": {"classes": 5}}, "start a job")):
            with pytest.raises(CommandError, match=f"cannot {what} from this page: Watching "
                                                   "read-only"):
                controller.handle(message)
        assert not controller.session.refresh()  # nothing changed: nothing sent again
        assert files(out) == before
        assert state["epu_dir"] is None  # the writer's (it has none), shown, never changed

        # The writer stops: the page says so, and the folder chosen again is this page's.
        holder_process.kill()
        assert controller.session.refresh()
        assert "has stopped" in controller.state()["read_only"]
        controller.handle({"command": "set_warp_dir", "path": str(warp)})
        assert isinstance(controller.session, Session)
        assert controller.state()["read_only"] is None
    finally:
        controller.close()


def test_the_view_follows_what_the_writer_commits(holding):
    warp, out, _ = holding
    view = SessionView(warp, out, "pid 1 on test")
    heard = []
    view.add_listener(heard.append)
    with open(out / "live2d.log", "a", encoding="utf-8") as log:
        log.write("a line the writer logged\nhalf a li")
    state = json.loads((out / "session.json").read_text())
    state["automatic"] = True
    (out / "session.json").write_text(json.dumps(state))
    assert view.refresh()
    assert view.snapshot()["automatic"] and view.status == "listening"
    assert [e["line"] for e in heard if e["type"] == "log"] == ["a line the writer logged"]

    # The writer's yield tables, and its EPU folder's square images: the map places them.
    from live2d.collection_yield import table_csv

    square = {"grid_square": "111", "micrographs": 1, "particles": 10, "good_particles": 5,
              "good_fraction": 0.5, "first_seen": "", "last_seen": ""}
    folder = out.parent / "epu" / "Images-Disc1" / "GridSquare_111"
    image = folder / "GridSquare_20250108_151151.xml"
    image.parent.mkdir(parents=True)
    image.write_text('<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/'
                     'Fei.SharedObjects"><microscopeData><stage><Position><X>-8E-05</X>'
                     '<Y>1.6E-04</Y></Position></stage></microscopeData></MicroscopeImage>')
    state["epu_dir"] = str(out.parent / "epu")
    (out / "session.json").write_text(json.dumps(state))
    (out / "yield_squares.csv").write_text(table_csv([square], "square"))
    (out / "yield_holes.csv").write_text(table_csv([], "hole"))
    (out / "yield_micrographs.csv").write_text(table_csv([], "micrograph"))
    assert view.refresh()
    [shown] = view.snapshot()["grid_map"]["squares"]
    assert (shown["x_um"], shown["y_um"]) == (-80.0, 160.0)


def test_status_yield_and_export_beside_a_running_writer_read_only(classified_holder,
                                                                   tmp_path, capsys):
    _, out, _ = classified_holder
    assert read_history(out), "the holder classified nothing"
    before = files(out)

    assert cli_main(["status", str(out)]) == 0
    assert "cycle" in capsys.readouterr().out
    assert cli_main(["yield", str(out), "--format", "csv"]) == 0
    assert files(out) == before

    exported = tmp_path / "good.star"
    assert cli_main(["export", str(out), "--to", str(exported), "--classes", "1,2,3"]) == 0
    assert exported.exists()
    after = files(out)
    # The export's one change: its record in selection.json, made under the selection's own
    # lock, which the writer takes for its changes too.
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert changed <= {"selection.json", ".selection.lock"}
    assert json.loads(after["selection.json"])["exports"][-1]["file"] == str(exported)


def test_a_session_that_cannot_open_releases_the_lock(tmp_path):
    warp = small_warp(tmp_path / "warp")
    out = warp / "classification"
    out.mkdir()
    (out / "session.json").write_text("{not json")
    with pytest.raises(SessionError, match="unreadable"):
        Session(warp, out, engine="builtin", device="cpu")
    # Asked from another process: this one's own hold would not show here (it is counted).
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from live2d.session_lock import holder; "
         "print(holder(sys.argv[1]))", str(out)], capture_output=True, text=True,
        env=ENV, check=True)
    assert probe.stdout.strip() == "None", probe.stdout
