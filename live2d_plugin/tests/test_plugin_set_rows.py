"""Members written by SQL (live2d_plugin.set_rows) are what pwem's classifyItems writes: same
particles, same column values attribute by attribute, read back by pwem as the same objects."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from pwem.objects import Acquisition, CTFModel, Particle, SetOfClasses2D, SetOfParticles
from pyworkflow.object import String

from live2d_plugin.convert import alignment_2d, alignment_matrices
from live2d_plugin.set_rows import (
    copy_members,
    disabled_ids,
    holds_written_set,
    item_ids,
    matrix_texts,
    set_class_sizes,
)

PIXEL_SIZE = 1.7
COUNT = 60
CLASSES = 4


def input_particles(path) -> SetOfParticles:
    """Particles as the Warp import writes them: CTF, acquisition, extra attributes; one of
    them disabled (pwem's classifyItems skips it)."""
    particles = SetOfParticles(filename=str(path))
    particles.setSamplingRate(PIXEL_SIZE)
    particles.setHasCTF(True)
    acquisition = Acquisition(voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.07,
                              magnification=10000.0)
    particles.setAcquisition(acquisition)
    for i in range(COUNT):
        particle = Particle(location=(i % 20 + 1, f"stacks/movie_{i // 20}.mrcs"))
        particle.setSamplingRate(PIXEL_SIZE)
        particle.setAcquisition(acquisition)
        particle.setCTF(CTFModel(defocusU=10000.0 + i, defocusV=9000.0 + i,
                                 defocusAngle=float(i)))
        particle._warpImageName = String(f"{i % 20 + 1}@particles/movie_{i // 20}.mrcs")
        particle.setEnabled(i != 17)
        particles.append(particle)
    particles.write()
    return particles


def assignments() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"cls": rng.integers(1, CLASSES + 1, COUNT),
                          "psi": rng.uniform(0, 360, COUNT), "shx": rng.normal(0, 4, COUNT),
                          "shy": rng.normal(0, 4, COUNT)},
                         index=pd.Index(np.arange(1, COUNT + 1), name="id"))
    frame["matrix"] = matrix_texts(alignment_matrices(frame["psi"], frame["shx"],
                                                      frame["shy"], PIXEL_SIZE))
    return frame


def classify(path, particles: SetOfParticles, members: pd.DataFrame) -> SetOfClasses2D:
    classes = SetOfClasses2D(filename=str(path))
    classes.setImages(particles)

    def update_item(item, _row) -> None:
        values = members.loc[item.getObjId()]
        item.setClassId(int(values["cls"]))
        item.setTransform(alignment_2d(values["psi"], values["shx"], values["shy"],
                                       PIXEL_SIZE))

    ids = ",".join(str(i) for i in members.index)
    classes.classifyItems(updateItemCallback=update_item, iterParams={"where": f"id IN ({ids})"})
    classes.write()
    classes.close()
    return classes


def table_by_label(path, prefix: str) -> dict[int, dict[str, object]]:
    """id -> {attribute label: stored value} of a flat sqlite's table."""
    with sqlite3.connect(path) as connection:
        columns = dict(connection.execute(
            f"SELECT column_name, label_property FROM {prefix}Classes"))
        cursor = connection.execute(f"SELECT * FROM {prefix}Objects")
        names = [d[0] for d in cursor.description]
        rows = {}
        for row in cursor:
            values = dict(zip(names, row, strict=True))
            rows[values["id"]] = {columns.get(name, name): value for name, value in values.items()
                                  if name != "creation"}
    return rows


def members_of(path) -> dict[int, dict[int, np.ndarray]]:
    classes = SetOfClasses2D(filename=str(path))
    try:
        return {cls.getObjId(): {p.getObjId(): p.getTransform().getMatrix().copy() for p in cls}
                for cls in classes.iterItems()}
    finally:
        classes.close()


def test_members_copied_by_sql_equal_pwems_own(tmp_path) -> None:
    particles = input_particles(tmp_path / "particles.sqlite")
    members = assignments()
    reference = classify(tmp_path / "reference.sqlite", particles, members)
    assert disabled_ids(particles.getFileName()) == {18}

    enabled = members.drop(index=18)
    templates = enabled.groupby("cls").head(1)
    fast = classify(tmp_path / "fast.sqlite", particles, templates)
    for number, template_id in zip(templates["cls"], templates.index, strict=True):
        inserted = copy_members(fast.getFileName(), f"Class{number:03d}_",
                                particles.getFileName(), members[members["cls"] == number],
                                int(template_id))
        # The template was there already and the disabled particle is skipped.
        assert inserted == int((enabled["cls"] == number).sum()) - 1
    sizes = set_class_sizes(fast.getFileName())
    assert sizes == enabled["cls"].value_counts().to_dict()

    for number in range(1, CLASSES + 1):
        prefix = f"Class{number:03d}_"
        expected = table_by_label(reference.getFileName(), prefix)
        got = table_by_label(fast.getFileName(), prefix)
        assert set(got) == set(expected)
        for pid, row in expected.items():
            assert got[pid].keys() == row.keys()
            for label, value in row.items():
                if label == "_transform._matrix":
                    np.testing.assert_allclose(np.array(json.loads(got[pid][label])),
                                               np.array(json.loads(value)), atol=1e-12)
                else:
                    assert got[pid][label] == value, (pid, label)
    # pwem reads them back as the same classes, sizes, particles and alignments.
    expected, got = members_of(reference.getFileName()), members_of(fast.getFileName())
    assert expected.keys() == got.keys()
    for number, by_id in expected.items():
        assert by_id.keys() == got[number].keys()
        for pid, matrix in by_id.items():
            np.testing.assert_allclose(got[number][pid], matrix, atol=1e-12)
    reread = SetOfClasses2D(filename=fast.getFileName())
    try:
        assert {cls.getObjId(): cls.getSize() for cls in reread.iterItems()} == sizes
    finally:
        reread.close()


def test_copy_into_a_set_of_particles_skips_those_present(tmp_path) -> None:
    particles = input_particles(tmp_path / "particles.sqlite")
    members = assignments()
    grown = SetOfParticles(filename=str(tmp_path / "grown.sqlite"))
    grown.copyInfo(particles)
    item = particles[1].clone()
    item.setClassId(int(members.loc[1, "cls"]))
    grown.append(item)
    grown.write()
    grown.close()
    assert copy_members(grown.getFileName(), "", particles.getFileName(), members.iloc[:30],
                        1) == 28  # all but the template and the disabled one (id 18)
    assert copy_members(grown.getFileName(), "", particles.getFileName(), members.iloc[:40],
                        1) == 10  # only those not there yet
    assert item_ids(grown.getFileName()).tolist() == [i for i in range(1, 41) if i != 18]


def test_a_missing_template_is_a_clear_error(tmp_path) -> None:
    particles = input_particles(tmp_path / "particles.sqlite")
    grown = SetOfParticles(filename=str(tmp_path / "grown.sqlite"))
    grown.copyInfo(particles)
    grown.append(particles[1].clone())
    grown.write()
    grown.close()
    with pytest.raises(ValueError, match="no template member 5"):
        copy_members(grown.getFileName(), "", particles.getFileName(), assignments(), 5)


def test_a_set_that_never_had_an_item_is_not_a_written_set(tmp_path) -> None:
    """pyworkflow writes a set's tables with its first item: the file of an empty set is there,
    with no Properties table to read back. A missing file is not created by the look."""
    empty = SetOfParticles(filename=str(tmp_path / "empty.sqlite"))
    empty.setSamplingRate(PIXEL_SIZE)
    empty.write()
    empty.close()
    assert (tmp_path / "empty.sqlite").exists()
    assert not holds_written_set(str(tmp_path / "empty.sqlite"))
    assert not holds_written_set(str(tmp_path / "missing.sqlite"))
    assert not (tmp_path / "missing.sqlite").exists()
    assert holds_written_set(input_particles(tmp_path / "particles.sqlite").getFileName())
