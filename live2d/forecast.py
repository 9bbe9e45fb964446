"""Whether to keep collecting: good particles per hour, when the target is reached, and whether
new good views still appear, from the particle store and the latest scored cycle's selection.

The store keeps no time of import per particle. A particle's time is when Warp wrote its stack
(the modification time in its stamp, which the store keeps where it reads Warp's stacks in
place: :func:`live2d.warp.stamp_written`), else when EPU acquired its movie (from the movie's
name: :mod:`live2d.epu`). One kind of time is used for a whole session, never both (EPU's names
are the microscope computer's clock, not this one's); particles without it are left out of the
rates. "The last hour" is the hour before the latest particle's time, so a finished session is
judged on its last hour of collection, not on the time since.

Good particles are those of the cycle's selected classes that the particle curation keeps, or
whole classes where it cannot be had (:mod:`live2d.collection_yield`; the lines say which); the
shares of good particles count classified particles only, and the rates apply them to every
particle of their hour: particles picked since the cycle are not taken for bad ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from live2d.atomic import atomic_write_json
from live2d.collection_yield import ScoredParticles
from live2d.epu import micrograph_origin
from live2d.output_folder import FORECAST
from live2d.warp import stamp_written

HOUR = 3600.0
STACK_TIMES = "when Warp wrote each particle's stack"
EPU_TIMES = "when EPU acquired each movie, by its name"
# Fewer classified particles than this in the last hour: its share of good ones is the
# session's (a handful of particles says nothing).
MIN_CLASSIFIED = 50
# A good class is a view seen lately when at least this share of its particles is that recent.
RECENT_VIEW_SHARE = 0.5


def particle_times(store_table: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Each particle's time in seconds since the epoch (NaN where unknown), in store order, and
    what the times are (:data:`STACK_TIMES`, :data:`EPU_TIMES`, or "" where none is known)."""
    n = len(store_table)
    if "SRCSTAMP" in store_table:
        codes, stamps = pd.factorize(store_table["SRCSTAMP"].fillna("").astype(str))
        written = np.array([stamp_written(s) or np.nan for s in stamps], dtype=float)
        times = written[codes] if len(stamps) else np.full(n, np.nan)
        if np.isfinite(times).any():
            return times, STACK_TIMES
    if "MICROGRAPH" in store_table:
        codes, names = pd.factorize(store_table["MICROGRAPH"].fillna("").astype(str))
        acquired = pd.to_datetime([micrograph_origin(name).acquired or None for name in names],
                                  utc=True)
        seconds = np.array([t.timestamp() if not pd.isna(t) else np.nan for t in acquired],
                           dtype=float)
        times = seconds[codes] if len(names) else np.full(n, np.nan)
        if np.isfinite(times).any():
            return times, EPU_TIMES
    return np.full(n, np.nan), ""


@dataclass(frozen=True)
class Forecast:
    """What the session has given so far and at what rate. Rates and hours are None where the
    times do not tell them (no times, or all in one instant)."""

    cycle: int
    times: str  # what the times are (STACK_TIMES, EPU_TIMES or "")
    particles: int
    classified: int
    good: int  # classified into a selected class
    good_estimate: int  # good + the particles not classified yet at the session's good share
    session_hours: float | None
    session_good_share: float | None
    session_good_per_hour: float | None
    recent_hours: float | None  # the last hour, or the whole session when shorter
    recent_good_share: float | None  # None: too few of the last hour classified yet
    recent_good_per_hour: float | None
    target: int  # 0: none
    hours_to_target: float | None  # 0 when reached; None: no target, or no rate to reach it
    good_classes: tuple[int, ...]
    recent_classes: tuple[int, ...]  # good classes mostly of the last hour's particles
    counted: str = "whole classes"  # which of theirs are good (ScoredParticles.counted)

    def lines(self) -> list[str]:
        """A few plain lines for the operator (live2d status)."""
        lines = [f"forecast by the classes selected in cycle {self.cycle} (good particles: "
                 f"{self.counted}" + (f"; times: {self.times}" if self.times else "") + "):"]
        unclassified = self.particles - self.classified
        good = f"  good particles: {self.good:,} of {self.classified:,} classified"
        if unclassified and self.session_good_share is not None:
            good += (f"; about {self.good_estimate:,} counting the {unclassified:,} not "
                     f"classified yet at the session's {self.session_good_share:.0%}")
        lines.append(good)
        if self.session_good_per_hour is None or self.recent_good_per_hour is None:
            lines.append("  good particles per hour: unknown (no particle says when it was "
                         "collected: neither Warp's stacks nor EPU's movie names)")
            return lines
        recent_share = ("" if self.recent_good_share is None
                        else f", {self.recent_good_share:.0%} good")
        lines.append(f"  good particles per hour: {self.recent_good_per_hour:,.0f} over the "
                     f"last {_hours(self.recent_hours)}{recent_share}; "
                     f"{self.session_good_per_hour:,.0f} over the session "
                     f"({_hours(self.session_hours)}, {self.session_good_share or 0:.0%} good)")
        if self.target:
            if self.hours_to_target == 0:
                reached = "reached"
            elif self.hours_to_target is None:
                reached = "not reached at the last hour's rate (no good particles in it)"
            else:
                reached = f"in about {_hours(self.hours_to_target)} at the last hour's rate"
            lines.append(f"  target of {self.target:,} good particles: {reached}")
        if self.session_hours is not None and self.session_hours > 1.0 and self.good_classes:
            if self.recent_classes:
                listed = ", ".join(map(str, self.recent_classes))
                lines.append(f"  new views: {len(self.recent_classes)} of the "
                             f"{len(self.good_classes)} good classes have most of their "
                             f"particles from the last hour (classes {listed}): new views "
                             "still appear")
            else:
                lines.append(f"  new views: none of the {len(self.good_classes)} good classes "
                             "has most of its particles from the last hour: new data add to "
                             "views already seen")
        return lines


def forecast(particles: ScoredParticles, times: np.ndarray, target: int = 0,
             what_times: str = "") -> Forecast:
    """The forecast of the scored ``particles`` whose times (seconds, NaN unknown, as
    :func:`particle_times` gives them) are ``times``; ``target``: good particles wanted (0:
    none)."""
    classified, good = particles.classified, particles.good
    n_classified, n_good = int(classified.sum()), int(good.sum())
    session_share = n_good / n_classified if n_classified else None
    unclassified = len(good) - n_classified
    estimate = n_good + round(unclassified * (session_share or 0.0))
    good_classes = tuple(int(k) for k in np.unique(particles.classes[good]))
    known = np.isfinite(times)
    span = float(np.nanmax(times) - np.nanmin(times)) if known.any() else 0.0
    rates: dict = {"session_hours": None, "session_good_per_hour": None, "recent_hours": None,
                   "recent_good_share": None, "recent_good_per_hour": None}
    recent_classes: tuple[int, ...] = ()
    hours_to_target = 0.0 if target and estimate >= target else None
    if span > 0 and session_share is not None:
        recent = known & (times > np.nanmax(times) - HOUR)
        recent_hours = min(span, HOUR) / HOUR
        recent_classified = recent & classified
        recent_share = (float(good[recent_classified].sum() / recent_classified.sum())
                        if recent_classified.sum() >= MIN_CLASSIFIED else None)
        recent_rate = (recent.sum() / recent_hours
                       * (recent_share if recent_share is not None else session_share))
        rates = {"session_hours": span / HOUR,
                 "session_good_per_hour": known.sum() / (span / HOUR) * session_share,
                 "recent_hours": recent_hours, "recent_good_share": recent_share,
                 "recent_good_per_hour": float(recent_rate)}
        if target and estimate < target and recent_rate > 0:
            hours_to_target = (target - estimate) / recent_rate
        recent_classes = tuple(
            k for k in good_classes
            if recent_classified[particles.classes == k].mean() >= RECENT_VIEW_SHARE)
    return Forecast(cycle=particles.cycle, times=what_times if span > 0 else "",
                    particles=len(good), classified=n_classified, good=n_good,
                    good_estimate=estimate, session_good_share=session_share, target=target,
                    hours_to_target=hours_to_target, good_classes=good_classes,
                    recent_classes=recent_classes, counted=particles.counted, **rates)


def _hours(hours: float | None) -> str:
    if hours is None:
        return "?"
    if hours < 1.0:
        return f"{max(1, round(hours * 60))} min"
    if hours >= 48.0:
        return f"{hours / 24:.0f} days"
    return "hour" if hours == 1.0 else f"{hours:.1f} h"


def write_forecast(folder: str | os.PathLike, outlook: Forecast) -> None:
    """Keep the forecast's lines in the output folder ``folder`` (replaced atomically), for
    readers that must not re-read the store to show them (Scipion's summary)."""
    atomic_write_json(Path(folder) / FORECAST, {"cycle": outlook.cycle,
                                                 "lines": outlook.lines()})


def read_forecast(folder: str | os.PathLike) -> tuple[int, list[str]] | None:
    """The cycle and lines :func:`write_forecast` kept; None before there are any (or where
    the file cannot be read: the next scored cycle writes it again)."""
    try:
        values = json.loads((Path(folder) / FORECAST).read_text(encoding="utf-8"))
        return int(values["cycle"]), [str(line) for line in values["lines"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None


def forecast_dict(kept: tuple[int, list[str]] | None) -> dict | None:
    """What the page is sent of a forecast (:func:`read_forecast`): its cycle and lines."""
    return None if kept is None else {"cycle": kept[0], "lines": kept[1]}
