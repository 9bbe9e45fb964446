"""The particles of chosen classes as a RELION 3.1 particle star, for RELION, cryoSPARC or Scipion.

The star points at the source's own stacks (Warp's, WarpTools', a RELION job's), not at Live2D's
copy: ``rlnImageName`` absolute by default, or relative to a RELION project folder
(``relative_to``), since RELION resolves paths from the folder it runs in. It carries what
re-extraction and refinement need: micrograph and coordinates, CTF, and the cycle's 2D alignment
(``rlnAnglePsi``, ``rlnOriginX/YAngst``: RELION's convention is cisTEM's, as
``relion_stack_create --apply_transformation`` confirms), with pixel size, box and microscope in
the optics table. Written with ``starfile``, atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import starfile

from live2d.atomic import file_kind, replacing
from live2d.curation import curate_cycle, session_curation
from live2d.errors import SelectionError
from live2d.history import (
    CycleRecord,
    particle_results_kept,
    particle_table,
    read_history,
    thinned_words,
)
from live2d.layouts import find_stack
from live2d.output_folder import SESSION_STATE, STORE_STATE
from live2d.selection import SelectionState, selected
from live2d.store import StoreError, read_committed_table
from live2d.warp import split_image_name


@dataclass(frozen=True)
class Exported:
    """A written export: the star, the cycle and classes it holds and how many particles."""

    path: Path
    cycle: int
    classes: list[int]
    particles: int
    curated: int = 0  # particles of those classes left out as junk (live2d.curation)


def export_particles(output_dir: str | os.PathLike, to: str | os.PathLike,
                     classes: str | list[int] = "auto", cycle: int | None = None,
                     relative_to: str | os.PathLike | None = None,
                     whole_classes: bool | None = None) -> Exported:
    """Write the particles of ``classes`` (``"auto"``: the session's selection) of ``cycle``
    (default: the latest classified) to the star ``to``: those the curation keeps
    (:mod:`live2d.curation`), or every one with ``whole_classes`` (None: as the session's
    *Curate particles* setting says). Raises SelectionError saying what is wrong: no such cycle
    or class, an empty selection, an output that cannot be written."""
    output_dir = Path(output_dir)
    state = json.loads((output_dir / SESSION_STATE).read_text(encoding="utf-8"))
    history = [r for r in read_history(output_dir) if r.block != "start"]
    if not history:
        raise SelectionError("no classified cycle yet: nothing to export")
    if cycle is None:
        record = history[-1]
    else:
        record = next((r for r in history if r.number == cycle), None)
        if record is None:
            numbers = ", ".join(str(r.number) for r in history[-5:])
            raise SelectionError(f"no classified cycle {cycle} (latest ones: {numbers})")
    if not particle_results_kept(output_dir, record):
        thinned = "" if record.averages_kept else f". {thinned_words(history, record)}"
        raise SelectionError(f"cycle {record.number}'s particles are not on disk any more "
                             f"(pruned, or replaced by a later streaming update){thinned}. "
                             f"Cycles whose particles are kept: "
                             f"{_numbers(exportable(output_dir, history))}")
    n_classes = len(record.class_counts)
    if classes == "auto":
        chosen = selected(record, SelectionState.load(output_dir))
    else:
        chosen = sorted({int(k) for k in classes})
        wrong = [k for k in chosen if not 1 <= k <= n_classes]
        if wrong:
            raise SelectionError(f"no class {wrong[0]}: cycle {record.number} has classes "
                                 f"1 to {n_classes}")
    if not chosen:
        raise SelectionError(f"no class of cycle {record.number} is selected: mark some "
                             "good, or name them (--classes 1,4,7)")
    table = particle_table(output_dir, record)
    # The committed rows only: a session running beside this export may be appending more
    # (a part line, even), and its commit point says where its finished rows end.
    try:
        store = read_committed_table(output_dir)
    except (StoreError, ValueError) as exc:  # replaced meanwhile (a re-import): said, not a trace
        raise SelectionError(f"the particle store cannot be read now ({exc}): try again in a "
                             "moment") from None
    in_classes = table["2DCLS"].isin(chosen).to_numpy()
    if not in_classes.any():
        raise SelectionError(f"classes {chosen} of cycle {record.number} hold no particles")
    curating, cut = session_curation(output_dir)
    if whole_classes is None:
        whole_classes = not curating
    chosen_rows = in_classes
    if not whole_classes:
        try:  # the first curation of a cycle reads its particles' images
            chosen_rows = in_classes & curate_cycle(output_dir, record, cut, table).keep
        except OSError as exc:
            raise SelectionError(f"the particles' images cannot be read for the particle "
                                 f"curation ({exc}): put the stacks back, or export whole "
                                 "classes (--whole-classes)") from None
    rows = table[chosen_rows]
    sources = store.iloc[rows["POS"].to_numpy() - 1].reset_index(drop=True)
    rows = rows.reset_index(drop=True)
    base = Path(relative_to).resolve() if relative_to else None
    names = _image_names(sources["ORIGNAME"], Path(state["warp_dir"]), state.get("star", ""),
                         base)
    pixel = float(rows["PSIZE"].iloc[0])
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnVoltage": [float(rows["VOLT"].iloc[0])],
        "rlnSphericalAberration": [float(rows["Cs"].iloc[0])],
        "rlnAmplitudeContrast": [float(rows["AmpC"].iloc[0])],
        "rlnImagePixelSize": [pixel], "rlnImageSize": [_box(output_dir)],
        "rlnImageDimensionality": [2],
    })
    particles = pd.DataFrame({
        "rlnImageName": names,
        "rlnMicrographName": sources.get("MICROGRAPH", pd.Series([""] * len(rows))).replace(
            "", "unknown").to_numpy(),
        "rlnCoordinateX": sources.get("ORIGX", 0.0),
        "rlnCoordinateY": sources.get("ORIGY", 0.0),
        "rlnDefocusU": rows["DF1"], "rlnDefocusV": rows["DF2"],
        "rlnDefocusAngle": rows["ANGAST"], "rlnPhaseShift": rows["PSHIFT"],
        "rlnAnglePsi": rows["PSI"], "rlnOriginXAngst": rows["SHX"],
        "rlnOriginYAngst": rows["SHY"], "rlnClassNumber": rows["2DCLS"],
        "rlnOpticsGroup": 1,
    })
    to = Path(to)
    _write_atomically(to, {"optics": optics, "particles": particles})
    exported = Exported(to.resolve(), record.number, chosen, len(particles),
                        int(in_classes.sum()) - len(particles))
    _record(output_dir, exported)
    return exported


def exportable(output_dir: str | os.PathLike, history: list[CycleRecord]) -> list[int]:
    """The cycles of ``history`` whose particles can be exported: the stars kept (the latest
    cycles', each job's last), and the streaming updates whose batches' rows are all kept,
    looked for from the latest back to the first that lacks some (a re-visit replaces the
    rows of older updates' batches: older ones than that rarely have them all)."""
    output_dir = Path(output_dir)
    numbers = [r.number for r in history
               if not r.streamed and particle_results_kept(output_dir, r)]
    for record in reversed([r for r in history if r.streamed]):
        if not particle_results_kept(output_dir, record):
            break
        numbers.append(record.number)
    return sorted(numbers)


def _numbers(numbers: list[int]) -> str:
    """``1, 4 to 7, 9`` (runs of three or more as a range); ``none`` for none."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{run[0]} to {run[-1]}" if len(run) > 2 else ", ".join(map(str, run))
                     for run in runs) or "none"


def _image_names(names: pd.Series, warp_dir: Path, star: str, base: Path | None) -> list[str]:
    """``N@stack`` with each stack where the import found it: relative names from the Warp
    folder, else the particle star's folder (as the importer resolves them)."""
    star_dir = (warp_dir / star).parent if star else warp_dir
    found: dict[str, str] = {}
    out = []
    for name in names:
        index, stack = split_image_name(str(name))
        if stack not in found:
            path = (find_stack(stack, warp_dir, star_dir) or warp_dir / stack).resolve()
            found[stack] = os.path.relpath(path, base) if base else str(path)
        out.append(f"{index + 1:06d}@{found[stack]}")
    return out


def _box(output_dir: Path) -> int:
    store = json.loads((output_dir / STORE_STATE).read_text(encoding="utf-8"))
    return int(store["box"])


def _write_atomically(path: Path, blocks: dict[str, pd.DataFrame]) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise SelectionError(f"cannot write {path}: {folder} is not a folder")
    try:
        mode = path.stat().st_mode  # a link is followed: a link to a device is refused too
    except FileNotFoundError:  # nothing there, or a dangling link: the export replaces it
        pass
    else:
        if not stat.S_ISREG(mode):
            # Renaming over it would replace a device node (as root), a FIFO or a folder.
            raise SelectionError(f"cannot write {path}: it is {file_kind(mode)}, not a regular "
                                 "file; name a new file or an earlier export")
    try:
        # Created by starfile's open(), so as readable as the umask allows (mkstemp's 0600
        # kept a cryoSPARC service account or the group out).
        with replacing(path) as temporary:
            starfile.write(blocks, temporary, overwrite=True)
    except OSError as exc:
        raise SelectionError(f"cannot write {path} ({exc.strerror}): choose another folder") \
            from None



def _record(output_dir: Path, exported: Exported) -> None:
    with SelectionState.updating(output_dir) as state:
        state.exports = [*state.exports[-19:], {
            "file": str(exported.path), "cycle": exported.cycle, "classes": exported.classes,
            "particles": exported.particles, "curated": exported.curated,
            "time": round(time.time(), 1)}]
