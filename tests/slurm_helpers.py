"""Whether a Slurm controller answers on this machine (.ci/start-slurm starts a one-node one)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_slurm = pytest.mark.skipif(
    not slurm_answers(), reason="no Slurm answers here: run .ci/start-slurm (as root) first")


def slurm_job(job_id: int | str) -> dict[str, str]:
    """``scontrol show job``'s fields (Slurm keeps a finished job for MinJobAge, 300 s)."""
    text = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                          text=True, check=True).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)
