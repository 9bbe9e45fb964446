"""The classification protocol beyond one process, as Scipion users run other plugins' protocols:
submitted to Scipion's queue (a one-node Slurm, see .ci/start-slurm) and with its cycles on a
Dask scheduler."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from plugin_test_helpers import ProjectTestCase, simulate_warp
from test_plugin_classify import SMALL_SCHEDULE, history_of

from live2d_plugin.protocols import ProtLive2DClassify2D, ProtLive2DImportWarp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from slurm_helpers import needs_slurm, slurm_job  # lives in the core's tests


class TestClassifyBeyondOneProcess(ProjectTestCase):
    def classify_closed_set(self, particles: int, **form) -> ProtLive2DClassify2D:
        """A classification protocol, not launched yet, on an imported and closed set."""
        warp_dir = self.work / "warp"
        simulate_warp(warp_dir, particles=particles)
        importer = self.launch(self.new(ProtLive2DImportWarp, warpFolder=str(warp_dir),
                                        streamTimeout=0.02))
        self.wait_finished(importer, timeout=90)
        classify = self.new(ProtLive2DClassify2D, engine=1, **{**SMALL_SCHEDULE, **form})
        classify.inputParticles.set(importer)
        classify.inputParticles.setExtended("outputParticles")
        return classify

    @needs_slurm
    def test_runs_as_a_job_on_scipions_queue(self) -> None:
        classify = self.classify_closed_set(80)
        classify._useQueue.set(True)
        classify.setQueueParams(["debug", {"JOB_MEMORY": "2048"}])
        self.proj.saveProtocol(classify)
        self.launch(classify)
        done = self.wait_finished(classify, timeout=180)

        [job_id] = classify.getJobIds()  # pyworkflow submitted it with sbatch, got its id
        deadline = time.monotonic() + 60  # the job ends a moment after the protocol
        while (job := slurm_job(job_id))["JobState"] in ("PENDING", "RUNNING", "COMPLETING") \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual(job["JobState"], "COMPLETED")
        self.assertEqual(job["Partition"], "debug")
        self.assertEqual(int(job["NumCPUs"]), SMALL_SCHEDULE["numberOfThreads"])
        script = Path(self.proj.path, done.getWorkingDir(), "logs", f"scipion{done.strId()}.job")
        self.assertIn("--cpus-per-task=2", script.read_text())
        history = history_of(done)
        self.assertEqual(len(history), 3)  # the whole job ran inside the batch job
        self.assertEqual(done.publishedParticles.get(), 80)
        self.assertIsNotNone(done.outputClasses)

    def test_cycles_run_on_a_dask_scheduler(self) -> None:
        import distributed

        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster:
            classify = self.classify_closed_set(80, daskScheduler=cluster.scheduler_address)
            self.assertEqual(classify.validate(), [])
            self.proj.saveProtocol(classify)
            self.launch(classify)
            done = self.wait_finished(classify, timeout=180)
        history = history_of(done)
        self.assertEqual(len(history), 3)
        self.assertIn(f"Dask scheduler {cluster.scheduler_address}", "\n".join(done.summary()))
        self.assertTrue(all("dask at tcp://127.0.0.1" in record.engine
                            for record in history), [r.engine for r in history])
        self.assertEqual(done.publishedParticles.get(), 80)

    def test_a_malformed_scheduler_address_fails_validation(self) -> None:
        classify = self.new(ProtLive2DClassify2D, engine=1, daskScheduler="head-node",
                            **SMALL_SCHEDULE)
        self.assertTrue(any("tcp://head:8786" in error for error in classify.validate()))
