"""Disk use in sight: measured per session, with a warning before the disk fills."""

import collections
import errno
import os

import pytest

from live2d import disk
from live2d.alerts import DISK_LOW, read_alerts
from live2d.atomic import atomic_write_text, naming
from live2d.schedule import Settings
from live2d.session import Session
from live2d.simulate import simulate

SMALL = {"classes": 4, "particles_per_class": 40, "startup_cycles": 2, "refinement_cycles": 1,
         "high_res_initial": 30.0, "high_res_final": 12.0, "threads": 1, "first_job_at": 200}


def test_disk_use_counts_the_folder_and_what_the_next_cycles_need(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 3000)
    (tmp_path / "y.bin").write_bytes(b"0" * 1000)
    use = disk.disk_use(tmp_path, particles=10, classes=2, box=16)
    assert use.used == 4000 and use.per_particle == 400.0
    assert use.next_cycle == 10 * disk.STAR_BYTES_PER_PARTICLE + 2 * (4 * 256 +
                                                                     disk.THUMBNAIL_BYTES)
    assert not use.low
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda _: usage(10**6, 0, use.next_cycle))
    low = disk.disk_use(tmp_path, particles=10, classes=2, box=16)
    assert low.low and "low, the next 5 cycles need about" in low.describe()


def test_a_session_alerts_once_when_free_space_runs_low(tmp_path, monkeypatch):
    warp = tmp_path / "warp"
    simulate(warp, particles=240, per_micrograph=60, box=48, pixel_size=3.0, snr=0.5, views=4)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda _: usage(10**9, 0, 50_000))
    events = []
    session = Session(warp, engine="builtin", settings=Settings(**SMALL))
    session.add_listener(events.append)
    try:
        session.import_new()
        session.run_job()
    finally:
        session.close()
    log = (warp / "classification" / "live2d.log").read_text()
    assert log.count("Disk space low in ") == 1  # said once, not every cycle
    assert [a.key for a in read_alerts(warp / "classification")] == [DISK_LOW]  # in force
    disk_events = [e["disk"] for e in events if e["type"] == "disk"]
    assert len(disk_events) >= 4 and all(e["low"] and e["free"] == 50_000 for e in disk_events)
    assert session.disk.used > 0 and "KB per particle" in disk_events[-1]["text"]


def test_a_full_disk_names_the_file_that_could_not_be_written(tmp_path, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write or fsync raises it

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "state.json"
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write_text(target, "{}")
    assert caught.value.filename == str(target) and str(target) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    with pytest.raises(OSError) as caught, naming(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(OSError) as caught, naming(tmp_path):
        raise OSError(errno.EIO, "Input/output error")  # a read's error is not a full disk
    assert caught.value.filename is None
