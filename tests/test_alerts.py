"""Alerts: each fires once when its condition starts, with one sentence naming what and where;
it stays in force across evaluations and restarts, and clears when the condition ends."""

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_collection_yield import open_session, output  # noqa: F401 (a fixture)
from test_forecast import three_hours

from live2d.alerts import (
    BAD_SQUARE,
    CYCLE_RULES,
    TARGET_REACHED,
    WARP_STALLED,
    YIELD_FALLING,
    AlertBook,
    cycle_alerts,
    read_alerts,
)
from live2d.cli import main as cli_main
from live2d.collection_yield import ScoredParticles
from live2d.forecast import forecast
from live2d.output_folder import LOG, SESSION_STATE
from live2d.schedule import Settings
from live2d.session import Session


def grid(good_share: dict[str, float], micrographs: int = 10, per: int = 10) -> ScoredParticles:
    """Particles of ``micrographs`` micrographs of ``per`` picks in each grid square, the
    square's share of them in the good class 1 (the rest in class 2)."""
    names, classes = [], []
    for square, share in good_share.items():
        for m in range(micrographs):
            name = (f"/epu/GridSquare_{square}/Data/FoilHole_{square}{m:03d}_Data_1_2_"
                    f"20231104_0840{m:02d}.tif")
            names += [name] * per
            classes += [1 if i < round(share * per) else 2 for i in range(per)]
    classes = np.array(classes)
    return ScoredParticles(3, pd.Series(names), classes == 1, classes)


def judged(particles: ScoredParticles, settings: Settings | None = None) -> dict[str, str]:
    settings = settings or Settings()
    return cycle_alerts(particles, None, forecast(particles, np.full(len(particles.good), np.nan)),
                        settings)


BAD = {"1834520": 0.8, "1834521": 0.8, "1834522": 0.1}
BAD_SENTENCE = ("GridSquare_1834522: 10% good particles over 10 micrographs, against 80% for "
                "the session's squares (good particles: whole classes, no particle curation)")


def listened_to(folder: Path, warp: Path, events: list[dict]) -> Session:
    """The session of ``folder`` (Warp folder ``warp``), every event it emits put in ``events``."""
    session = open_session(folder, warp)
    session.add_listener(events.append)
    return session


def test_a_bad_square_fires_once_is_kept_across_a_restart_and_clears_when_it_recovers(
        output, tmp_path):  # noqa: F811
    (output / SESSION_STATE).unlink()
    events = []
    session = listened_to(output, tmp_path / "warp", events)
    try:
        for _ in range(2):  # judged after two cycles: fired once
            session._check_cycle_alerts(pd.DataFrame(), grid(BAD), None)
    finally:
        session.close()
    alerts = [e for e in events if e["type"] == "alert"]
    assert [(e["key"], e["message"], e["active"]) for e in alerts] == [
        ("square:1834522", BAD_SENTENCE, True)]
    warned = [line for line in (output / LOG).read_text().splitlines() if "GridSquare_" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and BAD_SENTENCE in warned[0]

    events.clear()
    session = listened_to(output, tmp_path / "warp", events)  # a restart: in force, not re-fired
    try:
        assert [a["message"] for a in session.snapshot()["alerts"]] == [BAD_SENTENCE]
        session._check_cycle_alerts(pd.DataFrame(), grid(BAD), None)
        assert [e for e in events if e["type"] == "alert"] == []
        session._check_cycle_alerts(pd.DataFrame(), grid(BAD | {"1834522": 0.7}), None)
    finally:
        session.close()
    assert [(e["key"], e["active"]) for e in events if e["type"] == "alert"] == [
        ("square:1834522", False)]
    assert read_alerts(output) == []


def test_an_alerts_changed_figures_reach_the_listeners_without_firing_it_again(
        output, tmp_path):  # noqa: F811
    # The page builds its update when an event comes: a change with no event of its own, made
    # after the page's update for the alert's start, stayed unseen until the next cycle.
    (output / SESSION_STATE).unlink()
    events = []
    session = listened_to(output, tmp_path / "warp", events)
    try:
        session._update_alerts((BAD_SQUARE,), {"square:7": "GridSquare_7: 10% good particles"})
        session._update_alerts((BAD_SQUARE,), {"square:7": "GridSquare_7: 9% good particles"})
    finally:
        session.close()
    assert [(e["type"], e["message"]) for e in events if e["type"].startswith("alert")] == [
        ("alert", "GridSquare_7: 10% good particles"),
        ("alert_changed", "GridSquare_7: 9% good particles")]
    warned = [line for line in (output / LOG).read_text().splitlines() if "GridSquare_7" in line]
    assert len(warned) == 1  # fired once


def test_status_lists_the_alerts_in_force(output, tmp_path, capsys):  # noqa: F811
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp")
    try:
        session._check_cycle_alerts(pd.DataFrame(), grid(BAD), None)
    finally:
        session.close()
    assert cli_main(["status", str(output)]) == 0
    assert f": {BAD_SENTENCE}" in capsys.readouterr().out


def test_squares_are_judged_only_with_enough_micrographs_and_against_others():
    assert judged(grid(BAD, micrographs=7)) == {}  # fewer than 8 micrographs each
    assert judged(grid({"1834522": 0.1})) == {}  # a square alone has no others to be worse than
    assert judged(grid(BAD), Settings(bad_square_fraction=0.0)) == {}  # off
    assert list(judged(grid(BAD))) == ["square:1834522"]


def test_particles_not_classified_yet_do_not_make_a_square_bad():
    particles = grid({"1834520": 0.8, "1834521": 0.8, "1834522": 0.8})
    late = np.asarray(particles.micrographs.str.contains("GridSquare_1834522"))
    classes = np.where(late, 0, particles.classes)  # picked since the cycle
    assert judged(ScoredParticles(3, particles.micrographs, classes == 1, classes)) == {}


def test_a_falling_yield_and_the_target_reached_fire_with_their_figures():
    particles, times = three_hours()  # 200 good particles per hour lately, 407 over 3 h
    outlook = forecast(particles, times, target=1000)
    firing = cycle_alerts(particles, None, outlook, Settings(yield_drop_fraction=0.6,
                                                            target_good_particles=1000))
    assert firing[YIELD_FALLING] == ("Yield falling: 200 good particles per hour over the last "
                                     "hour, against 407 per hour over the session's 3.0 h")
    assert firing[TARGET_REACHED] == ("Target reached: 1,180 good particles by the classes "
                                      "selected in cycle 7 (whole classes, no particle curation), "
                                      "of the 1,000 wanted")
    quiet = cycle_alerts(particles, None, outlook, Settings(yield_drop_fraction=0.4,
                                                           target_good_particles=2000))
    assert quiet == {}


def test_a_stall_fires_once_and_clears_only_when_particles_arrive(output, tmp_path):  # noqa: F811
    (output / SESSION_STATE).unlink()
    events = []
    session = listened_to(output, tmp_path / "warp", events)
    try:
        session._check_stall(1300.0, False)
        session._check_stall(1500.0, False)
        session._check_stall(3.0, False)  # a restart reset the quiet time: nothing arrived
        assert [a.key for a in session.alerts.active] == [WARP_STALLED]
        session._check_stall(0.0, True)
    finally:
        session.close()
    alerts = [(e["active"], e["message"]) for e in events if e["type"] == "alert"]
    assert alerts[0][0] and alerts[0][1].startswith("Warp stalled: no new particle in ")
    assert "for 22 min while automatic jobs run" in alerts[0][1]
    assert [active for active, _ in alerts] == [True, False]


def test_the_automatic_loop_watches_for_a_stall(output, tmp_path):  # noqa: F811
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp")
    session.update_settings({"warp_stalled_after": 0.5, "poll_seconds": 0.5})
    fired = threading.Event()
    session.add_listener(lambda e: fired.set() if e["type"] == "alert" else None)
    stop = threading.Event()
    loop = threading.Thread(target=session.run_automatic, args=(stop,))
    loop.start()
    try:
        assert fired.wait(10)
    finally:
        stop.set()
        loop.join(10)
        session.close()
    assert [a.key for a in read_alerts(output)] == [WARP_STALLED]


def test_an_unreadable_alerts_file_counts_as_none_and_is_replaced(tmp_path, caplog):
    (tmp_path / "alerts.json").write_text("{not json")
    book = AlertBook(tmp_path)
    assert book.active == [] and "unreadable" in caplog.text
    fired, _, _ = book.update(CYCLE_RULES, {"square:7": "GridSquare_7: bad"})
    assert [a.key for a in fired] == ["square:7"]
    assert [a.message for a in read_alerts(tmp_path)] == ["GridSquare_7: bad"]


@pytest.mark.parametrize("rules", [(WARP_STALLED,), CYCLE_RULES])
def test_rules_judged_apart_leave_each_others_alerts_alone(tmp_path, rules):
    book = AlertBook(tmp_path)
    book.update(CYCLE_RULES, {"square:7": "GridSquare_7: bad"})
    book.update((WARP_STALLED,), {WARP_STALLED: "Warp stalled"})
    other = {WARP_STALLED} if rules == CYCLE_RULES else {"square:7"}
    _, cleared, _ = book.update(rules, {})
    assert {a.key for a in book.active} == other and len(cleared) == 1


def test_a_dismissed_alert_stays_dismissed_across_a_restart_until_it_fires_anew(tmp_path):
    book = AlertBook(tmp_path)
    book.update(CYCLE_RULES, {"square:7": "GridSquare_7: 10% good"})
    assert book.dismiss("square:8") is None  # none in force: nothing written
    assert book.dismiss("square:7").dismissed
    book.update(CYCLE_RULES, {"square:7": "GridSquare_7: 9% good"})  # its figures change
    reopened = AlertBook(tmp_path)  # a restart
    assert [(a.message, a.dismissed) for a in reopened.active] == [
        ("GridSquare_7: 9% good", True)]
    reopened.update(CYCLE_RULES, {})
    fired, _, _ = reopened.update(CYCLE_RULES, {"square:7": "GridSquare_7: 8% good"})
    assert [a.dismissed for a in fired] == [False]
    assert [a.dismissed for a in read_alerts(tmp_path)] == [False]
