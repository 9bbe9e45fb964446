"""ProtLive2DImportWarp on simulated Warp sessions: static, streaming, and a box-size change."""

from __future__ import annotations

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
from live2d_plugin.protocols import ProtLive2DImportWarp


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
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=120)
        prot = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                    streamTimeout=0.05))
        done = self.wait_finished(prot, timeout=90)

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
