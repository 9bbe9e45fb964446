"""The quality scores on simulated sessions: junk picks are left out of them and counted apart."""

import numpy as np
import pandas as pd
import pytest
from atomic_model import write_tiny_model

from live2d.evaluate import alignment_errors, best_selection, score, score_model, view_coherence
from live2d.model_projection import ModelPhantom, random_orientations
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


def continuum_class_members(rng, n, views):
    """``n`` particles of ``views`` nearby-view classes: orientations near each class's, any
    in-plane angle, shifts; the labels (0-based). Only the tilt varies within a class: a turn
    about an in-plane axis, so that the members' psi alone says how they sit in the plane."""
    centres = random_orientations(views, rng)
    labels = rng.integers(0, views, n)
    euler = centres[labels] + np.c_[np.zeros(n), rng.normal(0, 3, n), np.zeros(n)]
    euler[:, 2] = rng.uniform(0, 360, n)
    return euler, rng.uniform(-5, 5, (n, 2)), labels


def test_a_perfect_alignment_of_a_continuum_scores_no_error_whatever_each_class_frame(tmp_path):
    phantom = ModelPhantom(write_tiny_model(tmp_path / "tiny.pdb"), 48, 2.0, n_views=2)
    rng = np.random.default_rng(1)
    euler, shift, labels = continuum_class_members(rng, 60, 3)
    # Each class in a frame of its own: turned by its own angle, centred off the box centre.
    frame_turn, frame_centre = np.array([0.0, 40.0, -100.0]), np.array([[0, 0], [3, -2], [-1, 4]])
    psi = frame_turn[labels] - euler[:, 2]
    theta = np.radians(psi)
    # rotate(shift(P, SH), PSI) puts the centre at rot(PSI)(shift + SH): SH = rot(-PSI)(c) - shift
    centre = frame_centre[labels]
    back = np.stack([np.cos(theta) * centre[:, 0] + np.sin(theta) * centre[:, 1],
                     -np.sin(theta) * centre[:, 0] + np.cos(theta) * centre[:, 1]], axis=1)
    table = pd.DataFrame({"2DCLS": labels + 1, "PSI": psi, "SHX": back[:, 0] - shift[:, 0],
                          "SHY": back[:, 1] - shift[:, 1]})
    psi_error, shift_error = alignment_errors(euler, shift, table["PSI"].to_numpy(),
                                              table[["SHX", "SHY"]].to_numpy(), labels)
    assert psi_error.max() < 0.5 and shift_error.max() < 1e-6

    classes = phantom.project(np.c_[euler[:3, :2], np.zeros(3)])
    scores = score_model(phantom, euler, shift, np.ones(60, dtype=bool), table, classes, 40.0)
    assert scores.homogeneity > 0.9 and scores.coherence < 6.0
    assert scores.psi_error.p90 < 0.5 and scores.shift_error.p90 < 1e-6
    assert scores.psi_error_near == scores.psi_error  # every member is near its class's view


def test_the_psi_and_shift_errors_and_coherence_measure_what_is_off(tmp_path):
    rng = np.random.default_rng(2)
    euler, shift, labels = continuum_class_members(rng, 200, 4)
    psi = -euler[:, 2] + np.where(np.arange(200) % 2, 10.0, -10.0)  # each member 10° off
    moved = np.where((np.arange(200) % 2)[:, None], 3.0, -3.0) * np.array([[1.0, 0.0]])
    psi_error, shift_error = alignment_errors(euler, shift, psi, -shift + moved, labels)
    assert np.median(psi_error) == pytest.approx(10.0, abs=1.5)
    # Turned by psi, the ±3 Å offsets stay 6 Å apart about the class's median centre.
    assert np.median(shift_error) == pytest.approx(3.0, abs=1.0)
    assert view_coherence(euler, labels) < 6.0
    assert view_coherence(euler, rng.integers(0, 4, 200)) > 45.0
    assert view_coherence(random_orientations(400, rng), np.zeros(400, dtype=int)) > 75.0
