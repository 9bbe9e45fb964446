"""Finding cisTEM's refine2d and merge2d and learning which build they are.

Search order: ``--cistem-bin DIR``, then ``$CISTEM_HOME/bin``, then PATH; the first place holding
both programs is used. Each is probed once:

* merge2d runs with stdin closed: it prints its banner (``Version :``) and its first prompt,
  then stops on the blank answer.
* refine2d runs a tiny random start (4 noise images, 1 class) given 25 answers. Its banner gives
  ``Version :`` and ``Library Version :``; the prompts it echoes tell the build: a build with
  OpenMP asks 25 questions, one without asks 24 and never reads the 25th line, so the probe
  runs either way. Prompts other than cisTEM 2's mean an unsupported program.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from live2d import cistem_star
from live2d.engines.base import CycleParams
from live2d.engines.cistem_jobs import OutputSplitter
from live2d.engines.cistem_prompts import (
    MERGE2D_PROMPTS,
    REFINE2D_PROMPTS,
    REFINE2D_PROMPTS_WITHOUT_OPENMP,
    Refine2DRun,
    echoed_prompts,
    parse_banner,
    refine2d_answers,
)
from live2d.errors import EngineError

log = logging.getLogger("live2d.cistem")

PROGRAMS = ("refine2d", "merge2d")
EXPECTED_REFINE2D_VERSION = "1.02"
PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CistemPrograms:
    """The refine2d and merge2d found and probed: their paths, versions and what they ask."""
    refine2d: Path
    merge2d: Path
    refine2d_version: str  # "1.02"
    merge2d_version: str  # "1.00"
    library_version: str  # "2.0.0-alpha-…"
    openmp: bool  # refine2d asks "Max. threads to use for calculation"
    found_in: str  # which place of the search they came from


def find_programs(bin_dir: str | None, required: bool) -> CistemPrograms | None:
    """refine2d and merge2d from ``bin_dir``, then ``$CISTEM_HOME/bin``, then PATH.

    Each candidate is probed (see the module notes). Raises EngineError naming every place
    looked in and what was missing or wrong when ``required``; else returns None then.
    """
    looked: list[str] = []
    for place, found in _candidates(bin_dir, looked):
        try:
            programs = _probe(found, place)
        except EngineError as exc:
            if required:
                raise
            log.warning("cisTEM not used: %s", exc)
            return None
        if bin_dir and not place.startswith("--cistem-bin"):
            log.warning("cisTEM: %s; using the programs in %s", looked[0], place)
        log.info("cisTEM found in %s: %s", place, describe_programs(programs))
        return programs
    if required:
        raise EngineError(
            "cisTEM's refine2d and merge2d were not found. Looked in:\n"
            + "\n".join(f"  {line}" for line in looked)
        )
    return None


def describe_programs(programs: CistemPrograms) -> str:
    build = "OpenMP" if programs.openmp else "no OpenMP"
    return f"refine2d {programs.refine2d_version}, library {programs.library_version}, {build}"


def _candidates(bin_dir: str | None, looked: list[str]) -> Iterator[tuple[str, dict[str, Path]]]:
    """(place, {program: path}) for each place holding both programs, in search order; notes
    in ``looked`` what each place lacked."""
    places: list[tuple[str, Path | None]] = []
    if bin_dir:
        places.append((f"--cistem-bin {bin_dir}", Path(bin_dir)))
    home = os.environ.get("CISTEM_HOME")
    if home:
        places.append((f"$CISTEM_HOME/bin = {Path(home) / 'bin'}", Path(home) / "bin"))
    else:
        looked.append("$CISTEM_HOME/bin: CISTEM_HOME is not set")
    places.append((f"PATH = {os.environ.get('PATH', '')}", None))
    for place, folder in places:
        found = {}
        for program in PROGRAMS:
            path = _executable(folder / program) if folder else shutil.which(program)
            if path:
                found[program] = Path(path).absolute()
        missing = [program for program in PROGRAMS if program not in found]
        if missing:
            looked.append(f"{place}: no {' and no '.join(missing)}")
            continue
        yield place, found


def _executable(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _probe(found: dict[str, Path], place: str) -> CistemPrograms:
    """Versions and OpenMP build of the programs in ``place``; EngineError if unsupported."""
    refine2d, merge2d = found["refine2d"], found["merge2d"]
    with tempfile.TemporaryDirectory(prefix="live2d-cistem-probe-") as folder:
        lines = _run_probe(refine2d, Path(folder), _probe_answers(Path(folder)))
        version, library = parse_banner(lines)
        prompts = echoed_prompts(lines)
        merge_lines = _run_probe(merge2d, Path(folder), None)
    where = f"in {place}"
    if version is None or library is None:
        raise _unsupported(f"refine2d {where} ({refine2d}) printed no cisTEM banner", lines)
    if prompts == list(REFINE2D_PROMPTS):
        openmp = True
    elif prompts == list(REFINE2D_PROMPTS_WITHOUT_OPENMP):
        openmp = False
    else:
        raise _unsupported(
            f"refine2d {version} {where} ({refine2d}) asks other questions than cisTEM 2's "
            f"refine2d 1.02: {_first_difference(prompts, REFINE2D_PROMPTS)}",
            lines,
        )
    if version != EXPECTED_REFINE2D_VERSION:
        log.warning(
            "refine2d %s reports version %s; its prompts match %s",
            refine2d,
            version,
            EXPECTED_REFINE2D_VERSION,
        )
    merge_version, _ = parse_banner(merge_lines)
    if merge_version is None or echoed_prompts(merge_lines)[:1] != [MERGE2D_PROMPTS[0]]:
        raise _unsupported(f"merge2d {where} ({merge2d}) is not cisTEM 2's merge2d", merge_lines)
    return CistemPrograms(
        refine2d=refine2d,
        merge2d=merge2d,
        refine2d_version=version,
        merge2d_version=merge_version,
        library_version=library,
        openmp=openmp,
        found_in=place,
    )


def _probe_answers(folder: Path) -> list[str]:
    """A tiny random start (4 noise images, 1 class) with 25 answers: a build without OpenMP
    runs it on 24 and leaves the last line unread, so either build runs to a normal end."""
    stack, star = folder / "probe_stack.mrc", folder / "probe.star"
    rng = np.random.default_rng(0)
    with mrcfile.new(stack) as mrc:
        mrc.set_data(rng.standard_normal((4, 32, 32)).astype(np.float32))
        mrc.voxel_size = 4.0
    table = cistem_star.new_table(4)
    table["PSIZE"] = 4.0
    table["VOLT"] = 300.0  # defocus 0 switches the CTF off
    cistem_star.write_star(star, table)
    run = Refine2DRun(
        stack=stack,
        star_in=star,
        classes_out=folder / "probe_classes.mrc",
        dump_file=folder / "probe_dump.dat",
        first=1,
        last=4,
        n_classes_init=1,
    )
    params = CycleParams(pixel_size=4.0, mask_radius=40.0, high_res=8.0, fraction=1.0)
    return refine2d_answers(run, params, openmp=True)


def _run_probe(program: Path, folder: Path, answers: list[str] | None) -> list[str]:
    """The lines ``program`` prints for ``answers`` (None: stdin closed at once)."""
    try:
        result = subprocess.run(
            [str(program)],
            input=None if answers is None else ("\n".join(answers) + "\n").encode(),
            stdin=subprocess.DEVNULL if answers is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=folder,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{program} could not be run: {exc}") from None
    splitter = OutputSplitter()
    events = splitter.feed(result.stdout) + splitter.feed(b"")
    return [text for kind, text in events if kind == "line"]


def _first_difference(asked: list[str], expected: tuple[str, ...]) -> str:
    for number, (got, want) in enumerate(zip(asked, expected, strict=False), start=1):
        if got != want:
            return f"prompt {number} is {got!r}, expected {want!r}"
    return f"it asked {len(asked)} questions, expected {len(expected) - 1} or {len(expected)}"


def _unsupported(message: str, lines: list[str]) -> EngineError:
    tail = "\n".join(f"    {line}" for line in lines[-10:] if line.strip())
    return EngineError(f"{message}; its last lines:\n{tail}")
