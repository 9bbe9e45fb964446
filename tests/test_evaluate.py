"""The quality scores on simulated sessions: junk picks are left out of them and counted apart."""

import numpy as np
import pandas as pd
import pytest

from live2d.evaluate import best_selection, score
from live2d.phantom import Phantom


def perfect_table(view, psi, shift):
    """The alignment a perfect engine reports (A = rotate(shift(P, SH), PSI)), class = view."""
    return pd.DataFrame({"2DCLS": view + 1, "PSI": -psi, "SHX": -shift[:, 0],
                         "SHY": -shift[:, 1]})


def test_junk_picks_do_not_change_the_scores_of_the_true_particles():
    phantom = Phantom(48, 3.0, n_views=3)
    rng = np.random.default_rng(0)
    view = rng.integers(0, 3, 60)
    psi = rng.uniform(0, 360, 60)
    shift = rng.uniform(-6, 6, (60, 2))
    clean = score(phantom.views, view, psi, shift, perfect_table(view, psi, shift),
                  phantom.views, 3.0, 40.0)
    assert clean.homogeneity > 0.95 and clean.fidelity > 0.95 and clean.classes_used == 3

    junk_table = pd.DataFrame({"2DCLS": rng.integers(1, 4, 30), "PSI": rng.uniform(0, 360, 30),
                               "SHX": 0.0, "SHY": 0.0})
    table = pd.concat([perfect_table(view, psi, shift), junk_table], ignore_index=True)
    with_junk = score(phantom.views, np.concatenate([view, np.full(30, -1)]),
                      np.concatenate([psi, np.zeros(30)]),
                      np.concatenate([shift, np.zeros((30, 2))]), table, phantom.views, 3.0, 40.0)
    assert with_junk == clean


def test_the_best_selection_takes_the_classes_that_are_mostly_particles():
    labels = np.array([1] * 10 + [2] * 10 + [3] * 10)
    true = np.array([True] * 9 + [False] + [False] * 8 + [True] * 2 + [True] * 6 + [False] * 4)
    best = best_selection(labels, true)
    assert best.classes == [1, 3]
    assert best.precision == pytest.approx(15 / 20)
    assert best.recall == pytest.approx(15 / 17)
    assert best_selection(labels, np.zeros(30, dtype=bool)).classes == []
