"""The questions cisTEM 2's refine2d and merge2d ask on stdin, and the answers Live2D gives them.

Run with no arguments and stdin a pipe, the programs are in "scripted mode": each prompt text is
printed padded to 50 characters and followed by `` : ``, one line is read, and a valid answer is
echoed after it. A blank line or an answer of the wrong type, out of range or naming a missing
must-exist file ends the program with status 255. So every answer is given, in order, already
checked here against the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from live2d.engines.base import CycleParams
from live2d.errors import EngineError

REFINE2D_PROMPTS: tuple[str, ...] = (
    "Input particle images",
    "Input cisTEM star file",
    "Input class averages",
    "Output cisTEM star file",
    "Output class averages",
    "Number of classes (>0 = initialize classes)",
    "First particle to refine (0 = first in stack)",
    "Last particle to refine (0 = last in stack)",
    "Percent of particles to use (1 = all)",
    "Pixel size of class averages (A)",
    "Mask radius (A)",
    "Low resolution limit (A)",
    "High resolution limit (A)",
    "Angular step (0.0 = set automatically)",
    "Search range (A) (0.0 = max)",
    "Tuning parameter: smoothing factor",
    "Tuning parameter: padding factor for interpol.",
    "Normalize particles",
    "Invert particle contrast",
    "Exclude images with blank edges",
    "Automatically mask class averages",
    "Automatically center class averages",
    "Dump intermediate arrays (merge later)",
    "Output dump filename for intermediate arrays",
    "Max. threads to use for calculation",  # asked only by builds with OpenMP
)
REFINE2D_PROMPTS_WITHOUT_OPENMP = REFINE2D_PROMPTS[:-1]
MERGE2D_PROMPTS: tuple[str, ...] = (
    "Output class averages",
    "Seed for input dump filenames for intermediate arrays",
    "Number of dump files",
)

NOWHERE = "/dev/null"  # refine2d neither reads (init mode) nor writes a file of this name
PADDING_EXPONENT = 2  # padding = 2^value × binned box; cisTEM's GUI always uses 2
PROMPT_WIDTH = 50
MAX_ANSWER_LENGTH = 999  # answers are read with getline into a 1000-byte buffer

_VERSION = re.compile(r"^\s*Version : (\S+)")
_LIBRARY_VERSION = re.compile(r"^\s*Library Version : (\S+)")


@dataclass(frozen=True)
class Refine2DRun:
    """One refine2d job: what it reads and writes and which particles it takes."""

    stack: Path
    star_in: Path
    classes_out: Path
    dump_file: Path  # asked for even when nothing is dumped
    first: int  # 1-based, inclusive
    last: int
    n_classes_init: int = 0  # > 0: random start with this many classes; 0: refine classes_in
    classes_in: Path | None = None
    star_out: Path | None = None
    dump: bool = False


def refine2d_answers(run: Refine2DRun, params: CycleParams, openmp: bool) -> list[str]:
    """The answers to refine2d's prompts, in order: 25, or 24 for a build without OpenMP."""
    init = run.n_classes_init > 0
    if not init and run.classes_in is None:
        raise EngineError("refine2d in refine mode needs input class averages")
    if run.first < 1 or run.last < run.first:
        raise EngineError(f"refine2d particle range {run.first}-{run.last} is empty")
    check_params(params)
    answers = [
        _path(run.stack),
        _path(run.star_in),
        NOWHERE if init or run.classes_in is None else _path(run.classes_in),
        NOWHERE if init or run.star_out is None else _path(run.star_out),
        _path(run.classes_out),
        str(run.n_classes_init),
        str(run.first),
        str(run.last),
        _number(params.fraction),
        _number(params.pixel_size),
        _number(params.mask_radius),
        _number(params.low_res),
        # cisTEM raises a limit below Nyquist to 2 × pixel itself; doing it here keeps the
        # logged answer equal to the limit actually used.
        _number(max(params.high_res, 2.0 * params.pixel_size)),
        _number(params.angular_step),
        _number(params.search_range),
        _number(params.smoothing),
        str(PADDING_EXPONENT),
        _yes_no(params.normalize),
        _yes_no(params.invert_contrast),
        _yes_no(params.exclude_blank_edges),
        # auto-mask and auto-center act on input classes; a random start has none.
        _yes_no(params.auto_mask and not init),
        _yes_no(params.auto_center and not init),
        _yes_no(run.dump),
        _path(run.dump_file),
    ]
    if openmp:
        answers.append("1")  # one thread per slice: slices are the parallelism
    return answers


def merge2d_answers(classes_out: Path, dump_seed: Path, dump_files: int) -> list[str]:
    """merge2d's three answers; it reads ``<seed minus extension><i>.<extension>``, i = 1…n."""
    if dump_files < 1:
        raise EngineError("merge2d needs at least one dump file")
    return [_path(classes_out), _path(dump_seed), str(dump_files)]


def check_params(params: CycleParams) -> None:
    """Raise EngineError naming the first parameter refine2d would reject or misuse."""
    values = {
        "pixel_size": params.pixel_size,
        "mask_radius": params.mask_radius,
        "high_res": params.high_res,
        "low_res": params.low_res,
        "angular_step": params.angular_step,
        "search_range": params.search_range,
        "smoothing": params.smoothing,
        "fraction": params.fraction,
    }
    for name, value in values.items():
        if not math.isfinite(value):
            raise EngineError(f"cisTEM parameter {name} = {value} is not a finite number")
    problems = [
        ("pixel_size", params.pixel_size > 0, "must be > 0"),
        ("mask_radius", params.mask_radius > 0, "must be > 0"),
        ("high_res", params.high_res > 0, "must be > 0"),
        ("low_res", params.low_res >= 0, "must be >= 0"),
        ("angular_step", params.angular_step >= 0, "must be >= 0"),
        ("search_range", params.search_range >= 0, "must be >= 0"),
        ("smoothing", params.smoothing >= 0.01, "must be >= 0.01"),
        ("fraction", 0 < params.fraction <= 1, "must be in (0, 1]"),
    ]
    for name, ok, rule in problems:
        if not ok:
            raise EngineError(f"cisTEM parameter {name} = {values[name]} {rule}")


def parse_banner(lines: Iterable[str]) -> tuple[str | None, str | None]:
    """(program version, library version) from a cisTEM banner, None where absent."""
    version = library = None
    for line in lines:
        if version is None and (match := _VERSION.match(line)):
            version = match.group(1)
        elif library is None and (match := _LIBRARY_VERSION.match(line)):
            library = match.group(1)
    return version, library


def echoed_prompts(lines: Iterable[str]) -> list[str]:
    """The prompt texts a scripted-mode run printed, in order.

    A prompt is padded to 50 characters (a longer one is not padded) and followed by " : ";
    no prompt text holds " : ", and the banner's " : " come before column 50."""
    prompts = []
    for line in lines:
        end = line.find(" : ")
        if end >= PROMPT_WIDTH and line[:end].strip():
            prompts.append(line[:end].rstrip())
    return prompts


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def _number(value: float) -> str:
    # repr is exact and always starts with a digit (or "-digit"), as cisTEM's parser demands.
    return repr(float(value))


def _path(path: Path) -> str:
    text = str(path)
    if not text or "\n" in text or "\r" in text:
        raise EngineError(f"cisTEM cannot be given the file name {text!r}")
    if len(text) > MAX_ANSWER_LENGTH:
        raise EngineError(f"file name longer than cisTEM accepts ({MAX_ANSWER_LENGTH}): {text}")
    if text[0] in "*?":  # "*" exits the program, "?" asks for help
        raise EngineError(f"cisTEM cannot be given a file name starting with {text[0]}: {text}")
    return text
