"""Faults a days-long live session meets, injected on purpose; after each one, and after every
restart, the invariants of harness.check_invariants must hold and the loop must carry on."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from harness import (
    ForkedRuns,
    Microscope,
    check_invariants,
    grow,
    run_command,
    run_ended_by_sigterm,
    run_once_here,
    warp_image_names,
)

from live2d.cli import main as cli_main
from live2d.history import particle_table, read_history
from live2d.mrc import read_images
from live2d.schedule import Settings
from live2d.session import Session
from live2d.simulate import MODEL, simulate, write_settings
from live2d.store import ParticleStore

SMALL = Settings(classes=3, particles_per_class=30, startup_cycles=1, refinement_cycles=1,
                 high_res_initial=30.0, high_res_final=16.0, threads=1, first_job_at=60,
                 update_every=100, stream_every=100, poll_seconds=0.5)
STAR = f"allparticles_{MODEL}.star"


# The first and the last log line of a cycle: "cycle 3 (job 2 seeded, startup 1): ..." and
# "cycle 3 (job 2, cycle 1 of 2) done in ...": the second has a comma after the job number.
# A cycle's first line ("cycle 3 (job 1 abinit, startup 2)", "cycle 9 (job 4, streaming
# update)") and its last ("cycle 3 (job 1, cycle 4 of 21) done in"): the group is "done" there.
CYCLE_LINE = re.compile(r"cycle \d+ \(job \d+(?: \w+,|, streaming update\)|, cycle \d+ of \d+\) "
                        r"(done))")


def inside_a_cycle(log: Path, offset: int) -> bool:
    """Whether the run that started when ``log`` was ``offset`` bytes long is inside a cycle:
    it began one and has not finished it. (Not the scratch folder: a killed run leaves it.)"""
    if not log.exists():
        return False
    with open(log, "rb") as handle:
        handle.seek(offset)
        ends = CYCLE_LINE.findall(handle.read().decode(errors="replace"))
    return bool(ends) and ends[-1] == ""


# A job of three cycles (start, one startup, one refinement): the kills land in its first cycles
# whatever its length, and the last run then finishes it in seconds instead of six cycles.
SHORT_JOB = ("--startup-cycles", "1", "--refinement-cycles", "1")


def test_eight_sigkills_while_warp_collects_lose_and_duplicate_nothing(tmp_path):
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    log = out / "live2d.log"
    grow(warp, 60)
    microscope = Microscope(warp, 60, 400, interval=0.5)
    microscope.start()
    rng = np.random.default_rng(7)
    kills = {"inside a cycle": 0, "importing or waiting": 0}
    # Eight kills: four at random moments (opening the session, import while Warp writes, a
    # cycle, waiting) and four aimed inside a cycle, each restart from the state the kills
    # before it left. Twenty covered no other case and took longer. The runs are forks of a
    # Python that imported Live2D once: a fresh one's seconds of imports lose nothing to kill.
    runs = ForkedRuns()
    for attempt in range(8):
        offset = log.stat().st_size if log.exists() else 0
        pid = runs.start(warp, *SHORT_JOB)
        if attempt % 2:
            time.sleep(rng.uniform(0.2, 2.5))  # anywhere: opening, import, cycle, waiting
        else:  # aim inside a cycle: a moment after this run starts one, if it is still in it
            deadline = time.monotonic() + 20.0  # (a start cycle can end within that moment)
            while time.monotonic() < deadline:
                if not inside_a_cycle(log, offset):
                    time.sleep(0.02)
                    continue
                time.sleep(rng.uniform(0.0, 0.15))
                if inside_a_cycle(log, offset):
                    break
        kills["inside a cycle" if inside_a_cycle(log, offset) else "importing or waiting"] += 1
        runs.kill(pid)
        check_invariants(warp, out, complete=False)
    runs.close()
    microscope.join()
    # Once Warp stops, a last run imports the rest and finishes the job the kills interrupted
    # (here: it reads only what the killed runs left on disk).
    run_once_here(warp, *SHORT_JOB)
    figures = check_invariants(warp, out, complete=True)
    assert figures["particles"] == 400 and figures["cycles"] >= 3
    assert kills["inside a cycle"] >= 3, kills  # the kills really landed inside cycles


def automatic(session: Session) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=session.run_automatic, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def log_text(session: Session) -> str:
    return "\n".join(session.log_lines)


def test_broken_warp_files_are_reported_and_nothing_bad_is_imported(tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 100)
    session = Session(warp, settings=SMALL)
    session.import_new()
    star = warp / STAR
    good = star.read_text()
    check = lambda: check_invariants(warp, session.output_dir, complete=False)  # noqa: E731

    grow(warp, 140)
    grown = star.read_text()
    star.write_text(grown[: len(good) + 50])  # caught half-rewritten
    assert session.import_new().new_particles == 0 and session.store.count == 100
    star.write_text(grown + "this line is garbage\n")
    report = session.import_new()
    assert report.new_particles == 0 and "garbage" in log_text(session)
    check()
    star.write_text(grown.replace("rlnDefocusV", "rlnSomethingElse"))
    assert session.import_new().new_particles == 0 and "rlnDefocusV" in log_text(session)
    check()
    lines = grown.splitlines(keepends=True)
    header_end = max(i for i, line in enumerate(lines) if line.startswith("_rln"))
    lines.insert(header_end + 1, "_rlnNewWarpColumn #15\n")
    extended = "".join(line.rstrip("\n") + " 1\n" if "@particles" in line else line
                       for line in lines)
    star.write_text(extended)  # an unknown extra column, as a newer Warp might write
    report = session.import_new()  # same particles in the same order: no re-import needed
    assert not report.reimported and report.new_particles == 40
    check()

    stack = next((warp / "particles").glob("*.mrcs"))
    stack.unlink()  # a stack deleted after its rows were imported (read in place)
    assert session.run_job("abinit")
    assert check_invariants(warp.parent / "warp", session.output_dir, complete=False)[
        "cycles"] == 3
    assert "left out of this cycle" in log_text(session) and stack.name in log_text(session)
    session.close()


def test_settings_faults_and_a_vanishing_folder_do_not_stop_automatic_jobs(tmp_path):
    warp = tmp_path / "warp"
    grow(warp, 80)
    session = Session(warp, settings=SMALL)
    thread, stop = automatic(session)
    wait_for(lambda: len(session.history) >= 3)

    settings = warp / "previous.settings"
    good = settings.read_bytes()
    settings.write_bytes(good[:150])  # mid-write
    time.sleep(0.6)
    settings.write_bytes(b"<Settings><Param Name=")  # malformed
    time.sleep(0.6)
    settings.write_bytes(good)
    hidden = warp.rename(tmp_path / "away")  # the network share hiccups
    time.sleep(0.8)
    hidden.rename(warp)
    grow(warp, 200)
    wait_for(lambda: session.store.count == 200 and session.job is None and
             len(session.history) >= 4, timeout=60)  # ab initio, then an update
    assert thread.is_alive()
    text = log_text(session)
    assert "cannot be parsed" in text and "next poll" in text
    check_invariants(warp, session.output_dir, complete=True)

    write_settings(warp, BoxSize=36)  # the user changed Warp's box: start again
    grow(warp, 200)  # (Warp would re-export at the new box; the simulation keeps 32 px)
    wait_for(lambda: "box size changed" in log_text(session), timeout=30)
    stop.set()
    session.request_stop(hard=True)
    thread.join(timeout=60)
    assert session.settings.mode == "abinit" or session.latest_cycle() is None
    session.close()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True)
    return result.returncode == 0


def test_a_full_output_disk_loses_nothing_and_the_session_carries_on(tmp_path):
    out = tmp_path / "small_disk"
    if not _mount_tmpfs(out, "700k"):
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs): disk-full test not run")
    try:
        warp = tmp_path / "warp"
        # The store reads Warp's stacks in place: 4,000 particles' star rows and the cycles'
        # files are more than the disk holds.
        grow(warp, 4000)
        session = Session(warp, out, settings=SMALL)
        thread, stop = automatic(session)
        wait_for(lambda: "No space left" in log_text(session), timeout=60)
        full = [line for line in session.log_lines if "No space left" in line]
        assert all(str(out) in line for line in full), full  # each says where to free space
        check_invariants(warp, out, complete=False)
        assert session.store.count < 4000
        subprocess.run(["mount", "-o", "remount,size=40m", str(out)], check=True)
        wait_for(lambda: session.store.count == 4000 and len(session.history) >= 3, timeout=90)
        stop.set()
        session.request_stop(hard=True)
        thread.join(timeout=60)
        check_invariants(warp, out, complete=True)
        session.close()
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def test_a_failing_engine_keeps_the_last_good_cycle_and_gives_up_cleanly(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cistem_standin import make_bin_dir

    bin_dir = make_bin_dir(tmp_path / "bin")
    warp = tmp_path / "warp"
    grow(warp, 100)
    session = Session(warp, settings=SMALL, engine="cistem", cistem_bin=str(bin_dir))
    assert session.run_job("abinit")
    good = len(session.history)
    for mode in ("exit", "no-output", "nan"):  # nan: NaN classes must not be published
        monkeypatch.setenv("CISTEM_STANDIN_FAIL", f"merge2d:{mode}")
        thread, stop = automatic(session)
        session.start_job("seeded")
        wait_for(lambda: "giving up job" in log_text(session), timeout=90)
        stop.set()
        session.request_stop()
        thread.join(timeout=60)
        assert len(session.history) == good and session.job is None
        check_invariants(warp, session.output_dir, complete=True)
        session.clear_stop()
        session.log_lines.clear()
    monkeypatch.delenv("CISTEM_STANDIN_FAIL")
    assert session.run_job("seeded")  # once the engine works again, the loop carries on
    assert len(session.history) > good
    session.close()


def _poison(star: Path, values: dict[int, tuple[str, str]]) -> list[str]:
    """Write ``values`` (row number -> (column, value)) into Warp's star, as a Warp whose CTF
    fit blew up would; returns the image names of those rows."""
    lines = star.read_text().split("\n")
    labels = [line.split()[0][1:] for line in lines if line.startswith("_rln")]
    data = [i for i, line in enumerate(lines) if "@" in line]
    names = []
    for number, (column, value) in values.items():
        fields = lines[data[number - 1]].split()
        fields[labels.index(column)] = value
        lines[data[number - 1]] = "  ".join(fields)
        names.append(fields[labels.index("rlnImageName")])
    star.write_text("\n".join(lines))
    return names


def _run_once(warp: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(run_command(warp, "--once"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def status_of(out: Path, capsys) -> str:
    """What `live2d status OUT` prints on stdout (run here: a live2d process would spend
    seconds importing)."""
    capsys.readouterr()
    assert cli_main(["status", str(out)]) == 0
    return capsys.readouterr().out


def _latest_cycle_is_finite(out: Path) -> None:
    latest = read_history(out)[-1]
    assert np.isfinite(read_images(out / latest.classes)).all()
    table = particle_table(out, latest)
    assert np.isfinite(table.select_dtypes("number").to_numpy(dtype=float)).all()


def test_non_finite_defocus_rows_are_refused_alone_and_the_session_goes_on(tmp_path, capsys):
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 100)
    star = warp / STAR
    bad = {3: ("rlnDefocusU", "inf"), 10: ("rlnDefocusV", "1e308"), 17: ("rlnDefocusU", "nan"),
           30: ("rlnVoltage", "-inf")}
    refused = _poison(star, bad)
    capsys.readouterr()
    run_once_here(warp)
    said = capsys.readouterr().err
    for column, value in bad.values():  # each named once, with its column and the file
        assert said.count(f"{column} is") == sum(c == column for c, _ in bad.values())
        assert said.count(f"e.g. {f'{float(value):g}'!r}") == 1
    assert STAR in said and "the other rows are imported" in said
    check_invariants(warp, out, complete=False)
    names = ParticleStore(out).read_table()["ORIGNAME"]
    assert names.tolist() == [n for n in warp_image_names(warp) if n not in refused]
    _latest_cycle_is_finite(out)
    assert "left out: 4 particle rows refused" in status_of(out, capsys)

    grow(warp, 160)  # Warp rewrites its star whole: the same bad rows, and new ones
    _poison(star, bad)
    second = _run_once(warp)  # a restart: the bad rows are neither reported nor re-imported
    assert "refused" not in second.stderr and "re-importing" not in second.stderr
    names = ParticleStore(out).read_table()["ORIGNAME"]
    assert names.tolist() == [n for n in warp_image_names(warp) if n not in refused]
    assert len(names) == 156 and len(read_history(out)) > 7
    _latest_cycle_is_finite(out)


def test_a_store_poisoned_by_an_earlier_version_no_longer_fails_every_cycle(tmp_path):
    """Before rows were refused, an inf defocus reached the store and a NaN the published
    particle parameters: every cycle then failed, restart or not."""
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 100)
    run_once_here(warp)
    stored = out / "particles.star"
    text = stored.read_text()
    row = text.split("\n")[[i for i, line in enumerate(text.split("\n"))
                             if line.strip()[:1].isdigit()][4]]
    fields = row.split()
    poisoned = row.replace(f" {fields[4]} ", f" {'inf':>{len(fields[4])}} ", 1)
    stored.write_text(text.replace(row, poisoned, 1))  # same length: the store's commit holds
    latest = out / read_history(out)[-1].star
    lines = latest.read_text().split("\n")
    index = [i for i, line in enumerate(lines) if line.strip()[:1].isdigit()][2]
    shift = lines[index].split()[2]
    lines[index] = lines[index].replace(f" {shift} ", f" {'nan':>{len(shift)}} ", 1)
    latest.write_text("\n".join(lines))
    grow(warp, 140)
    result = _run_once(warp)
    assert "non-finite or implausible parameters" in result.stderr
    assert "cannot be used" in result.stderr  # the previous cycle's NaN, named
    check_invariants(warp, out, complete=True)
    _latest_cycle_is_finite(out)


# --------------------------------------------------------------- stacks on a changing file system
def stacks_of(warp: Path) -> list[Path]:
    return sorted((warp / "particles").glob("*.mrcs"))


def read_log(out: Path) -> str:
    path = out / "live2d.log"
    return path.read_text() if path.exists() else ""


def test_touched_stacks_keep_their_particles(tmp_path):
    """A viewer mapping stacks r+ (pwem's MRC reader), rsync or a backup changes their time and
    not their bytes: every particle stays in the next cycles."""
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 100)
    run_once_here(warp)
    for stack in stacks_of(warp):
        before = stack.read_bytes()
        with mrcfile.mmap(stack, mode="r+", permissive=True):
            pass  # what a viewer does: the header is written back unchanged on closing
        later = stack.stat().st_mtime_ns + 5_000_000_000
        os.utime(stack, ns=(later, later))
        assert stack.read_bytes() == before
    grow(warp, 160)  # a job is due: it classifies the touched stacks' particles
    second = subprocess.run(run_command(warp, "--once"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    latest = read_history(out)[-1]
    assert "left out" not in read_log(out)
    assert latest.particles == 160 and latest.left_out == 0
    check_invariants(warp, out, complete=True)


def test_a_stack_cut_short_during_a_cycle_leaves_its_particles_out_and_the_run_goes_on(
        tmp_path, capsys):
    """Warp re-processing a movie truncates its stack while a cycle reads it: no SIGBUS, the
    cycle is tried again without those particles, and the log says so."""
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    # Enough particles that a refinement cycle reads for a second or more.
    simulate(warp, particles=1200, per_micrograph=60, box=64, pixel_size=2.0, snr=0.5, views=3)
    last = stacks_of(warp)[-1]  # read last in every cycle: after the cut
    with run_ended_by_sigterm(warp, "--startup-cycles", "1", "--refinement-cycles", "4") as process:
        wait_for(lambda: "refinement 1)" in read_log(out), timeout=180)
        # The cycle has checked the stacks and is reading them: the last one's images come at
        # its end (the noise estimate may have read some already).
        time.sleep(0.1)
        os.truncate(last, 1024)
        wait_for(lambda: "job 1 finished" in read_log(out) or process.poll() is not None,
                 timeout=180)
        assert process.poll() is None, f"live2d run died ({process.returncode})"
        log = read_log(out)
        assert "60 particles are left out of this cycle" in log and last.name in log
        assert "changed while it was read" in log  # the cut landed inside a cycle's reads
        history = read_history(out)
        assert history[-1].left_out == 60 and history[-1].particles == 1200
    figures = check_invariants(warp, out, complete=True)  # left out, not lost
    assert figures["particles"] == 1200
    assert "left out 60 of its 1200 particles" in status_of(out, capsys)


def test_a_fifo_in_place_of_a_stack_is_skipped_and_sigterm_still_stops_the_run(tmp_path):
    """A non-regular file where a stack should be: opening it must not block (a FIFO would
    hang the import in the kernel, deaf to SIGTERM); its particles are skipped, the others
    imported."""
    warp, out = tmp_path / "warp", tmp_path / "warp" / "classification"
    grow(warp, 100)
    fifo = stacks_of(warp)[2]
    fifo.unlink()
    os.mkfifo(fifo)
    with run_ended_by_sigterm(warp):
        wait_for(lambda: "imported 80 particles" in read_log(out), timeout=120)
        assert "is a FIFO, not a regular file" in read_log(out)
    names = ParticleStore(out).read_table()["ORIGNAME"]
    assert len(names) == 80 and not any(fifo.name in name for name in names)


LIMITED_IMPORT = """
import resource, sys
from live2d.importer import Importer
from live2d.store import ParticleStore
# What this process has mapped, plus 512 MiB: far less than the 2 GiB the header asks for.
mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
              if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**29, mapped + 2**29))
report = Importer(sys.argv[1], ParticleStore(sys.argv[2]), copy_images=sys.argv[3] == "copy").poll()
print(report.new_particles)
print("\\n".join(report.messages))
"""


@pytest.mark.parametrize("copy", ["copy", "in place"])
def test_a_header_claiming_a_huge_extended_header_or_a_text_file_is_skipped_without_allocating(
        tmp_path, copy):
    """A stack whose header announces a 2 GiB extended header, and one that is a link to a text
    file: skipped with a message on the first poll, within a memory limit; the good stacks are
    imported."""
    warp = tmp_path / "warp"
    grow(warp, 100)
    stacks = stacks_of(warp)
    with open(stacks[1], "r+b") as handle:  # nsymbt: bytes 92-95
        handle.seek(92)
        handle.write(np.int32(2**31 - 1).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("Warp session notes\n" * 400)
    stacks[3].unlink()
    stacks[3].symlink_to(text)
    result = subprocess.run([sys.executable, "-c", LIMITED_IMPORT, str(warp),
                             str(tmp_path / "out"), copy], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported, *messages = result.stdout.splitlines()
    assert int(imported) == 60
    said = "\n".join(messages)
    assert said.count("skipping the 20 particles of") == 2
    assert "2147483647-byte extended header" in said and stacks[1].name in said
    assert "not an MRC stack" in said and stacks[3].name in said
