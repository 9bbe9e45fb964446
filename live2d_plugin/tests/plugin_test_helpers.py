"""Throwaway Scipion projects, protocol launching and polling for the plugin tests.

``BaseTest.launchProtocol(wait=False)`` and its output waiting are unusable (see
shared/scipion-notes.md), so protocols are launched through the project and polled from their own
run database. Every test gets a project of its own, and tearDown stops whatever is still running
so that a failed test cannot leave a protocol writing into the next one.
"""

from __future__ import annotations

import os
import time
import unittest
import uuid
from collections.abc import Callable
from pathlib import Path

from pwem.objects import SetOfParticles
from pyworkflow.project import Manager
from pyworkflow.protocol import getProtocolFromDb

from live2d.simulate import simulate

BOX = 48
PIXEL_SIZE = 3.0
SEED = 7


def simulate_warp(folder: Path, particles: int, per_micrograph: int = 40,
                  epu_dir: Path | None = None) -> None:
    """A tiny simulated Warp session (extends an existing one: same seed, more micrographs),
    with EPU's movie names (and its session folder, with ``epu_dir``)."""
    simulate(folder, particles=particles, per_micrograph=per_micrograph, box=BOX,
             pixel_size=PIXEL_SIZE, snr=0.5, views=4, seed=SEED, epu_dir=epu_dir)


class ProjectTestCase(unittest.TestCase):
    """One fresh project per test; running protocols are stopped in tearDown."""

    def setUp(self) -> None:
        name = f"{type(self).__name__}_{self._testMethodName}_{uuid.uuid4().hex[:8]}"
        self.cwd = os.getcwd()
        self.proj = Manager().createProject(name)
        os.chdir(self.proj.path)  # a project works with paths relative to its folder
        self.launched: list = []
        self.work = Path(self.proj.path) / "test_inputs"
        self.work.mkdir()

    def tearDown(self) -> None:
        for prot in self.launched:
            try:
                current = self.load(prot)
                if current.isActive():
                    self.proj.stopProtocol(prot)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {prot.getRunName()}: {exc}")
        self.proj.closeMapper()
        os.chdir(self.cwd)

    # ------------------------------------------------------------------------------ protocols
    def new(self, protocol_class, label: str | None = None, **params):
        prot = self.proj.newProtocol(protocol_class, **params)
        if label:
            prot.setObjLabel(label)
        return prot

    def launch(self, prot):
        self.proj.launchProtocol(prot, wait=False)
        self.launched.append(prot)
        return prot

    def load(self, prot):
        """The protocol as its run database has it now (outputs, status)."""
        loaded = getProtocolFromDb(self.proj.path, prot.getDbPath(), prot.getObjId())
        loaded.getProject().closeMapper()
        loaded.closeMappers()
        return loaded

    def wait_until(self, prot, condition: Callable, timeout: float, what: str,
                   interval: float = 0.5):
        """Poll until ``condition(loaded_protocol)``; fail with the protocol's log tail if it
        failed or the timeout passed."""
        deadline = time.monotonic() + timeout
        while True:
            loaded = self.load(prot)
            if condition(loaded):
                self.proj._updateProtocol(prot)  # so pointers to its outputs resolve
                return loaded
            if loaded.isFailed() or loaded.isAborted():
                self.fail(f"{prot.getRunName()} {loaded.getStatus()} waiting for {what}: "
                          f"{loaded.getErrorMessage()}\n{self.log_tail(prot)}")
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what} ({loaded.getStatus()})\n"
                          f"{self.log_tail(prot)}")
            time.sleep(interval)

    def wait_finished(self, prot, timeout: float):
        return self.wait_until(prot, lambda p: p.isFinished(), timeout, "the end of the run")

    def log_tail(self, prot, lines: int = 40) -> str:
        folder = Path(self.proj.path, prot.getWorkingDir(), "logs")
        logs = [folder / "run.stdout", folder / "run.stderr"]
        text = []
        for path in (p for p in logs if p.exists()):
            text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)


def output_size(prot, name: str = "outputParticles") -> tuple[int, bool]:
    """(items, closed) of a protocol's output set, read from its sqlite."""
    output = getattr(prot, name, None)
    if output is None:
        return 0, False
    fresh = type(output)(filename=output.getFileName())
    fresh.loadAllProperties()
    try:
        return fresh.getSize(), fresh.isStreamClosed()
    finally:
        fresh.close()


def particles_of(prot, name: str = "outputParticles") -> list:
    output = getattr(prot, name)
    fresh = SetOfParticles(filename=output.getFileName())
    try:
        return [p.clone() for p in fresh]
    finally:
        fresh.close()
