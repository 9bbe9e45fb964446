"""ProtLive2DImportWarp on simulated Warp sessions: static, streaming, and a box-size change,
with "Copy files?" No (Warp's own stacks, no copy) and Yes; on WarpTools 2 projects and named
RELION particle stars (always copied)."""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from plugin_test_helpers import (
    BOX,
    PIXEL_SIZE,
    ProjectTestCase,
    output_size,
    particles_of,
    simulate_warp,
)

from live2d.simulate import write_settings
from live2d.store import ParticleStore
from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from warp_fixtures import WarpToolsProject  # lives in the core's tests


def warp_image(warp_dir: Path, image_name: str) -> np.ndarray:
    index, _, stack = image_name.partition("@")
    with mrcfile.open(warp_dir / stack, permissive=True) as mrc:
        return np.asarray(mrc.data[int(index) - 1])


def stored_image(location: tuple[int, str], project: str) -> np.ndarray:
    index, filename = location
    with mrcfile.open(Path(project) / filename, permissive=True) as mrc:
        return np.asarray(mrc.data[index - 1])


class TestImportWarp(ProjectTestCase):
    def test_static_session_imports_everything_with_ctf_then_closes_on_timeout(self) -> None:
        """Every particle with its CTF, the output closed on the timeout; with "Copy files?" at
        Scipion's default, No, the particles point at Warp's own stacks and nothing is copied.
        (One run for both: the same import.)"""
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=120)
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir), streamTimeout=0.02)
        self.assertFalse(prot.copyFiles.get())  # Scipion's default: no duplicate
        done = self.wait_finished(self.launch(prot), timeout=90)

        self.assertEqual(output_size(done), (120, True))
        particles = particles_of(done)
        output = done.outputParticles
        self.assertAlmostEqual(output.getSamplingRate(), PIXEL_SIZE, places=4)
        self.assertTrue(output.hasCTF())
        self.assertAlmostEqual(output.getAcquisition().getVoltage(), 300.0)
        truth = pd.read_csv(self.work / "warp_truth" / "particles.csv").set_index("image_name")
        for particle in particles[::17]:
            name = particle._warpImageName.get()
            ctf = particle.getCTF()
            self.assertAlmostEqual(ctf.getDefocusU(), truth.loc[name, "defocus_u"], delta=0.06)
            self.assertAlmostEqual(ctf.getDefocusV(), truth.loc[name, "defocus_v"], delta=0.06)
            # pwem keeps astigmatism angles in [0, 180): the same axis as Warp's.
            angle_gap = (ctf.getDefocusAngle() - truth.loc[name, "defocus_angle"]) % 180.0
            self.assertLess(min(angle_gap, 180.0 - angle_gap), 0.06)
            # The particle's location holds exactly the image Warp exported under that name.
            np.testing.assert_array_equal(stored_image(particle.getLocation(), self.proj.path),
                                          warp_image(warp_dir, name))
        self.assertEqual(particles[0].getXDim(), BOX)

        # Copy files? No: the particles point at Warp's own stacks, nothing is copied.
        for particle in particles:
            index, stack = particle._warpImageName.get().split("@")
            self.assertEqual(particle.getLocation(),
                             (int(index), str(warp_dir.resolve() / stack)))
        store = ParticleStore(done._getExtraPath("store"))
        self.assertFalse(store.copies_images)
        self.assertEqual(store.count, 120)
        self.assertFalse(store.stack_path.exists())  # no pixels, so no stack
        log = self.log_tail(prot, 10**6)
        self.assertEqual(log.count("Copy files? No: the output particles point at Warp's own "
                                   "stacks"), 1, log)
        self.assertIn("read in place from Warp's stacks (not copied)", "\n".join(done.summary()))
        self.assertIn("read in place from Warp's stacks", "\n".join(done.methods()))

    def test_copy_files_yes_copies_every_particle_into_the_store(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        done = self.wait_finished(self.launch(self.new(
            ProtLive2DImportWarp, warpFolder=str(warp_dir), copyFiles=True,
            streamTimeout=0.02)), timeout=90)
        self.assertEqual(output_size(done), (80, True))
        store = ParticleStore(done._getExtraPath("store"))
        self.assertTrue(store.copies_images)
        particles = particles_of(done)
        self.assertEqual({Path(self.proj.path, p.getFileName()).resolve() for p in particles},
                         {store.stack_path.resolve()})
        for particle in particles[::9]:
            np.testing.assert_array_equal(stored_image(particle.getLocation(), self.proj.path),
                                          warp_image(warp_dir, particle._warpImageName.get()))
        log = self.log_tail(done, 10**6)
        self.assertEqual(log.count("Copy files? Yes: every particle is copied"), 1, log)
        self.assertIn("copied into the project", "\n".join(done.summary()))

    def test_streaming_output_grows_while_warp_writes_and_closes_on_stop(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=80)
        prot = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                    particleFile=1, streamTimeout=30.0))
        first = self.wait_until(prot, lambda p: output_size(p)[0] == 80, 90, "80 particles")
        self.assertEqual(output_size(first), (80, False))  # open: more may come

        simulate_warp(warp_dir, particles=160)  # two more micrographs appear
        grown = self.wait_until(prot, lambda p: output_size(p)[0] == 160, 60, "160 particles")
        self.assertFalse(output_size(grown)[1])
        self.assertTrue(grown.isActive())

        grown.stopStreaming()  # what the right-click STOP STREAMING action does
        done = self.wait_finished(prot, timeout=60)
        self.assertEqual(output_size(done), (160, True))
        names = [p._warpImageName.get() for p in particles_of(done)]
        self.assertEqual(len(set(names)), 160)  # each particle once, none twice

    def test_an_import_started_before_warp_waits_for_its_settings(self) -> None:
        warp_dir = self.work / "warp"
        warp_dir.mkdir()  # Warp has not started: no previous.settings yet
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir), streamTimeout=30.0)
        self.assertEqual(prot.validate(), [])
        self.launch(prot)
        waiting = self.wait_until(
            prot, lambda _: "no previous.settings" in self.log_tail(prot, 10**6), 90,
            "the import to say it waits for Warp's settings")
        self.assertTrue(waiting.isActive())
        self.assertIsNone(getattr(waiting, "outputParticles", None))

        simulate_warp(warp_dir, particles=40)  # Warp starts and exports its first particles
        self.wait_until(prot, lambda p: output_size(p)[0] == 40, 90, "40 particles")
        self.load(prot).stopStreaming()
        done = self.wait_finished(prot, timeout=60)
        self.assertEqual(output_size(done), (40, True))
        log = self.log_tail(prot, 10**6)
        self.assertEqual(log.count("no previous.settings"), 1, log)  # said once, then quiet

    def test_an_import_that_closes_with_nothing_fails_with_the_reason_said_once(self) -> None:
        empty = self.work / "empty"
        empty.mkdir()
        corrupt = self.work / "corrupt"
        simulate_warp(corrupt, particles=20)
        star = next(corrupt.glob("allparticles_*.star"))
        star.write_text("data_\n\nloop_\n_rlnImageName #1\n000001@x.mrcs\n")
        cases = {empty: "no previous.settings", corrupt: "lacks the column(s)"}
        # 3 s without particles: some 6 polls (every 0.5 s) that must say the reason once.
        runs = {folder: self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(folder),
                                             streamTimeout=0.05))
                for folder in cases}
        for folder, reason in cases.items():
            failed = self.wait_until(runs[folder], lambda p: p.isFailed(), 120,
                                     "the import to fail")
            message = failed.getErrorMessage()
            self.assertIn("no particles were imported", message, message)
            self.assertIn(reason, message, message)
            self.assertIsNone(getattr(failed, "outputParticles", None))
            log = self.log_tail(runs[folder], 10**6)
            before_failing = log.split("no particles were imported")[0]
            self.assertEqual(before_failing.count(reason), 1, log)  # said once, then quiet

    def test_box_size_change_fails_clearly_and_keeps_the_output(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=40)
        prot = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                    streamTimeout=30.0))
        self.wait_until(prot, lambda p: output_size(p)[0] == 40, 90, "40 particles")

        write_settings(warp_dir, BoxSize=64)
        failed = self.wait_until(prot, lambda p: p.isFailed(), 60, "the run to fail")
        message = failed.getErrorMessage()
        self.assertIn("box size changed 48 -> 64", message, message)
        self.assertIn("new 'import warp particles (live)' protocol", message)
        self.assertEqual(output_size(failed), (40, True))
        # The output still points at the images imported before the change.
        particle = particles_of(failed)[5]
        np.testing.assert_array_equal(stored_image(particle.getLocation(), self.proj.path),
                                      warp_image(warp_dir, particle._warpImageName.get()))

    def test_stop_button_closes_the_output(self) -> None:
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=40)
        prot = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                    streamTimeout=30.0))
        self.wait_until(prot, lambda p: output_size(p)[0] == 40, 90, "40 particles")
        self.proj.stopProtocol(prot)  # the Stop button: kills the run, Scipion closes outputs
        stopped = self.load(prot)
        self.assertTrue(stopped.isAborted())
        self.assertEqual(output_size(stopped), (40, True))


def movie_and_index(image_name: str) -> tuple[int, int]:
    """(movie, 0-based index) of a WarpToolsProject image name."""
    index, _, stack = image_name.partition("@")
    return int(stack.rsplit("movie_", 1)[1][:4]), int(index) - 1


class TestImportParticleStars(ProjectTestCase):
    def assert_particles_match(self, particles: list, project: WarpToolsProject) -> None:
        """Every exported particle exactly once, each pointing at its own pixels."""
        names = [p._warpImageName.get() for p in particles]
        self.assertEqual(sorted(names), sorted(project.image_name(m, j)
                                               for m in range(project.movies)
                                               for j in range(project.per)))
        # One store stack, each particle at its own index of it: nothing imported twice.
        self.assertEqual(len({p.getFileName() for p in particles}), 1)
        self.assertEqual(sorted(p.getIndex() for p in particles),
                         list(range(1, len(particles) + 1)))
        for particle, name in zip(particles, names, strict=True):
            movie, index = movie_and_index(name)
            np.testing.assert_array_equal(stored_image(particle.getLocation(), self.proj.path),
                                          project.images(movie)[index])
            self.assertAlmostEqual(particle.getSamplingRate(), project.pixel_size)
            self.assertAlmostEqual(particle.getCTF().getDefocusU(), 15000.0 + 100.0 * movie,
                                   delta=0.01)

    def test_a_warptools_project_reexported_while_streaming_imports_each_particle_once(
            self) -> None:
        project = WarpToolsProject(self.work / "warptools", box=32, pixel_size=2.0,
                                   per_movie=10)
        project.export(2)
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                        streamTimeout=30.0)
        self.assertEqual(prot.validate(), [])  # found without naming its star
        self.launch(prot)
        first = self.wait_until(prot, lambda p: output_size(p)[0] == 20, 90, "20 particles")
        self.assertEqual(output_size(first), (20, False))

        project.export(1)  # fs_export_particles again: one more movie, every row reshuffled
        grown = self.wait_until(prot, lambda p: output_size(p)[0] == 30, 60, "30 particles")
        grown.stopStreaming()
        done = self.wait_finished(prot, timeout=60)
        self.assertEqual(output_size(done), (30, True))
        output = done.outputParticles
        self.assertAlmostEqual(output.getSamplingRate(), 2.0, places=4)  # the star's, not Warp's
        self.assertAlmostEqual(output.getAcquisition().getVoltage(), 300.0)
        self.assertTrue(output.hasCTF())
        particles = particles_of(done)
        self.assert_particles_match(particles, project)  # copied, though Copy files? is No
        self.assertFalse(done.copyFiles.get())
        self.assertTrue(ParticleStore(done._getExtraPath("store")).copies_images)
        self.assertEqual(particles[0].getXDim(), 32)
        log = self.log_tail(prot, 10**6)
        self.assertIn("WarpTools 2 layout", log)
        self.assertEqual(log.count("Copy files? No, but the particles are copied"), 1, log)
        self.assertIn("Particle star: ", " ".join(done.summary()))
        self.assertIn("copied into the project", " ".join(done.summary()))

    def test_a_named_star_with_black_protein_reaches_the_classification_as_black(self) -> None:
        project = WarpToolsProject(self.work / "relion", box=32, pixel_size=1.5, per_movie=6,
                                   star="Extract/job012/particles.star", relative_to_star=True)
        (project.folder / "warp_frameseries.settings").unlink()  # a plain RELION project
        project.export(2)
        bare = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder))
        self.assertEqual(bare.validate(), [])  # nothing to import yet, waited for
        prot = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                        particleStar="Extract/job012/particles.star", proteinContrast=2,
                        streamTimeout=0.02)
        self.assertEqual(prot.validate(), [])
        done = self.wait_finished(self.launch(prot), timeout=90)
        self.assertEqual(output_size(done), (12, True))
        self.assertAlmostEqual(done.outputParticles.getSamplingRate(), 1.5, places=4)
        particles = particles_of(done)
        self.assert_particles_match(particles, project)
        self.assertEqual({p._live2dContrast.get() for p in particles}, {"black"})

        # The classification's particle source reads these particles with Invert off.
        classify = self.new(ProtLive2DClassify2D)
        classify.inputParticles.set(done)
        classify.inputParticles.setExtended("outputParticles")
        self.proj.saveProtocol(classify)
        source = classify._particleSource(ParticleStore(self.work / "classify_store"))
        source.poll()
        self.assertFalse(source.source_settings().invert)

    def test_a_box_change_in_the_star_fails_clearly_and_keeps_the_output(self) -> None:
        project = WarpToolsProject(self.work / "warptools", box=32, per_movie=5)
        project.export(1)
        prot = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                                    streamTimeout=30.0))
        self.wait_until(prot, lambda p: output_size(p)[0] == 5, 90, "5 particles")
        project.box = 40
        project.export(1)  # re-extracted with a bigger box
        failed = self.wait_until(prot, lambda p: p.isFailed(), 60, "the run to fail")
        message = failed.getErrorMessage()
        self.assertIn("the box size in particles.star changed 32 -> 40", message, message)
        self.assertIn("new 'import warp particles (live)' protocol", message)
        self.assertEqual(output_size(failed), (5, True))

    def test_validation_of_star_layouts(self) -> None:
        project = WarpToolsProject(self.work / "warptools")
        project.export(1)
        (project.folder / "other.star").write_text(project.star_path.read_text())
        several = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder))
        errors = "\n".join(several.validate())
        self.assertIn("several particle stars", errors)
        self.assertIn('set "Particle star"', errors)  # the form's name, not the CLI's --star
        named = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                         particleStar="other.star")
        self.assertEqual(named.validate(), [])
        (project.folder / "notes.star").write_text("data_\nloop_\n_rlnMicrographName #1\na\n")
        wrong = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                         particleStar="notes.star")
        self.assertIn("not a RELION particle star", "\n".join(wrong.validate()))
        later = self.new(ProtLive2DImportWarp, warpFolder=str(project.folder),
                         particleStar=str(self.work / "not_yet.star"))
        self.assertEqual(later.validate(), [])  # an absolute star not written yet: waited for
