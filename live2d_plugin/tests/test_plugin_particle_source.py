"""ScipionParticleSource: a SetOfParticles imported into a session's store directly, with each
particle's Scipion id kept; MRC stacks named where they are, other formats converted; the set's
contrast and closing seen; a kill mid-poll losing nothing."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from pwem.emlib.image import ImageHandler
from pwem.objects import Acquisition, CTFModel, Particle, SetOfParticles
from pyworkflow.object import String

from live2d.sources import ParticleIntake
from live2d.store import ParticleStore
from live2d.warp import split_image_name
from live2d_plugin import particle_source
from live2d_plugin.convert import CONTRAST_ATTRIBUTE
from live2d_plugin.particle_source import ScipionParticleSource

BOX = 16
PIXEL_SIZE = 2.0


def write_stack(path: Path, first: int, n: int) -> None:
    """Image i of the stack holds the value first + i."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.stack([np.full((BOX, BOX), first + i, dtype=np.float32)
                               for i in range(n)]))
        mrc.voxel_size = PIXEL_SIZE


def particle_set(folder: Path, contrast: str = "white") -> tuple[Path, list[int]]:
    """An open set of 6 particles of an MRC stack, then 3 of a SPIDER stack (values 0..8);
    returns its sqlite and the ids."""
    write_stack(folder / "a.mrcs", 0, 6)
    write_stack(folder / "b_source.mrcs", 6, 3)
    handler = ImageHandler()
    for index in range(1, 4):
        handler.convert((index, str(folder / "b_source.mrcs")), (index, str(folder / "b.stk")))
    sqlite = folder / "particles.sqlite"
    particles = SetOfParticles(filename=str(sqlite))
    particles.setSamplingRate(PIXEL_SIZE)
    acquisition = Acquisition(voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.1)
    particles.setAcquisition(acquisition)
    particles.setHasCTF(True)
    locations = [(i, str(folder / "a.mrcs")) for i in range(1, 7)] + \
                [(i, str(folder / "b.stk")) for i in range(1, 4)]
    for number, location in enumerate(locations):
        particle = Particle(location=location)
        particle.setSamplingRate(PIXEL_SIZE)
        particle.setAcquisition(acquisition)
        ctf = CTFModel()
        ctf.setStandardDefocus(15000.0 + number, 14000.0, 30.0)
        particle.setCTF(ctf)
        setattr(particle, CONTRAST_ATTRIBUTE, String(contrast))
        particles.append(particle)
    particles.setStreamState(SetOfParticles.STREAM_OPEN)
    particles.write()
    ids = [p.getObjId() for p in particles]
    particles.close()
    return sqlite, ids


def close_set(sqlite: Path) -> None:
    particles = SetOfParticles(filename=str(sqlite))
    particles.loadAllProperties()
    particles.setStreamState(SetOfParticles.STREAM_CLOSED)
    particles.write()
    particles.close()


def source_for(sqlite: Path, out: Path, copy_images: bool = False) -> ScipionParticleSource:
    return ScipionParticleSource(sqlite, ParticleStore(out / "store"), out / "stacks",
                                 mask_radius=None, copy_images=copy_images)


def pixels(name: str) -> float:
    index, stack = split_image_name(name)
    with mrcfile.open(stack, permissive=True) as mrc:
        return float(mrc.data[index][0, 0])


def test_the_sets_particles_are_imported_with_their_ids_and_converted_stacks(tmp_path):
    sqlite, ids = particle_set(tmp_path)
    source = source_for(sqlite, tmp_path)
    report = source.poll()
    assert (report.new_particles, report.total, report.closed) == (9, 9, False)
    table = source.store.read_table()
    assert table["SRCID"].tolist() == ids
    assert table["DF1"].tolist() == pytest.approx([15000.0 + n for n in range(9)])
    names = table["ORIGNAME"].tolist()
    assert {split_image_name(n)[1] for n in names[:6]} == {str((tmp_path / "a.mrcs").resolve())}
    converted = {split_image_name(n)[1] for n in names[6:]}
    assert len(converted) == 1 and Path(converted.pop()).parent == tmp_path / "stacks"
    assert [pixels(n) for n in names] == list(range(9))  # every image where its name says
    assert not source.store.copies_images  # read in place
    settings = source.source_settings()
    assert (settings.box, settings.pixel_size, settings.invert) == (BOX, PIXEL_SIZE, True)
    assert settings.diameter == pytest.approx(0.5 * BOX * PIXEL_SIZE)

    assert source.poll().new_particles == 0  # nothing new
    close_set(sqlite)
    report = source.poll()
    assert (report.new_particles, report.total, report.closed) == (0, 9, True)


def test_black_protein_as_imported_is_classified_so(tmp_path):
    sqlite, _ = particle_set(tmp_path, contrast="black")
    source = source_for(sqlite, tmp_path)
    report = source.poll()
    assert "the input particles have black protein (as imported): classifying so" in \
        report.messages
    assert not source.source_settings().invert


def test_a_contrast_asked_otherwise_reimports_every_particle_with_its_id(tmp_path):
    sqlite, ids = particle_set(tmp_path)
    source = source_for(sqlite, tmp_path)
    source.poll_reimporting()
    source.configure(contrast="black")
    assert source.poll().start_over is not None  # not done by a plain poll
    report = source.poll_reimporting()
    assert report.reimported and "contrast changed white -> black" in report.reason
    assert (report.new_particles, report.total) == (9, 9)
    assert source.store.read_table()["SRCID"].tolist() == ids
    assert not source.source_settings().invert


def test_a_kill_mid_poll_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    sqlite, ids = particle_set(tmp_path)
    monkeypatch.setattr(particle_source, "READ_BATCH", 4)
    appended = ParticleIntake._append

    def killed_after_the_first_batch(intake, batch):
        if intake.store.count:
            raise KeyboardInterrupt  # the process dies here
        return appended(intake, batch)

    monkeypatch.setattr(ParticleIntake, "_append", killed_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        source_for(sqlite, tmp_path).poll()
    assert 0 < ParticleStore(tmp_path / "store").count < 9
    monkeypatch.setattr(ParticleIntake, "_append", appended)
    source = source_for(sqlite, tmp_path)  # the restarted protocol
    source.poll()
    assert source.store.read_table()["SRCID"].tolist() == ids
    assert [pixels(n) for n in source.store.read_table()["ORIGNAME"]] == list(range(9))
