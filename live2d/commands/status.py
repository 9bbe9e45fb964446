"""Print the history of a Live2D session as a table (DIR: the output folder or the Warp folder)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from live2d.history import CycleRecord, read_class_table, read_history
from live2d.output_folder import (
    DEFAULT_OUTPUT,
    IMPORT_STATE,
    SESSION_STATE,
    STORE_STATE,
    find_output_folder,
)

CYCLES_SHOWN = 30  # the latest cycles listed; history.jsonl keeps every one


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output or Warp folder")


def find_state(folder: Path, command: str | None = None) -> Path | None:
    """The session.json of DIR (the output folder or the Warp folder); None, saying so on
    stderr when ``command`` is given, if there is none."""
    found = find_output_folder(folder)
    if found is not None:
        return found / SESSION_STATE
    if command:
        print(f"live2d {command}: no {SESSION_STATE} in {folder} or {folder / DEFAULT_OUTPUT}",
              file=sys.stderr)
    return None


def print_classes(folder: Path, history: list[CycleRecord]) -> None:
    """The latest cycle's classes: resolution estimate, score and why, good ones marked."""
    latest = next((c for c in reversed(history) if c.class_table), None)
    if latest is None:
        return
    try:
        table = read_class_table(folder, latest)
    except (OSError, ValueError):
        return
    if table is None:
        return
    from live2d.errors import SelectionError
    from live2d.selection import SelectionState, proposed

    try:
        state = SelectionState.load(folder)
    except SelectionError:
        state = SelectionState()
    proposal = proposed(latest, state)
    good = [c for c in table if c["number"] in proposal]
    curation = class_curation(folder, latest)
    print(f"classes of cycle {latest.number} (resolution: half-set FRC 0.143, a guide; "
          f"score 0 junk .. 1 good): {len(good)} proposed good"
          + (f" by the rule learned from {len(state.examples)} marks" if state.examples else "")
          + f", {sum(c['particles'] for c in good)} particles"
          + (f", {sum(curation[c['number']].kept for c in good)} kept by the particle "
             "curation" if curation else ""))
    for c in table:
        resolution = "-" if c["resolution"] is None else \
            f"{'≤' if c['at_limit'] else ' '}{c['resolution']:.1f}"
        mark = "good" if c["number"] in proposal else "junk"
        curated = curation.get(c["number"]) if mark == "good" else None  # junk goes whole
        rule = f"; {curated.rule()}" if curated and curated.rule() else ""
        print(f"  {c['number']:>4} {c['particles']:>8} {resolution:>7} Å {c['score']:5.2f} "
              f"{mark}  {c['reason']}{rule}")


def class_curation(folder: Path, record: CycleRecord) -> dict:
    """Per class number, the particle curation of ``record`` as the session's settings make it
    (live2d.curation.session_cycle_curation); empty where there is none."""
    from live2d.curation import session_cycle_curation

    curation = session_cycle_curation(folder, record)
    return curation.by_number() if curation is not None else {}


def print_disk(folder: Path, history: list[CycleRecord]) -> None:
    from live2d.disk import disk_use

    try:
        store = json.loads((folder / STORE_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        store = {}
    classes = len(history[-1].class_counts) if history else 0
    use = disk_use(folder, int(store.get("count", 0)), classes, int(store.get("box", 0)),
                   store.get("images", "copy") == "copy")
    print(f"disk: {use.describe()} ({folder})")


def print_exports(folder: Path) -> None:
    from live2d.errors import SelectionError
    from live2d.selection import SelectionState

    try:
        exports = SelectionState.load(folder).exports
    except SelectionError:
        return
    for export in exports[-3:]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(export["time"]))
        print(f"exported {when}: {export['particles']} particles of cycle {export['cycle']} "
              f"(classes {', '.join(map(str, export['classes']))}) to {export['file']}")


def print_left_out(folder: Path) -> None:
    """Warp's rows not imported on purpose, so that the count of particles adds up."""
    try:
        state = json.loads((folder / IMPORT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    refused, skipped = len(state.get("refused", [])), len(state.get("skipped", []))
    if refused or skipped:
        print(f"left out: {refused} particle rows refused for non-finite or implausible values, "
              f"{skipped} stacks skipped as never finished (the log says which)")


def print_alerts(folder: Path) -> None:
    """The alerts in force (live2d.alerts), oldest first, each with when it fired."""
    from live2d.alerts import read_alerts

    for alert in read_alerts(folder):
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(alert.since))
        print(f"ALERT since {since}: {alert.message}")


def print_notify(state: dict) -> None:
    """Where the alerts are sent (live2d.notify), webhooks by host only: their paths are their
    secrets, and a status is pasted into chats and tickets."""
    from live2d.notify import shown

    targets = state.get("notify") or []
    if targets:
        print(f"alerts sent to: {', '.join(shown(target) for target in targets)}"
              + (f" (mail through {state['smtp']})" if state.get("smtp") else ""))


def print_forecast(folder: Path) -> None:
    """Good particles per hour, the time to the target and whether new views appear, by the
    latest scored cycle (nothing before there is one)."""
    from live2d.collection_yield import YieldError, latest_scored_cycle, score_particles
    from live2d.errors import SelectionError
    from live2d.forecast import forecast, particle_times
    from live2d.output_folder import OutputFolder
    from live2d.session_state import read_state
    from live2d.store import read_committed_table

    state = read_state(OutputFolder(folder))
    if state is None:
        return
    try:
        record = latest_scored_cycle(folder)
        table = read_committed_table(folder)
        particles = score_particles(folder, table, record)
    except (YieldError, SelectionError, OSError, ValueError):
        return  # no scored cycle yet, or the store is being replaced: nothing to forecast
    times, what = particle_times(table)
    for line in forecast(particles, times, state.settings.target_good_particles,
                         what).lines():
        print(line)


def print_keeping_up(folder: Path, history: list[CycleRecord]) -> None:
    """For a session that streams: particles in the classes, the backlog, the latency."""
    from live2d.streaming import session_keeping_up

    try:
        state = session_keeping_up(folder, history)
    except (OSError, ValueError):
        return  # the store is being replaced: nothing to say until it is
    for line in state.lines() if state else []:
        print(line)


def main(args: argparse.Namespace) -> int:
    path = find_state(args.dir, "status")
    if path is None:
        return 1
    state = json.loads(path.read_text(encoding="utf-8"))
    history = read_history(path.parent)
    print(f"session {path.parent}  (Warp folder {state['warp_dir']})")
    header = (f"{'cycle':>5} {'job':>4} {'type':<7} {'block':<10} {'in job':>7} {'res Å':>6} "
              f"{'used':>5} {'particles':>9} {'classes':>7} {'largest':>7} {'p/s':>7}  finished")
    print(header)
    if len(history) > CYCLES_SHOWN:  # a streaming session has an update every few minutes
        print(f"  ... {len(history) - CYCLES_SHOWN} earlier cycles (history.jsonl has them all)")
    for c in history[-CYCLES_SHOWN:]:
        counts = c.class_counts
        finished = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.finished))
        print(f"{c.number:>5} {c.job:>4} {c.job_type:<7} {c.block:<10} "
              f"{c.job_cycle:>3}/{c.job_cycles:<3} {c.high_res:>6.1f} "
              f"{c.fraction:>5.0%} {c.particles:>9} {sum(1 for n in counts if n):>7} "
              f"{max(counts, default=0):>7} {c.particles_per_second:>7.0f}  {finished}")
    if history and history[-1].left_out:
        latest = history[-1]
        print(f"cycle {latest.number} left out {latest.left_out} of its "
              f"{latest.particles} particles: their source stacks changed or vanished since "
              "import (live2d.log names them)")
    print_classes(path.parent, history)
    print_keeping_up(path.parent, history)
    print_alerts(path.parent)
    print_notify(state)
    print_forecast(path.parent)
    print_exports(path.parent)
    print_left_out(path.parent)
    print_disk(path.parent, history)
    job = state.get("job")
    if job:
        print(f"unfinished: job {job['number']} ({job['job_type']}) at cycle "
              f"{job['next_index'] + 1} of {len(job['plan'])}")
    else:
        print(f"next job: {state['settings']['mode']}")
    return 0
