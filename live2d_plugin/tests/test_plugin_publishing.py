"""The classification protocol's publishing budget (live2d_plugin.publishing): the budget itself,
on a clock of its own, and a classification run whose every publish is slow; and its
outputParticles across cycles that select no class."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pandas as pd
import pytest
from plugin_test_helpers import ProjectTestCase, simulate_warp
from pwem.objects import SetOfParticles
from pyworkflow.object import Set
from pyworkflow.protocol import runProtocolMain
from test_plugin_classify import (
    SMALL_SCHEDULE,
    check_grown_particles,
    classes_of,
    history_of,
    selected_members,
)
from test_plugin_set_rows import assignments, input_particles

from live2d.session import Session
from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp, protocol_classify2d
from live2d_plugin.publishing import PublishBudget
from live2d_plugin.set_rows import disabled_ids


class Clock:
    """A clock the publish function moves forward by the publish's cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(costs: list[float], share: float = 0.1, always_below: float = 5.0
           ) -> tuple[PublishBudget[int], list[int], Clock]:
    clock, published = Clock(), []

    def publish(item: int) -> None:
        published.append(item)
        clock.now += costs[min(len(published), len(costs)) - 1]

    return PublishBudget(publish, share, always_below, clock), published, clock


def test_cheap_publishes_all_go_out_at_once():
    publisher, published, clock = budget([1.0])
    for cycle in range(1, 6):
        assert publisher.offer(cycle)
        clock.now += 0.5  # cycles far faster than 9 x the cost: cheap ones still all go
    assert published == [1, 2, 3, 4, 5]
    assert not publisher.flush()


def test_costly_publishes_take_at_most_their_share_and_the_newest_waits():
    publisher, published, clock = budget([20.0])
    assert publisher.offer(1)  # the first always goes: nothing was spent yet
    assert publisher.next_due() == pytest.approx(20.0 + 180.0)
    clock.now += 60.0
    assert not publisher.offer(2)
    clock.now += 60.0
    assert not publisher.offer(3)
    assert publisher.waiting == 3  # only the newest waits
    clock.now += 60.0  # 200 s: due
    assert publisher.offer(4)
    assert published == [1, 4]
    assert publisher.waiting is None
    spent = 2 * 20.0
    assert spent / publisher.next_due() <= 0.1 + 1e-9  # each publish, then 9 x its cost


def test_flush_publishes_the_waiting_cycle_whatever_the_budget():
    publisher, published, clock = budget([30.0])
    publisher.offer(1)
    clock.now += 1.0
    assert not publisher.offer(2)
    assert publisher.flush()
    assert published == [1, 2]
    assert not publisher.flush()


def test_a_failed_publish_is_not_kept_waiting():
    def fail(item: int) -> None:
        raise RuntimeError("disk full")

    publisher = PublishBudget(fail)
    with pytest.raises(RuntimeError):
        publisher.offer(1)
    assert publisher.waiting is None
    assert not publisher.flush()


def test_share_must_be_a_fraction():
    with pytest.raises(ValueError, match="share"):
        PublishBudget(print, share=0.0)


# ------------------------------------------------------------------------------ in a protocol
def launch_in_this_process(protocol, wait: bool = False, *args, **kwargs) -> None:
    """What pyworkflow.protocol.launch starts in a subprocess (pw_protocol_run.py), run here:
    so that the protocol's publishing budget can be given another clock. The environment
    is restored after: pyworkflow names the running protocol there."""
    with mock.patch.dict(os.environ):
        runProtocolMain(protocol.getProject().path, protocol.getDbPath(), protocol.getObjId())


class TestSlowPublishing(ProjectTestCase):
    def test_a_slow_publish_holds_cycles_back_and_the_newest_goes_out_at_the_end(self) -> None:
        """With every publish costing 60 s (of the budget's clock), the first cycle goes out
        at once and the next ones wait, each replacing the one before (the log says so), so
        the outputs show the run's last cycle once the run ends."""
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        importer = self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir), streamTimeout=0.02)
        # 80 particles, below the first job's size: one job of a start, a startup cycle and
        # two refinement cycles once the input closes
        classify = self.new(ProtLive2DClassify2D, engine=1,
                            **{**SMALL_SCHEDULE, "refinementCycles": 2})
        classify.inputParticles.set(importer)
        classify.inputParticles.setExtended("outputParticles")
        clock = Clock()
        published: list[int] = []
        shown: list[set[int]] = []  # the cycles the session is told Scipion's outputs show
        keep_averages_of = Session.keep_averages_of

        def keeping(session: Session, cycles) -> None:
            shown.append(set(cycles))
            keep_averages_of(session, cycles)

        def slow_budget(publish):
            def slow_publish(record) -> None:
                publish(record)
                published.append(record.number)
                clock.now += 60.0

            return PublishBudget(slow_publish, clock=clock)

        with mock.patch("pyworkflow.protocol.launch", launch_in_this_process):
            self.proj.launchProtocol(importer, wait=True)
            self.proj.saveProtocol(classify)
            with mock.patch.object(protocol_classify2d, "PublishBudget", slow_budget), \
                    mock.patch.object(Session, "keep_averages_of", keeping), \
                    self.assertLogs("pyworkflow.protocol.protocol", "INFO") as logs:
                self.proj.launchProtocol(classify, wait=True)

        done = self.load(classify)
        self.assertTrue(done.isFinished(), done.getErrorMessage())
        cycles = [r.number for r in history_of(done) if r.block != "start"]
        self.assertEqual(len(cycles), 3, cycles)
        first, *held, last = cycles
        self.assertEqual(published, [first, last])  # the middle one was replaced while waiting
        # so the averages of the first stay while the outputs show it (the session's thinning)
        self.assertEqual(shown, [{first}, {last}])
        log = "\n".join(logs.output)
        for number in [*held, last]:
            self.assertIn(f"cycle {number} goes to the outputs with a later cycle: publishing "
                          "took 60 s, and takes at most 10% of the run", log)
        self.assertNotIn(f"cycle {first} goes to the outputs with a later cycle", log)
        # what the project window shows: the last cycle's classes, averages and selection
        self.assertEqual(done.publishedCycle.get(), last)
        self.assertTrue(done.outputClasses.getFileName().endswith(f"_cycle{last:03d}.sqlite"))
        self.assertTrue(done.outputAverages.getFileName().endswith(f"_cycle{last:03d}.sqlite"))
        record = history_of(done)[-1]
        classes = classes_of(done)
        try:
            sizes = {c.getObjId(): c.getSize() for c in classes.iterItems()}
            names = {Path(c.getRepresentative().getFileName()).name for c in classes.iterItems()}
        finally:
            classes.close()
        self.assertEqual(names, {f"cycle_{last:03d}.mrcs"})
        self.assertEqual(sizes, {k: n for k, n in enumerate(record.class_counts, 1) if n})
        check_grown_particles(self, done, *selected_members(self, done, last))


def classification(tmp_path) -> ProtLive2DClassify2D:
    """The protocol in this process, on a closed input set: enough for its outputParticles."""
    source = input_particles(tmp_path / "input.sqlite")
    source.close()
    (tmp_path / "run").mkdir()
    protocol = ProtLive2DClassify2D(workingDir=str(tmp_path / "run"))
    protocol.inputParticles.set(source)
    return protocol


def publish_particles(protocol: ProtLive2DClassify2D, selected: pd.DataFrame) -> int:
    """What a cycle's publish does to outputParticles (ProtLive2DClassify2D._publishCycle):
    the selected particles added, the output updated. Returns the number added."""
    source = protocol.inputParticles.get().getFileName()
    particles, added, _ids = protocol._grownParticles(selected, disabled_ids(source))
    protocol._updateOutputSet("outputParticles", particles, Set.STREAM_OPEN)
    return added


def published_ids(protocol: ProtLive2DClassify2D) -> list[int]:
    particles = SetOfParticles(filename=protocol.outputParticles.getFileName())
    particles.loadAllProperties()
    try:
        return sorted(particle.getObjId() for particle in particles)
    finally:
        particles.close()


def test_particles_published_empty_grow_with_the_next_selected_classes(tmp_path) -> None:
    """A cycle that selects no class publishes outputParticles empty, which pyworkflow writes
    as a file without tables; the next cycle's selected particles go into it. (Read back as a
    set, that file failed the next publish with "no such table: Properties": a clean-clone CI
    run of the two-engine classification test, whose first cycle selected no class.)"""
    protocol = classification(tmp_path)
    members = assignments().assign(kept=True)
    assert publish_particles(protocol, members.iloc[:0]) == 0
    assert protocol.outputParticles.getSize() == 0
    assert publish_particles(protocol, members.iloc[:20]) == 19  # not the disabled id 18
    assert publish_particles(protocol, members.iloc[10:30]) == 10
    wanted = [i for i in range(1, 31) if i != 18]
    assert published_ids(protocol) == wanted
    protocol._closeOutputs()
    assert protocol.outputParticles.isStreamClosed()
    assert protocol.outputParticles.getSize() == len(wanted)
    assert published_ids(protocol) == wanted


def test_particles_no_cycle_selected_are_closed_empty_at_the_end(tmp_path) -> None:
    protocol = classification(tmp_path)
    publish_particles(protocol, assignments().assign(kept=True).iloc[:0])
    protocol._closeOutputs()
    assert protocol.outputParticles.isStreamClosed()
    assert protocol.outputParticles.getSize() == 0
    assert protocol.outputParticles.hasAlignment2D()


def test_a_failed_publish_says_what_failed_where_the_cycles_are_and_what_next(tmp_path) -> None:
    protocol = classification(tmp_path)
    protocol._session = SimpleNamespace(history=[SimpleNamespace(number=4)])
    protocol.publishedCycle.set(3)
    protocol._publishError = OSError("No space left on device")
    with pytest.raises(RuntimeError) as raised:
        protocol._raisePublishError()
    message = str(raised.value)
    assert "publishing the classes failed (OSError: No space left on device)" in message
    assert "the run stopped after cycle 4" in message
    assert f"kept in {protocol._sessionDir()}" in message
    assert "Scipion's outputs stay those of cycle 3" in message
    assert "run.stderr" in message and "Continue resumes the run" in message
    assert protocol._publishError is None


def test_an_import_restarted_over_an_empty_particles_file_starts_a_new_set(tmp_path) -> None:
    """pyworkflow leaves a set's file without tables until its first item; an import stopped
    in between and continued opens a new set there instead of failing to read it back."""
    from live2d_plugin.protocols import ProtLive2DImportWarp

    (tmp_path / "run").mkdir()
    protocol = ProtLive2DImportWarp(workingDir=str(tmp_path / "run"))
    empty = SetOfParticles(filename=protocol._getPath("particles.sqlite"))
    empty.write()  # the file, without a Properties table
    empty.close()
    settings = SimpleNamespace(voltage=300.0, cs=2.7, amplitude_contrast=0.07)
    output = protocol._openOutput(SimpleNamespace(pixel_size=1.5), settings)
    assert output.getSamplingRate() == 1.5 and output.getSize() == 0
    output.append(input_particles(tmp_path / "input.sqlite").getFirstItem().clone())
    output.write()
    output.close()
    assert SetOfParticles(filename=protocol._getPath("particles.sqlite")).getSize() == 1
