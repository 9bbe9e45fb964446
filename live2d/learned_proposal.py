"""The proposal that learns from the user's marks.

The built-in proposal (:mod:`live2d.class_quality`) is a fixed rule: a class is good from a
score of 0.5, the score being the product of its features clipped to 0..1 (resolution, contrast
against the typical class both ways, a centred object, no straight edge across the mask, enough
particles). In logs, that rule is a sum with every feature weighed 1::

    good  <=>  1·log f_sharp + 1·log f_faint + ... + 1·log f_populous + log 2  >=  0

The learned proposal is the logistic model of that sum whose weights and bias are fitted on the
user's marks, L2-regularised towards the built-in ones (its prior), the weights never below 0:
``P(good) = sigmoid(Σ a_i log f_i + b)``. Each good or junk mark is an example: the class's
features when it was marked, and the mark. Without marks the weights are the built-in ones and
the proposal is the scores' exactly; marks on a few classes move the weights of the features
that set them apart, e.g. classes of good but off-centre particles marked good make "centred"
weigh less, so unmarked classes like them are proposed too, while classes judged junk for
another reason (ice, carbon) stay junk; a flawless class marked junk raises the bar (the bias).
A feature that fails outright counts from ``FLOOR`` down, not as minus infinity, so that marks
can still outweigh it. What it cannot do is tell apart classes the features do not: on
simulated data, good classes with a carbon-like edge marked good also let carbon in
(``bench/quality.py --learn-marks``, README; measured with the carbon feature before the
straight-line share, which takes far fewer particle classes for carbon).

The examples are kept in the selection state (``selection.json``) and outlive the marks they
came from: a mark dropped at an ab initio restart (no similar new class) still teaches. The
learned rule applies to the cycle of the first example and later ones; earlier cycles keep what
their scores proposed when they ran.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from live2d.class_quality import GOOD_SCORE, table_features
from live2d.history import CycleRecord, read_class_table

FEATURES = ("sharp", "faint", "dense", "centred", "edge", "signal", "populous")
FLOOR = 0.05
# Below the floor a feature's input goes on falling, this much per unit (down to LOWEST), so that
# a class just past a threshold (e.g. a particle with 0.78 of its detail along one straight line)
# is told from one far past it (carbon, 0.9): without it, marking the first good would make both
# good. Any input at or below log(FLOOR) fails a class with the built-in weights, as a feature
# of 0 does the score.
BELOW_FLOOR = 3.0
LOWEST = -1.0
# L2 weight of the pull towards the built-in weights, against the log-loss of the examples
# (each counts 1).
PRIOR_WEIGHT = 3.0
PRIOR = np.concatenate([np.ones(len(FEATURES)), [-np.log(GOOD_SCORE)]])
NEWTON_STEPS = 50


@dataclass(frozen=True)
class Example:
    """A mark as the learned proposal keeps it: the cycle and class it was made on, the class's
    features then (:data:`FEATURES` order, before clipping), the mark, and the class of the
    selection's cycle it sits on now (None once dropped: it still teaches)."""

    cycle: int
    number: int
    features: tuple[float, ...]
    label: str  # "good" | "junk"
    now: int | None

    def to_dict(self) -> dict:
        return {"cycle": self.cycle, "number": self.number, "features": list(self.features),
                "label": self.label, "now": self.now}

    @classmethod
    def from_dict(cls, values: dict) -> Example:
        """Raises TypeError, KeyError or ValueError for what is not an example."""
        features = tuple(float(v) for v in values["features"])
        if len(features) != len(FEATURES) or values["label"] not in ("good", "junk"):
            raise ValueError(f"not a marked example: {values!r}"[:200])
        now = values.get("now")
        return cls(int(values["cycle"]), int(values["number"]), features, values["label"],
                   None if now is None else int(now))


def inputs(features: np.ndarray) -> np.ndarray:
    """``(n, len(FEATURES) + 1)``: the model's inputs per class (``features``: ``(n,
    len(FEATURES))``, before clipping), each feature's log within ``FLOOR``..1 going on falling
    below the floor (``BELOW_FLOOR``), then 1 (the bias)."""
    features = np.clip(np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES)),
                       LOWEST, None)
    logs = np.log(np.clip(features, FLOOR, 1.0)) + BELOW_FLOOR * np.minimum(features - FLOOR, 0)
    return np.column_stack([logs, np.ones(len(features))])


@lru_cache(maxsize=64)
def fit(examples: tuple[Example, ...]) -> np.ndarray:
    """The weights and bias (:data:`PRIOR`'s order) that best explain ``examples``,
    regularised towards the built-in ones, the weights kept from falling below 0 (a feature
    can come to matter less, or not at all, never the wrong way round). Newton's method on
    the weights not held at 0, its step halved until the objective falls (convex: one
    answer)."""
    if not examples:
        return PRIOR
    x = inputs(np.array([example.features for example in examples]))
    y = np.array([example.label == "good" for example in examples], dtype=np.float64)
    lowest = np.concatenate([np.zeros(len(FEATURES)), [-np.inf]])

    def objective(theta: np.ndarray) -> float:
        z = x @ theta
        return float(np.sum(np.logaddexp(0.0, z) - y * z)  # log-loss, without overflow
                     + 0.5 * PRIOR_WEIGHT * np.sum((theta - PRIOR) ** 2))

    theta = PRIOR.copy()
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        gradient = x.T @ (p - y) + PRIOR_WEIGHT * (theta - PRIOR)
        hessian = (x.T * (p * (1.0 - p))) @ x + PRIOR_WEIGHT * np.eye(len(theta))
        free = ~((theta <= lowest) & (gradient > 0))  # held at 0: the step would go below
        step = np.zeros_like(theta)
        step[free] = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
        current, size = objective(theta), 1.0
        while True:
            moved = np.maximum(theta - size * step, lowest)
            if objective(moved) <= current or size < 1e-6:
                break
            size /= 2.0
        if np.abs(moved - theta).max() < 1e-10:
            break
        theta = moved
    return theta


def features_of(table: list[dict], high_res: float) -> list[tuple[float, ...] | None]:
    """Each class's features in :data:`FEATURES` order (None: no estimate, too few particles)."""
    return [None if f is None else tuple(f[name] for name in FEATURES)
            for f in table_features(table, high_res)]


def learned(record: CycleRecord, table: list[dict], examples: tuple[Example, ...]) -> list[int]:
    """Classes of ``record`` (its class table ``table``) the model fitted on ``examples``
    proposes as good (1-based); a class with too few particles for an estimate never."""
    features = features_of(table, record.high_res)
    known = [k for k, values in enumerate(features) if values is not None]
    if not known:
        return []
    logits = inputs(np.array([features[k] for k in known])) @ fit(examples)
    return [k + 1 for k, logit in zip(known, logits, strict=True) if logit >= 0.0]


def cycle_table(folder: str | os.PathLike, record: CycleRecord) -> list[dict] | None:
    """The class table of ``record``, None where there is none or it cannot be read (kept
    once read: a cycle's table is written once, and the good-particle history asks for every
    cycle's at each look)."""
    if not record.class_table:
        return None
    path = Path(folder) / record.class_table
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    key = str(path)
    with _tables_lock:
        kept = _tables.get(key)
    if kept is None or kept[0] != stamp:
        try:
            table = read_class_table(folder, record)
        except (OSError, ValueError):
            return None
        if table is None or len(table) != len(record.class_counts):
            return None
        with _tables_lock:
            if len(_tables) >= KEPT_TABLES:
                _tables.pop(next(iter(_tables)))
            kept = _tables[key] = (stamp, table)
    return kept[1]


KEPT_TABLES = 512
_tables: dict[str, tuple[int, list[dict]]] = {}
_tables_lock = threading.Lock()
