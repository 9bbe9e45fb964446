"""Class marks: kept through refinement, moved to the most similar class after ab initio."""

import numpy as np
import pytest
import torch

from live2d.errors import SelectionError
from live2d.history import CycleRecord
from live2d.imaging import rotate
from live2d.phantom import Phantom
from live2d.selection import (
    SelectionState,
    follow_cycle,
    good_particles_history,
    mark,
    selected,
)


def record(number, job, job_type="refine", counts=(50, 50, 50), scores=(0.9, 0.2, 0.8)):
    return CycleRecord(
        number=number, job=job, job_type=job_type, block="refinement", block_cycle=1,
        job_cycle=1, job_cycles=1, high_res=12.0, fraction=1.0, particles=sum(counts),
        class_counts=list(counts), started=0.0, finished=1.0, engine="builtin (test)",
        generation=0, particles_per_second=100.0, classes=f"cycle_{number:03d}.mrc",
        star=f"cycle_{number:03d}.star", thumbnails=f"thumbnails/cycle_{number:03d}",
        class_score=list(scores))


def test_marks_override_the_proposal_and_are_checked(tmp_path):
    state = SelectionState()
    latest = record(3, 1)
    assert selected(latest, state) == [1, 3]  # the proposal: scores of 0.5 and more
    mark(state, latest, {"2": "good", 3: "junk"})
    assert selected(latest, state) == [1, 2]
    mark(state, latest, {3: None})  # back to the proposal
    assert selected(latest, state) == [1, 2, 3]
    with pytest.raises(SelectionError, match="no class 4"):
        mark(state, latest, {4: "good"})
    with pytest.raises(SelectionError, match="good, junk or null"):
        mark(state, latest, {1: "maybe"})
    state.save(tmp_path)
    assert SelectionState.load(tmp_path).marks == state.marks
    history = good_particles_history([record(2, 1, scores=(0.9, 0.1, 0.1)), latest], state)
    assert history == [{"cycle": 2, "imported": 150, "good": 50},
                       {"cycle": 3, "imported": 150, "good": 150}]


def test_refinement_keeps_marks_but_a_reseeded_class_loses_its_own():
    state = SelectionState()
    before = record(3, 1, counts=(50, 0, 100))
    mark(state, before, {1: "junk", 2: "good"})
    after = record(4, 1, counts=(50, 30, 70))
    follow_cycle(state, before, after, None, np.zeros((3, 8, 8)), 3.0)
    assert state.marks == {"1": "junk"} and state.dropped == [2] and state.cycle == 4


def test_a_class_reseeded_for_duplicating_another_loses_its_mark():
    state = SelectionState()
    before = record(3, 1)
    mark(state, before, {1: "good", 3: "junk"})
    update = CycleRecord(**{**record(4, 1, counts=(50, 20, 60)).to_dict(),
                            "reseeded": [3]})
    follow_cycle(state, before, update, None, np.zeros((3, 8, 8)), 3.0)
    assert state.marks == {"1": "good"} and state.dropped == [3]


def test_after_ab_initio_each_mark_moves_to_the_most_similar_new_class():
    views = Phantom(48, 3.0, n_views=3, seed=2).views
    state = SelectionState()
    old = record(3, 1)
    mark(state, old, {1: "good", 2: "junk"})
    noise = np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32)
    # the new job found view 0 again, turned by 70°, as class 3; view 1 is gone
    turned = rotate(torch.from_numpy(views[0][None].copy()), np.array([70.0]))[0].numpy()
    new_averages = np.stack([noise, views[2], turned])
    new = record(10, 2, job_type="abinit")
    follow_cycle(state, old, new, views, new_averages, 18.0)
    assert state.marks == {"3": "good"} and state.carried == [[1, 3]] and state.dropped == [2]
    assert selected(new, state) == [1, 3]
