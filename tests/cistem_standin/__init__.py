"""Stand-ins for cisTEM 2's refine2d and merge2d, for tests only (not shipped).

``make_bin_dir`` writes ``refine2d`` / ``merge2d`` wrappers that exec the stand-ins with this
interpreter (so the venv's numpy and mrcfile are there), as a cisTEM bin folder would hold them.
The stand-ins import nothing from live2d: they check the engine against the interface notes.
``particles.make_particles`` makes test data.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent
PROGRAMS = ("refine2d", "merge2d")


def make_bin_dir(folder: Path, openmp: bool = True, programs: tuple[str, ...] = PROGRAMS,
                 env: dict[str, str] | None = None) -> Path:
    """A bin folder with wrappers for ``programs``; ``openmp`` picks the 25- or 24-prompt build.
    ``env``: variables the wrappers set (the hooks of runtime.py), for programs started by
    processes whose environment a test cannot change, such as Dask workers."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(env or {})
    if not openmp:
        settings["CISTEM_STANDIN_BUILD"] = "no-openmp"
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in settings.items())
    for program in programs:
        script = shlex.quote(str(STANDIN_DIR / f"{program}.py"))
        wrapper = folder / program
        wrapper.write_text(
            f'#!/bin/sh\n{exports}exec {shlex.quote(sys.executable)} {script} "$@"\n')
        wrapper.chmod(0o755)
    return folder


def read_records(folder: Path, program: str) -> list[dict]:
    """The runs of ``program`` ("Refine2D", "Merge2D") that CISTEM_STANDIN_RECORD kept in
    ``folder``, oldest first; find_programs' own probe runs left out."""
    found = [json.loads(path.read_text()) for path in Path(folder).glob(f"{program}-*.json")]
    found = [record for record in found if "probe" not in str(record.get("stack", ""))]
    return sorted(found, key=lambda record: record["recorded"])


def wait_for_records(folder: Path, program: str, count: int, timeout: float = 30.0) -> list[dict]:
    """read_records once ``count`` runs of ``program`` have recorded themselves, or whatever is
    there after ``timeout`` seconds (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while len(records := read_records(folder, program)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return records
