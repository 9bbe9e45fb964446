"""Alerts for the people at the microscope: a bad grid square, a falling yield, Warp stalled, the
target of good particles reached, the output disk running low. Each is one plain sentence naming
what and where.

An alert fires once, when its condition starts, and stays in force (``alerts.json`` in the output
folder, replaced atomically) until the condition clears: a second evaluation, or a restart, does
not fire it again. The session evaluates the rules of the cycle (:data:`CYCLE_RULES`) after every
scored cycle, the stall rule at every poll of its automatic loop, and the disk rule whenever it
measures the output folder; ``live2d status`` lists the
alerts in force. Thresholds are settings (:class:`live2d.schedule.Settings`): 0 turns a rule off.

Every alert has a key: its rule, and for a grid square the square (``square:1834522``).

The web page may dismiss an alert in force (:meth:`AlertBook.dismiss`): it stays in force, and in
``alerts.json`` marked dismissed, so that no page shows its banner again; once it clears and its
condition starts anew it is a new alert, shown again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from live2d.atomic import atomic_write_json
from live2d.collection_yield import ScoredParticles, yield_tables
from live2d.disk import DiskUse
from live2d.forecast import Forecast
from live2d.output_folder import ALERTS
from live2d.schedule import Settings

log = logging.getLogger("live2d")

BAD_SQUARE, YIELD_FALLING, TARGET_REACHED, WARP_STALLED, DISK_LOW = (
    "square", "yield_falling", "target_reached", "warp_stalled", "disk_low")
# Each rule in a few words, where a message needs a short form (an e-mail's subject).
RULE_TITLES = {BAD_SQUARE: "Bad grid square", YIELD_FALLING: "Yield falling",
               TARGET_REACHED: "Target reached", WARP_STALLED: "Warp stalled",
               DISK_LOW: "Disk space low"}
CYCLE_RULES = (BAD_SQUARE, YIELD_FALLING, TARGET_REACHED)  # judged after each scored cycle
# The falling-yield rule waits until the last hour is at most half the session.
MIN_SESSION_HOURS = 2.0


@dataclass(frozen=True)
class Alert:
    key: str  # its rule, ":" and what it names where a rule fires for several (a grid square)
    message: str
    since: float  # when it fired, seconds since the epoch
    dismissed: bool = False  # a page's "dismiss": no banner until it clears and fires anew

    @property
    def rule(self) -> str:
        return self.key.partition(":")[0]

    def to_dict(self) -> dict:
        return asdict(self)


class AlertBook:
    """The alerts in force in an output folder, as ``alerts.json`` keeps them; :meth:`update`
    is their one writer."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ALERTS
        self._alerts = {alert.key: alert for alert in read_alerts(folder)}

    @property
    def active(self) -> list[Alert]:
        return sorted(self._alerts.values(), key=lambda alert: alert.since)

    def update(self, rules: Iterable[str], firing: dict[str, str]) -> tuple[
            list[Alert], list[Alert], list[Alert]]:
        """The conditions of ``rules`` now: ``firing`` (key -> sentence) holds those that hold;
        an alert of these rules that is not in it has cleared. Returns (fired, cleared,
        changed): the alerts that start now, those that end, and those in force whose sentence
        changed (its figures), which keep their time and do not fire again. Raises OSError
        when the file cannot be written (the alerts stay as they were)."""
        rules = set(rules)
        cleared = [a for key, a in self._alerts.items() if a.rule in rules and key not in firing]
        now = time.time()
        fired = [Alert(key, message, now) for key, message in firing.items()
                 if key not in self._alerts]
        changed = {key: Alert(key, message, self._alerts[key].since,
                              self._alerts[key].dismissed)
                   for key, message in firing.items()
                   if key in self._alerts and self._alerts[key].message != message}
        if not (fired or cleared or changed):
            return [], [], []
        alerts = {key: a for key, a in self._alerts.items() if a not in cleared}
        alerts |= changed | {a.key: a for a in fired}
        self._write(alerts)
        return fired, cleared, list(changed.values())

    def dismiss(self, key: str) -> Alert | None:
        """Mark the alert ``key`` dismissed (the pages hide it) until it clears; None when no
        such alert is in force. Raises OSError when the file cannot be written."""
        alert = self._alerts.get(key)
        if alert is None or alert.dismissed:
            return alert
        self._write(self._alerts | {key: replace(alert, dismissed=True)})
        return self._alerts[key]

    def _write(self, alerts: dict[str, Alert]) -> None:
        atomic_write_json(self.path, {"alerts": [a.to_dict() for a in alerts.values()]})
        self._alerts = alerts


def read_alerts(folder: str | os.PathLike) -> list[Alert]:
    """The alerts in force in the output folder ``folder`` (none where it keeps no file; one
    that cannot be read is said in the log and counts as none: the next change replaces it)."""
    path = Path(folder) / ALERTS
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return [Alert(str(a["key"]), str(a["message"]), float(a["since"]),
                      bool(a.get("dismissed", False))) for a in values["alerts"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s is unreadable (%s): no alert is taken to be in force", path, exc)
        return []


def cycle_alerts(particles: ScoredParticles, hole_squares: dict[str, str] | None,
                 forecast: Forecast, settings: Settings) -> dict[str, str]:
    """The conditions of :data:`CYCLE_RULES` that hold by the scored ``particles`` and their
    ``forecast``: key -> sentence."""
    return (bad_squares(particles, hole_squares, settings) | yield_falling(forecast, settings)
            | target_reached(forecast, settings))


def bad_squares(particles: ScoredParticles, hole_squares: dict[str, str] | None,
                settings: Settings) -> dict[str, str]:
    """The grid squares whose share of good particles is below ``bad_square_fraction`` of the
    median square's, among squares of at least ``bad_square_micrographs`` classified
    micrographs. Shares count classified particles only: a square collected since the cycle is
    not bad for having no verdict yet; good ones as :func:`score_particles` counts them (the
    sentence says how)."""
    if not settings.bad_square_fraction:
        return {}
    squares = yield_tables(particles.only(particles.classified), hole_squares)["square"]
    judged = [row for row in squares if row["micrographs"] >= settings.bad_square_micrographs]
    if len(judged) < 2:  # a square is judged against others
        return {}
    median = float(np.median([row["good_fraction"] for row in judged]))
    return {f"{BAD_SQUARE}:{row['grid_square']}":
            f"GridSquare_{row['grid_square']}: {row['good_fraction']:.0%} good particles over "
            f"{row['micrographs']} micrographs, against {median:.0%} for the session's squares "
            f"(good particles: {particles.counted})"
            for row in judged if row["good_fraction"] < settings.bad_square_fraction * median}


def yield_falling(forecast: Forecast, settings: Settings) -> dict[str, str]:
    """Whether the last hour's good particles per hour fell below ``yield_drop_fraction`` of
    the session's (judged once the session spans :data:`MIN_SESSION_HOURS`)."""
    recent, session = forecast.recent_good_per_hour, forecast.session_good_per_hour
    if (not settings.yield_drop_fraction or recent is None or session is None
            or (forecast.session_hours or 0.0) < MIN_SESSION_HOURS
            or recent >= settings.yield_drop_fraction * session):
        return {}
    return {YIELD_FALLING: f"Yield falling: {recent:,.0f} good particles per hour over the last "
                           f"hour, against {session:,.0f} per hour over the session's "
                           f"{forecast.session_hours:.1f} h"}


def target_reached(forecast: Forecast, settings: Settings) -> dict[str, str]:
    """Whether the classified good particles reached ``target_good_particles``."""
    target = settings.target_good_particles
    if not target or forecast.good < target:
        return {}
    return {TARGET_REACHED: f"Target reached: {forecast.good:,} good particles by the classes "
                            f"selected in cycle {forecast.cycle} ({forecast.counted}), of the "
                            f"{target:,} wanted"}


def warp_stalled(quiet_seconds: float, source: str | os.PathLike,
                 settings: Settings) -> dict[str, str]:
    """Whether no particle has arrived from ``source`` for ``warp_stalled_after`` seconds."""
    limit = settings.warp_stalled_after
    if not limit or quiet_seconds < limit:
        return {}
    return {WARP_STALLED: f"Warp stalled: no new particle in {source} for "
                          f"{quiet_seconds / 60:.0f} min while automatic jobs run"}


def disk_low(use: DiskUse | None, folder: str | os.PathLike) -> dict[str, str]:
    """Whether the free space of ``folder``'s disk is below what the next cycles need
    (:mod:`live2d.disk`); ``use`` None: not measured yet."""
    if use is None or not use.low:
        return {}
    return {DISK_LOW: f"Disk space low in {folder}: {use.describe()}; free some or move "
                      "--output before the disk fills (a full disk stops new work)"}
