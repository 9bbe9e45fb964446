"""The forecast: good particles per hour over the last hour and the session, the time to the
target, whether new good views appear, and where the times come from."""

import numpy as np
import pandas as pd
import pytest
from test_collection_yield import output  # noqa: F401 (a fixture: a scored output folder)

from live2d.cli import main as cli_main
from live2d.collection_yield import ScoredParticles
from live2d.forecast import EPU_TIMES, HOUR, STACK_TIMES, forecast, particle_times
from live2d.output_folder import SESSION_STATE
from live2d.schedule import Settings
from live2d.session_state import SessionState

GOOD_CLASSES = [1, 4]


def three_hours() -> tuple[ScoredParticles, np.ndarray]:
    """2,000 particles over two hours, half of them good (class 1, class 3 junk), then 1,000 in
    the third hour of which 900 are classified, a fifth good, all in class 4 (a view seen only
    lately); the last 100 are not classified yet."""
    early = np.where(np.arange(2000) % 2 == 0, 1, 3)
    late = np.where(np.arange(1000) % 5 == 0, 4, 3)
    late[900:] = 0
    classes = np.concatenate([early, late])
    times = np.concatenate([np.linspace(0, 2 * HOUR - 1, 2000),
                            np.linspace(2 * HOUR + 1, 3 * HOUR, 1000)])
    particles = ScoredParticles(7, pd.Series(["m"] * len(classes)),
                                np.isin(classes, GOOD_CLASSES), classes)
    return particles, times


def test_rates_over_the_last_hour_and_the_session_and_the_time_to_the_target():
    particles, times = three_hours()
    result = forecast(particles, times, target=2000, what_times=STACK_TIMES)
    assert (result.particles, result.classified, result.good) == (3000, 2900, 1180)
    session_share = 1180 / 2900
    assert result.good_estimate == 1180 + round(100 * session_share)  # unclassified: not bad
    assert result.session_hours == pytest.approx(3.0)
    assert result.session_good_per_hour == pytest.approx(1000 * session_share)
    assert result.recent_good_share == pytest.approx(0.2)  # of the 900 classified
    assert result.recent_good_per_hour == pytest.approx(200.0)  # 1,000 particles × 20%
    assert result.hours_to_target == pytest.approx((2000 - result.good_estimate) / 200.0)
    assert result.recent_classes == (4,) and result.good_classes == (1, 4)
    text = "\n".join(result.lines())
    assert "200 over the last hour, 20% good" in text
    assert "407 over the session (3.0 h, 41% good)" in text
    assert "target of 2,000 good particles: in about 3.9 h" in text
    assert "1 of the 2 good classes have most of their particles from the last hour " \
           "(classes 4)" in text


def test_a_reached_target_and_no_target():
    particles, times = three_hours()
    assert forecast(particles, times, target=1000).hours_to_target == 0
    assert "target of 1,000 good particles: reached" in "\n".join(
        forecast(particles, times, target=1000).lines())
    assert forecast(particles, times, target=0).hours_to_target is None
    assert "target" not in "\n".join(forecast(particles, times, target=0).lines())


def test_without_times_the_counts_stand_and_the_rates_say_why_not():
    particles, _ = three_hours()
    result = forecast(particles, np.full(3000, np.nan), target=2000)
    assert result.good == 1180 and result.session_good_per_hour is None
    assert result.hours_to_target is None
    assert "unknown (no particle says when it was collected" in "\n".join(result.lines())


def test_times_come_from_the_stacks_stamps_else_from_epu_names():
    epu = "FoilHole_501_Data_9_11_20231104_084015_fractions.tif"
    table = pd.DataFrame({"SRCSTAMP": ["100:1700000000000000000:ab", "100:1700000000000000000:ab",
                                       "store:x:0", ""],
                          "MICROGRAPH": [epu, epu, epu, "mic_1.mrc"]})
    times, what = particle_times(table)
    assert what == STACK_TIMES
    assert times[:2].tolist() == [1.7e9, 1.7e9] and np.isnan(times[2:]).all()  # never mixed
    times, what = particle_times(table.assign(SRCSTAMP=["store:x:0", "", "", ""]))
    assert what == EPU_TIMES
    assert times[0] == pd.Timestamp("2023-11-04T08:40:15Z").timestamp()
    assert np.isnan(times[3])
    times, what = particle_times(table.assign(SRCSTAMP="", MICROGRAPH="mic_1.mrc"))
    assert what == "" and np.isnan(times).all()


def test_status_prints_the_forecast(output, tmp_path, capsys):  # noqa: F811
    SessionState(str(tmp_path), Settings()).save(output / SESSION_STATE)
    assert cli_main(["status", str(output)]) == 0
    shown = capsys.readouterr().out
    # classes too small to judge: the curation keeps them whole, and the forecast says it
    # counts as the curation keeps
    assert (f"forecast by the classes selected in cycle 1 (good particles: those the particle "
            f"curation keeps; times: {EPU_TIMES})") in shown
    # One pick the cycle left without a class, two picked since: 3 not classified.
    assert "good particles: 4 of 8 classified; about 6 counting the 3 not classified yet" \
        in shown
    assert "good particles per hour: 13 over the last 20 min" in shown  # 08:30 to 08:50
    assert "target of 100,000 good particles: in about 312 days" in shown
