"""The proposal that learns from the user's marks (live2d.learned_proposal, via the selection)."""

import json
import logging
import threading

import numpy as np
import pytest

from live2d.atomic import atomic_write_json
from live2d.class_quality import _scored
from live2d.errors import SelectionError
from live2d.history import CycleHistory, CycleRecord
from live2d.learned_proposal import PRIOR, Example, fit, learned
from live2d.selection import (
    ClassSelection,
    SelectionState,
    follow_cycle,
    good_particles_history,
    mark,
    proposed,
    scores_propose,
    selected,
)

HIGH_RES = 12.0
# (resolution Å, centred share, straight-line share, relative contrast) of each class: two good
# ones, four of good particles picked off centre (the scores call them junk), two of empty ice and
# one of carbon
CLASSES = [(12.0, 0.90, 0.30, 1.00), (13.0, 0.85, 0.35, 1.10),
           (14.0, 0.40, 0.30, 0.90), (15.0, 0.38, 0.32, 0.95), (14.5, 0.42, 0.31, 0.90),
           (14.0, 0.41, 0.30, 0.92),
           (30.0, 0.20, 0.30, 0.10), (32.0, 0.25, 0.30, 0.12),
           (20.0, 0.60, 0.90, 1.50)]
OFF_CENTRE, ICE, CARBON = [3, 4, 5, 6], [7, 8], [9]
SIGNAL = 1.0  # each class's signal per particle, that of the typical class


def class_table(classes=CLASSES, particles=100):
    n = len(classes)
    return [_scored(k + 1, particles, 1.0 / n, resolution, False, centred, line, contrast,
                    SIGNAL, HIGH_RES, n).to_dict()
            for k, (resolution, centred, line, contrast) in enumerate(classes)]


def write_cycle(folder, number, job=1, job_type="refine", classes=CLASSES, particles=100):
    """A scored cycle's record, its class table written where the record says."""
    table = class_table(classes, particles)
    name = f"cycle_{number:03d}_classes.json"
    atomic_write_json(folder / name, table)
    return CycleRecord(
        number=number, job=job, job_type=job_type, block="refinement", block_cycle=1,
        job_cycle=1, job_cycles=1, high_res=HIGH_RES, fraction=1.0,
        particles=particles * len(classes), class_counts=[particles] * len(classes),
        started=0.0, finished=1.0, engine="builtin (test)", generation=0,
        particles_per_second=100.0, classes=f"cycle_{number:03d}.mrc",
        star=f"cycle_{number:03d}.star", thumbnails=f"thumbnails/cycle_{number:03d}",
        class_score=[row["score"] for row in table], class_table=name)


def test_without_marks_the_proposal_is_the_scores_exactly(tmp_path):
    record = write_cycle(tmp_path, 3)
    state = SelectionState.load(tmp_path)
    assert proposed(record, state) == scores_propose(record) == [1, 2]
    # the built-in weights give the scores' proposal whatever the scores, at 0.5 too
    rng = np.random.default_rng(0)
    for _ in range(20):
        classes = [(rng.uniform(10, 50), rng.uniform(0.3, 1), rng.uniform(0.2, 0.9),
                    rng.uniform(0.1, 4)) for _ in range(12)]
        table = class_table(classes, particles=int(rng.integers(10, 200)))
        scores = [row["score"] for row in table]
        record = CycleRecord.from_dict({**write_cycle(tmp_path, 1).to_dict(),
                                        "class_score": scores, "class_counts": [50] * 12})
        assert learned(record, table, ()) == [k + 1 for k, s in enumerate(scores) if s >= 0.5]
    assert (fit(()) == PRIOR).all()


def test_marks_on_a_few_classes_change_the_proposal_of_unmarked_classes_like_them(tmp_path):
    record = write_cycle(tmp_path, 3)
    state = SelectionState.load(tmp_path)
    mark(state, record, {3: "good", 4: "good", 7: "junk"})
    assert [e["number"] for e in state.examples] == [3, 4, 7]
    proposal = proposed(record, state)
    # the other off-centre classes are proposed now; the other ice and the carbon are not
    assert {5, 6} <= set(proposal) and not {8, 9} & set(proposal) and {1, 2} <= set(proposal)
    assert selected(record, state) == [1, 2, 3, 4, 5, 6]
    # the learned rule weighs "centred" less, the other features as before
    weights = fit(state.learned_examples())
    assert weights[3] < 0.5 and np.allclose(weights[[1, 4]], 1.0, atol=0.3)
    assert (weights[:-1] >= 0).all()  # a feature may come to matter less, never backwards
    # earlier cycles keep what their scores proposed (their good-particle counts too)
    earlier = write_cycle(tmp_path, 2)
    assert proposed(earlier, state) == [1, 2]
    assert [h["good"] for h in good_particles_history([earlier, record], state)] == [200, 600]


def test_what_the_marks_taught_survives_reload_carrying_and_dropping(tmp_path):
    before = write_cycle(tmp_path, 3)
    with pytest.raises(SelectionError):  # nothing to read yet is not an error; this is
        (tmp_path / "selection.json").write_text('{"examples": [{"number": 1}]}')
        SelectionState.load(tmp_path)
    (tmp_path / "selection.json").unlink()
    state = SelectionState.load(tmp_path)
    mark(state, before, {3: "good", 4: "good", 7: "junk"})
    state.save(tmp_path)
    reloaded = SelectionState.load(tmp_path)
    assert reloaded.learned_examples() == state.learned_examples()
    assert "folder" not in json.loads((tmp_path / "selection.json").read_text())
    # a later cycle of the same job: the marks and what they taught carry on
    after = write_cycle(tmp_path, 4)
    follow_cycle(reloaded, before, after, None, np.zeros((9, 8, 8)), 3.0)
    assert {5, 6} <= set(proposed(after, reloaded))
    # an ab initio restart whose classes are like none of the old: the marks are dropped,
    # what they taught is not
    restart = write_cycle(tmp_path, 10, job=2, job_type="abinit")
    old_averages = np.random.default_rng(1).standard_normal((9, 32, 32)).astype(np.float32)
    new_averages = np.random.default_rng(2).standard_normal((9, 32, 32)).astype(np.float32)
    follow_cycle(reloaded, after, restart, old_averages, new_averages, 12.0)
    assert reloaded.marks == {} and reloaded.dropped == [3, 4, 7]
    assert [e.now for e in reloaded.learned_examples()] == [None, None, None]
    assert {3, 4, 5, 6} <= set(proposed(restart, reloaded))
    # a class marked and put back to the proposal teaches nothing any more
    again = SelectionState.load(tmp_path)
    mark(again, before, {3: None, 4: None, 7: None})
    assert again.examples == [] and proposed(before, again) == [1, 2]


def test_a_mark_says_how_many_proposals_it_changed(tmp_path, caplog):
    history = CycleHistory(tmp_path)
    history.append(write_cycle(tmp_path, 3))
    told = []
    selection = ClassSelection(tmp_path, history, threading.RLock(), told.append)
    assert selection.summary()["learned"] == {"examples": 0, "changed": []}
    with caplog.at_level(logging.INFO, logger="live2d"):
        assert selection.mark_classes({"7": "junk"})["changed"] == []
        summary = selection.mark_classes({"3": "good", "4": "good"})
    assert summary["changed"] == [5, 6]
    assert "2 proposals changed (classes 5, 6) after your marks on cycle 3 (learned from 3 " \
           "marks)" in caplog.text
    # the page's summary: the learned proposal, and which unmarked classes it proposes
    # otherwise than their scores do
    assert told[-1]["proposed"] == [1, 2, 3, 4, 5, 6]
    assert told[-1]["learned"] == {"examples": 3, "changed": [5, 6]}


def test_marks_make_a_feature_matter_less_never_backwards():
    # classes with a carbon-like edge marked good and flawless ones marked junk: unconstrained,
    # the fit would reward straight edges; held at 0, it only stops heeding them
    passing, edged = (1.0,) * 7, (1.0, 1.0, 1.0, 1.0, -0.5, 1.0, 1.0)
    examples = (Example(1, 1, edged, "good", 1), Example(1, 2, edged, "good", 2),
                Example(1, 3, passing, "junk", 3), Example(1, 4, passing, "junk", 4))
    weights = fit(examples)
    assert weights[4] == 0.0 and np.allclose(weights[[0, 1, 2, 3, 5, 6]], 1.0)
    assert weights[-1] < PRIOR[-1]  # a flawless class can be junk: the bar is higher
