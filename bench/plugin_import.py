"""What importing the Scipion plugin costs: every Scipion process (the scheduler, each protocol,
the subset and split tools) imports it, its protocols and viewers.

    python bench/plugin_import.py [--runs 5] [--tree OTHER_CHECKOUT ...] [--modules M ...]

For each checkout (this one by default; ``--tree`` adds others, e.g. an older commit's
``git worktree``, measured in turns with this one so that load on the machine hits both alike)
and each run, a fresh interpreter imports the modules under ``python -X importtime``. Prints
per run the total import time (wall clock: the sum of the top-level entries importtime
reports), the interpreter's CPU time (user + system: less sensitive to other load), the
modules loaded and whether torch was; then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("live2d_plugin", "live2d_plugin.protocols.protocol_classify2d",
                   "live2d_plugin.protocols", "live2d_plugin.viewers")


def total_import_seconds(importtime: str) -> float:
    """The sum of the top-level entries of ``-X importtime``'s lines
    ("import time: self | cumulative | <indent>name"; a top-level name is indented once)."""
    total_us = 0
    for line in importtime.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit() \
                and not fields[2].startswith("  "):
            total_us += int(fields[1])
    return total_us / 1e6


def one_run(tree: Path, modules: list[str]) -> dict[str, float]:
    code = ("import json, sys\n"
            + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps({'modules': len(sys.modules), 'torch': 'torch' in sys.modules}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=tree, env=env,
                            capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    probe = json.loads(result.stdout.splitlines()[-1])
    return {"wall_s": total_import_seconds(result.stderr),
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "modules": probe["modules"], "torch": probe["torch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure in turns with this one")
    parser.add_argument("--modules", nargs="+", default=list(DEFAULT_MODULES))
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    trees = [REPO_ROOT, *(t.resolve() for t in args.tree)]
    for tree in trees:
        if not (tree / "live2d_plugin" / "__init__.py").exists():
            parser.error(f"{tree} is not a Live2D checkout (no live2d_plugin/__init__.py)")
    for modules in ([m] for m in args.modules):
        print(f"import {' '.join(modules)}")
        runs: dict[Path, list[dict]] = {tree: [] for tree in trees}
        for _ in range(args.runs):
            for tree in trees:
                run = one_run(tree, modules)
                runs[tree].append(run)
                torch = "loaded" if run["torch"] else "not loaded"
                print(f"  {tree}: {run['wall_s']:.2f} s import time, {run['cpu_s']:.2f} s CPU, "
                      f"{run['modules']} modules, torch {torch}")
        for tree, measured in runs.items():
            print(f"  median {tree}: "
                  f"{statistics.median(r['wall_s'] for r in measured):.2f} s import time, "
                  f"{statistics.median(r['cpu_s'] for r in measured):.2f} s CPU")


if __name__ == "__main__":
    main()
