"""The Scipion environment of the plugin tests, made here before anything imports pyworkflow
(pyworkflow reads its configuration from environment variables once, at import).

Everything goes to a throwaway folder: Scipion home, user data (projects), hosts.conf (with a
Slurm queue, used only by the queue tests). Protocols run in subprocesses that inherit this
environment. If pyworkflow / pwem are not installed (a plain ``pip install live2d`` without the
``scipion`` extra), the plugin tests are not collected.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

PLUGIN = "live2d_plugin"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _scipion_available() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("pyworkflow", "pwem", "tkinter"))


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == PLUGIN and ep.value == PLUGIN
               for ep in entry_points(group="pyworkflow.plugin"))


def _install_entry_point_shim(root: Path) -> None:
    """Before the package is reinstalled with its ``pyworkflow.plugin`` entry point, protocol
    subprocesses cannot find the plugin: expose it through a throwaway dist-info (tests only)."""
    shim = root / "entry_point_shim"
    info = shim / "live2d_plugin_test_shim-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: live2d-plugin-test-shim\n"
                                   "Version: 0\n")
    (info / "entry_points.txt").write_text(f"[pyworkflow.plugin]\n{PLUGIN} = {PLUGIN}\n")
    paths = [str(shim), str(REPO_ROOT)]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(
        paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


def _setup_scipion_environment() -> Path:
    root = Path(tempfile.mkdtemp(prefix="live2d-scipion-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "home").mkdir()
    (root / "data").mkdir()
    os.environ.update({
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": str(root / "home"),
        "SCIPION_USER_DATA": str(root / "data"),
        "SCIPION_HOSTS": str(root / "hosts.conf"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "MPLBACKEND": "Agg",
    })
    installed = _entry_point_installed()
    # test_plugin reads this: discovery is only tested against the real entry point.
    os.environ["LIVE2D_PLUGIN_ENTRY_POINT"] = "installed" if installed else "shim"
    if not installed:
        _install_entry_point_shim(root)
    (root / "hosts.conf").write_text(SLURM_HOSTS_CONF)
    return root


# localhost as a Scipion site with a Slurm queue, as Scipion's documentation configures one.
# Protocols use the queue only when launched with it (test_plugin_queue); the rest run locally.
SLURM_HOSTS_CONF = """\
[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s
NAME = SLURM
MANDATORY = 0
SUBMIT_COMMAND = sbatch %_(JOB_SCRIPT)s
CANCEL_COMMAND = scancel %_(JOB_ID)s
CHECK_COMMAND = squeue -h -j %_(JOB_ID)s
SUBMIT_PREFIX = scipion
QUEUES = {"debug": [["JOB_MEMORY", "2048", "Memory (MB)", "Memory per job"]]}
QUEUES_DEFAULT = {"JOB_GPUS": "0"}
SUBMIT_TEMPLATE = #!/bin/bash
  #SBATCH -J %_(JOB_NAME)s
  #SBATCH -o %_(JOB_LOGS)s.out
  #SBATCH -e %_(JOB_LOGS)s.err
  #SBATCH -p %_(JOB_QUEUE)s
  #SBATCH --ntasks=%_(JOB_NODES)d
  #SBATCH --cpus-per-task=%_(JOB_THREADS)d
  #SBATCH --mem=%_(JOB_MEMORY)s
  %_(JOB_COMMAND)s
"""


if _scipion_available():
    SCIPION_ROOT = _setup_scipion_environment()
else:
    collect_ignore_glob = ["test_*.py"]
