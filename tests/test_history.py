"""The cycle history: appended to, never rewritten, and read the same by every reader."""

import dataclasses
import itertools
import json

import pytest
from test_session import SMALL, small_session

from live2d.cli import main as cli_main
from live2d.history import CycleHistory, CycleRecord, read_class_table, read_history
from live2d.output_folder import HISTORY
from live2d.schedule import Settings
from live2d.session import Session


def record(number: int, **values) -> CycleRecord:
    """Cycle ``number``'s record, made-up but for ``values``."""
    return CycleRecord(
        number=number, job=1, job_type="abinit", block="startup", block_cycle=number + 1,
        job_cycle=number + 1, job_cycles=4, high_res=20.0, fraction=1.0, particles=100,
        class_counts=[60, 40], started=0.0, finished=1.0, engine="builtin (test)",
        generation=0, particles_per_second=100.0, classes=f"cycle_{number:03d}.mrc",
        star=f"cycle_{number:03d}.star", thumbnails=f"thumbnails/cycle_{number:03d}", **values)


def test_records_are_appended_and_changes_apply_to_the_earlier_record(tmp_path):
    history = CycleHistory(tmp_path)
    history.append(record(0, star_kept=True))
    history.append(record(1, star_kept=True))
    before = (tmp_path / HISTORY).read_bytes()
    history.change(0, star_kept=False)
    after = (tmp_path / HISTORY).read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 3  # appended, nothing rewritten
    expected = [record(0, star_kept=False), record(1, star_kept=True)]
    assert history.records == expected
    assert read_history(tmp_path) == expected == CycleHistory(tmp_path).records


def test_a_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_writer(tmp_path):
    CycleHistory(tmp_path).append(record(0))
    with open(tmp_path / HISTORY, "ab") as handle:  # a kill mid-append
        handle.write(b'{"number": 1, "class_cou')
    assert read_history(tmp_path) == [record(0)]
    history = CycleHistory(tmp_path)
    history.append(record(1))
    assert read_history(tmp_path) == [record(0), record(1)]
    assert (tmp_path / HISTORY).read_text().count("\n") == 2


def test_a_record_is_one_sorted_json_line_and_other_versions_records_load(tmp_path):
    history = CycleHistory(tmp_path)
    history.append(record(0, class_score=[0.9, 0.1], class_table="cycle_000_classes.json"))
    line = (tmp_path / HISTORY).read_text()
    assert line == json.dumps(dataclasses.asdict(history.records[0]), separators=(",", ":"),
                              sort_keys=True) + "\n"
    older = {k: v for k, v in record(1).to_dict().items() if k not in ("left_out", "class_table")}
    newer = {**record(2).to_dict(), "comes_later": 1}
    lacking = {k: v for k, v in record(3).to_dict().items() if k != "star"}
    with open(tmp_path / HISTORY, "a") as handle:
        for value in (older, newer, lacking, {"change": 2, "star_kept": False, "later": 2}):
            handle.write(json.dumps(value) + "\n")
    assert read_history(tmp_path) == [history.records[0], record(1), record(2, star_kept=False)]


def test_the_class_table_is_read_where_the_record_says(tmp_path):
    table = [{"number": 1, "score": 0.9}, {"number": 2, "score": 0.1}]
    (tmp_path / "cycle_001_classes.json").write_text(json.dumps(table))
    assert read_class_table(tmp_path, record(1, class_table="cycle_001_classes.json")) == table
    assert read_class_table(tmp_path, record(0)) is None  # the random start has none
    assert read_class_table(tmp_path, record(2, class_table="cycle_002_classes.json")) is None
    (tmp_path / "cycle_003_classes.json").write_text('{"number": 1}')
    with pytest.raises(ValueError):
        read_class_table(tmp_path, record(3, class_table="cycle_003_classes.json"))


def test_a_cycle_adds_one_line_and_session_json_does_not_grow(tmp_path):
    warp = tmp_path / "warp"
    small_session(warp)
    session = Session(warp, settings=Settings(**SMALL))
    out = session.output_dir
    seen: list[tuple[bytes, int]] = []

    def after_cycle(event):
        if event["type"] == "cycle":
            seen.append(((out / HISTORY).read_bytes(), (out / "session.json").stat().st_size))

    session.add_listener(after_cycle)
    assert session.run_job("abinit") and session.run_job("seeded")
    session.close()
    assert len(seen) >= 6
    for (earlier, _), (later, _) in itertools.pairwise(seen):
        assert later.startswith(earlier) and later.count(b"\n") == earlier.count(b"\n") + 1
    sizes = [size for _, size in seen]
    assert max(sizes) - min(sizes) < 200, sizes  # the job's progress, not the history
    assert "history" not in json.loads((out / "session.json").read_text())


def test_a_session_of_an_earlier_version_moves_its_history_out_and_resumes(tmp_path):
    warp = tmp_path / "warp"
    small_session(warp)
    session = Session(warp, settings=Settings(**SMALL))
    session.add_listener(lambda e: e["type"] == "cycle" and session.request_stop())
    assert session.run_job("abinit") is False  # one cycle done, the job half-way
    session.close()
    out = session.output_dir
    state = json.loads((out / "session.json").read_text())
    old = {**state, "version": 1,  # as version 1 wrote it
           "history": [r.to_dict() for r in read_history(out)]}
    (out / "session.json").write_text(json.dumps(old))
    (out / HISTORY).unlink()
    assert [r.number for r in read_history(out)] == [0]  # readers manage either way

    resumed = Session(warp)
    state = json.loads((out / "session.json").read_text())
    assert "history" not in state and state["version"] == 2
    assert [c.number for c in resumed.history] == [0]
    assert resumed.run_job()
    assert [c.number for c in resumed.history] == [0, 1, 2, 3]
    resumed.close()
    assert cli_main(["status", str(out)]) == 0


def test_a_kill_between_recording_a_cycle_and_saving_the_job_does_not_run_it_twice(tmp_path):
    warp = tmp_path / "warp"
    small_session(warp)
    session = Session(warp, settings=Settings(**SMALL))
    session.add_listener(lambda e: e["type"] == "cycle" and e["cycle"]["number"] == 1
                         and session.request_stop())
    assert session.run_job("abinit") is False
    session.close()
    out = session.output_dir
    state = json.loads((out / "session.json").read_text())
    assert state["job"]["next_index"] == 2
    state["job"]["next_index"] = 1  # cycle 1 is in the history, the job was not saved after it
    (out / "session.json").write_text(json.dumps(state))

    resumed = Session(warp)
    assert resumed.job is not None and resumed.job.next_index == 2
    assert resumed.run_job()
    records = [dataclasses.asdict(c) for c in resumed.history]
    assert [r["number"] for r in records] == [0, 1, 2, 3]
    assert [r["job_cycle"] for r in records] == [1, 2, 3, 4]
    resumed.close()


def test_pruning_a_star_prunes_the_signal_shares_measured_from_it(tmp_path):
    from live2d.output_folder import shares_name

    history = CycleHistory(tmp_path)
    for number in range(3):
        # one job per cycle but the last two: cycle 0 is its job's last, and kept
        history.append(dataclasses.replace(record(number), job=1 if number else 0))
        (tmp_path / f"cycle_{number:03d}.star").write_text("star")
        (tmp_path / shares_name(number)).write_bytes(b"shares")
    assert history.prune_results(keep=1) == [1]
    assert [(tmp_path / shares_name(n)).exists() for n in range(3)] == [True, False, True]



def add_cycle(history: CycleHistory, number: int, every: float = 240.0) -> None:
    """Cycle ``number`` of a session of an ab initio job (cycles 0-3) and then streaming
    updates, one every ``every`` seconds, with its files: averages (and the Scipion plugin's
    link to them) and class table."""
    folder = history.path.parent
    values = dict(batches=[[0, 100, number]], job=number - 2, job_type="stream",
                  block="stream", job_cycle=1, job_cycles=1) if number >= 4 else {}
    history.append(dataclasses.replace(
        record(number, class_table=f"cycle_{number:03d}_classes.json"),
        started=10.0 + every * number, finished=10.0 + every * (number + 1) - 1.0, **values))
    (folder / f"cycle_{number:03d}.mrc").write_bytes(b"averages")
    (folder / f"cycle_{number:03d}.mrcs").symlink_to(f"cycle_{number:03d}.mrc")
    (folder / f"cycle_{number:03d}_classes.json").write_text("[]")


def streaming_history(folder, updates: int, every: float = 240.0) -> CycleHistory:
    history = CycleHistory(folder)
    for number in range(4 + updates):
        add_cycle(history, number, every)
    return history


def test_older_streaming_updates_keep_their_averages_once_an_hour_and_where_acted_on(tmp_path):
    from live2d.history import AVERAGES_EVERY_SECONDS

    acted_on = {9, 33}  # marked, exported: kept whatever their age
    history = CycleHistory(tmp_path)
    for number in range(64):  # 4 hours of updates, pruned after each as the session does
        add_cycle(history, number)
        history.prune_results(keep=5)
        history.thin_averages(keep=5, acted_on=acted_on)
    records = read_history(tmp_path)  # as recorded, for every reader
    assert records == history.records
    hours = [int((r.finished - records[0].started) // AVERAGES_EVERY_SECONDS) for r in records]
    first_of_hour = {r.number for r, hour, before in zip(records[1:], hours[1:], hours[:-1],
                                                         strict=True) if hour != before}
    assert first_of_hour == {15, 30, 45, 60}  # an update every 4 minutes
    kept = {r.number for r in records if r.averages_kept}
    assert kept == {0, 1, 2, 3} | first_of_hour | acted_on | set(range(59, 64))
    assert len(kept) == 14  # of 64
    for r in records:
        assert (tmp_path / r.classes).exists() == r.averages_kept
        assert (tmp_path / r.classes).with_suffix(".mrcs").is_symlink() == r.averages_kept
        assert (tmp_path / r.class_table).exists()  # every class table stays (small)
    # A session opened again walks the history once more and decides the same.
    again = CycleHistory(tmp_path)
    assert again.thin_averages(keep=5, acted_on=acted_on) == [] and again.records == records


def test_thinning_looks_only_at_the_updates_leaving_the_window_and_never_the_latest(tmp_path):
    class Watched(list):  # the indices of the records read
        def __getitem__(self, index):
            seen.append(index)
            return super().__getitem__(index)

    history = CycleHistory(tmp_path)
    for number in range(24):
        add_cycle(history, number, every=60.0)
        history.thin_averages(keep=3)
    seen: list[int] = []
    history.records = Watched(history.records)
    for number in range(24, 34):
        add_cycle(history, number, every=60.0)
        seen.clear()
        assert history.thin_averages(keep=3) == [number - 3]
        # the session's first cycle (its start, for the hour) and the latest few: the update
        # leaving the window, the one before it, and those its change passes on the way
        assert min(index for index in seen if index) >= len(history) - 5, seen
    assert history.thin_averages(keep=0) == [31, 32]
    assert history.records[-1].averages_kept  # never the latest, whatever keep says


def test_thinned_averages_are_recorded_before_their_file_goes(tmp_path, monkeypatch):
    """A kill between the two leaves a file no record names, never a record naming no file."""
    from pathlib import Path

    history = streaming_history(tmp_path, updates=3, every=60.0)
    unlink = Path.unlink

    def killed(path, missing_ok=False):
        if path.suffix == ".mrc":
            raise KeyboardInterrupt
        unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        history.thin_averages(keep=1)
    thinned = read_history(tmp_path)[4]
    assert not thinned.averages_kept and (tmp_path / thinned.classes).exists()


def test_the_session_keeps_the_averages_selection_json_says_were_acted_on(tmp_path):
    from types import SimpleNamespace

    from live2d.learned_proposal import FEATURES, Example
    from live2d.selection import SelectionState, acted_on_cycles

    state = SelectionState(cycle=12, marks={"1": "good"},
                           examples=[Example(5, 1, (0.1,) * len(FEATURES), "good", 1).to_dict()],
                           exports=[{"file": "/x.star", "cycle": 7, "classes": [1]}])
    assert acted_on_cycles(state) == {12, 5, 7}
    assert acted_on_cycles(SelectionState()) == set()  # nothing marked or exported yet
    history = streaming_history(tmp_path, updates=6, every=60.0)
    state.cycle, state.examples = 6, []
    session = SimpleNamespace(output_dir=tmp_path, settings=Settings(keep_cycle_results=1),
                              _history=history, _averages_read_elsewhere=frozenset())
    (tmp_path / "selection.json").write_text("{broken")  # unreadable: nothing thinned, said
    assert Session._thin_averages(session) == []
    state.save(tmp_path)
    assert Session._thin_averages(session) == [4, 5, 8]  # the export's 7 and the marks' 6 stay


def test_the_averages_another_program_shows_are_not_thinned_while_it_does(tmp_path):
    """The Scipion plugin's outputs read the averages of the cycle they show where they are,
    and its publishing budget may hold the next cycle back: the cycle named when it leaves the
    window keeps its averages; one named no more by then loses them."""
    warp = tmp_path / "warp"
    small_session(warp)
    session = Session(warp, settings=Settings(**SMALL, keep_cycle_results=1))
    try:
        assert session.run_job("abinit")
        assert session.run_job("stream")
        shown = session.history[-1]
        session.keep_averages_of({shown.number})
        assert session.run_job("stream")  # the shown update leaves the window of one
        assert session.run_job("stream")
        replaced = session.history[-2]
        session.keep_averages_of({session.history[-1].number})
        assert session.run_job("stream")
        records = {r.number: r for r in read_history(session.output_dir)}
        assert records[shown.number].averages_kept
        assert (session.output_dir / shown.classes).exists()
        assert not records[replaced.number].averages_kept  # never named: thinned
        assert records[session.history[-2].number].averages_kept  # named when it left
        assert [r.number for r in session.history if not r.averages_kept] == [replaced.number]
    finally:
        session.close()
