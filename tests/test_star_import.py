"""Importing from WarpTools 2 projects and any RELION-style particle star, as they grow."""

import json

import mrcfile
import numpy as np
import pytest
from warp_fixtures import WarpToolsProject, particle_image

from live2d.importer import Importer
from live2d.layouts import WARPTOOLS, detect_layout
from live2d.store import ParticleStore
from live2d.warp import WarpFolderError


def importer_for(folder, tmp_path, **options) -> Importer:
    return Importer(folder, ParticleStore(tmp_path / "out"), **options)


def relion_folder(tmp_path, particles: int):
    """A folder holding one stack, mic.mrcs, of ``particles`` 24-px images."""
    folder = tmp_path / "relion"
    folder.mkdir()
    with mrcfile.new(folder / "mic.mrcs") as mrc:
        mrc.set_data(particle_image(0, 0, 24, particles))
    return folder


def assert_store_matches(store: ParticleStore, project: WarpToolsProject) -> None:
    """Every exported particle exactly once, with its own pixels, micrograph and coordinates."""
    table = store.read_table()
    expected = {project.image_name(m, j) for m in range(project.movies)
                for j in range(project.per)}
    assert table["ORIGNAME"].is_unique and set(table["ORIGNAME"]) == expected
    assert table["PSIZE"].eq(project.pixel_size).all() and table["VOLT"].eq(300.0).all()
    with mrcfile.mmap(store.stack_path) as mrc:
        for i, name in enumerate(table["ORIGNAME"]):
            index, stack = name.split("@")
            movie = int(stack.rsplit("movie_", 1)[1][:4])
            assert np.array_equal(mrc.data[i], project.images(movie)[int(index) - 1])
            assert table["MICROGRAPH"].iloc[i] == f"movie_{movie:04d}.tif"
            assert table["ORIGX"].iloc[i] == 300.0 + int(index) - 1
            assert table["DF1"].iloc[i] == pytest.approx(15000.0 + 100.0 * movie)


def test_a_warptools_project_is_found_and_its_reexports_import_only_new_particles(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(2)
    layout = detect_layout(project.folder)
    assert layout.kind == WARPTOOLS and layout.star == project.star_path
    importer = importer_for(project.folder, tmp_path)
    report = importer.poll_reimporting()
    assert report.new_particles == 20 and not report.reimported
    assert any("WarpTools 2" in m for m in report.messages)  # the log says what was found
    assert importer.source_settings().pixel_size == 2.0
    assert importer.source_settings().diameter == 0  # not known: the session guesses it

    project.export(1)  # rows reshuffled, old stacks rewritten with the same content
    report = importer.poll_reimporting()
    assert (report.new_particles, report.total, report.reimported) == (10, 30, False)
    assert importer.poll_reimporting().new_particles == 0  # unchanged star: not even read again
    assert_store_matches(importer.store, project)


def test_a_star_caught_mid_write_imports_its_complete_rows_now_and_the_rest_later(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    importer = importer_for(project.folder, tmp_path)
    importer.poll_reimporting()
    full = len(project.star_path.read_text())
    project.order_seed -= 1
    project.export(2, cut_at=full + 300)  # cut in the middle of a row
    report = importer.poll_reimporting()
    assert 10 < report.total < 30 and not report.reimported
    project.order_seed -= 1
    project.movies -= 2
    project.export(2)  # the same export, finished
    report = importer.poll_reimporting()
    assert report.total == 30
    assert_store_matches(importer.store, project)


def test_any_relion_star_named_with_star_resolves_paths_from_its_own_folder(tmp_path):
    project = WarpToolsProject(tmp_path / "project", star="relion/Extract/particles.star",
                               relative_to_star=True)
    (project.folder / "warp_frameseries.settings").unlink()  # no WarpTools here: a plain star
    project.export(2)
    waiting = importer_for(project.folder, tmp_path / "without").poll_reimporting()
    assert waiting.total == 0 and "give --star" in waiting.missing
    importer = importer_for(project.folder, tmp_path, star="relion/Extract/particles.star")
    assert importer.poll_reimporting().new_particles == 20
    assert_store_matches(importer.store, project)


def write_relion30_star(path, stack, n, pixel, with_ctf=True):
    labels = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY",
              "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
              "rlnDetectorPixelSize", "rlnMagnification"]
    if with_ctf:
        labels += ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    lines = ["", "data_", "", "loop_"] + [f"_{label} #{i}" for i, label in enumerate(labels, 1)]
    for i in range(n):
        row = f"{i + 1:06d}@{stack} mic.mrc {10 + i} {20 + i} 300 2.7 0.1 {pixel} 10000"
        lines.append(row + (" 12000 11800 45" if with_ctf else ""))
    path.write_text("\n".join(lines) + "\n")


def test_a_relion_30_star_gives_pixel_size_per_particle_and_box_from_its_stack(tmp_path):
    folder = tmp_path / "relion"
    (folder / "Extract").mkdir(parents=True)
    with mrcfile.new(folder / "Extract" / "mic.mrcs") as mrc:
        mrc.set_data(particle_image(0, 0, 24, 5))
    write_relion30_star(folder / "particles.star", "Extract/mic.mrcs", 5, 3.0)
    importer = importer_for(folder, tmp_path, star="particles.star")
    assert importer.poll_reimporting().new_particles == 5
    settings = importer.source_settings()
    assert (settings.box, settings.pixel_size) == (24, 3.0)
    assert importer.store.read_table()["AmpC"].eq(0.1).all()


def test_particles_without_ctf_are_refused_with_a_clear_message(tmp_path):
    folder = relion_folder(tmp_path, 5)
    write_relion30_star(folder / "particles.star", "mic.mrcs", 5, 3.0, with_ctf=False)
    report = importer_for(folder, tmp_path, star="particles.star").poll_reimporting()
    assert report.total == 0
    assert any("rlnDefocusU" in m and "CTF" in m for m in report.messages)


def test_a_change_of_contrast_reimports_and_says_why(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    importer = importer_for(project.folder, tmp_path)
    importer.poll_reimporting()
    assert importer.source_settings().invert  # white protein unless told otherwise
    importer.configure(contrast="black")
    report = importer.poll_reimporting()
    assert report.reimported and "contrast changed white -> black" in report.reason
    assert report.total == 10 and not importer.source_settings().invert


def test_stars_with_several_pixel_sizes_are_refused(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    text = project.star_path.read_text()
    optics = "opticsGroup1 1 0.7500 300.000000 2.700000 0.070000 2.000000 32 2"
    text = text.replace(optics, optics + "\nopticsGroup2 2 0.7500 300.000000 2.700000 "
                                         "0.070000 1.000000 32 2", 1)
    text = text.replace("movie_0000.tif 1 ", "movie_0000.tif 2 ", 3)
    project.star_path.write_text(text)
    report = importer_for(project.folder, tmp_path).poll_reimporting()
    assert report.total == 0 and any("several pixel sizes" in m for m in report.messages)


def test_a_project_without_an_export_yet_is_waited_for(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    importer = importer_for(project.folder, tmp_path)
    report = importer.poll_reimporting()
    assert report.total == 0 and "fs_export_particles" in report.missing
    project.export(1)
    assert importer.poll_reimporting().new_particles == 10


def test_a_project_with_several_particle_stars_asks_which(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    (project.folder / "other.star").write_text(project.star_path.read_text())
    with pytest.raises(WarpFolderError, match=r"several particle stars .* give --star"):
        detect_layout(project.folder)
    assert detect_layout(project.folder, "other.star").star == project.folder / "other.star"


def test_a_half_written_stack_of_an_export_is_waited_for_then_imported(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(2)
    stack = project.stack_path(1)
    whole = stack.read_bytes()
    stack.write_bytes(whole[: len(whole) // 2])  # WarpTools still writing it
    importer = importer_for(project.folder, tmp_path)
    report = importer.poll_reimporting()
    assert report.total == 10 and any("waiting for" in m for m in report.messages)
    stack.write_bytes(whole)
    assert importer.poll_reimporting().total == 20
    assert_store_matches(importer.store, project)


def test_a_vanishing_project_folder_does_not_end_the_session(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    importer = importer_for(project.folder, tmp_path)
    assert importer.poll_reimporting().total == 10
    away = tmp_path / "away"
    project.folder.rename(away)  # a network share that hiccups
    report = importer.poll_reimporting()
    assert report.total == 10 and any("next poll" in m for m in report.messages)
    away.rename(project.folder)
    project.export(1)
    assert importer.poll_reimporting().total == 20
    assert_store_matches(importer.store, project)


def test_a_relion_row_with_an_infinite_defocus_or_voltage_is_refused_alone(tmp_path):
    folder = relion_folder(tmp_path, 6)
    star = folder / "particles.star"
    write_relion30_star(star, "mic.mrcs", 6, 3.0)
    lines = star.read_text().split("\n")
    rows = [i for i, line in enumerate(lines) if "@mic.mrcs" in line]
    lines[rows[1]] = lines[rows[1]].replace(" 12000 ", " inf ")
    lines[rows[3]] = lines[rows[3]].replace(" 300 ", " 1e308 ")  # was "several voltages"
    lines[rows[4]] = lines[rows[4]].replace(" 11800 ", " nan ")  # was waited for at every poll
    star.write_text("\n".join(lines))
    importer = importer_for(folder, tmp_path, star="particles.star")
    report = importer.poll_reimporting()
    assert report.total == 3, report.messages
    text = " ".join(report.messages)
    assert "rlnDefocusU is infinite" in text and "rlnVoltage is outside" in text
    assert "rlnDefocusV is not a number" in text
    assert importer.store.read_table()["ORIGNAME"].str[:6].tolist() == [
        "000001", "000003", "000006"]
    star.write_text(star.read_text() + "\n")  # rewritten: the refused rows are not said again
    assert not any("refused" in m for m in importer.poll_reimporting().messages)


def test_a_relion_star_of_an_endless_line_or_too_many_columns_is_said_once(tmp_path):
    folder = relion_folder(tmp_path, 5)
    star = folder / "particles.star"
    write_relion30_star(star, "mic.mrcs", 5, 3.0)
    good = star.read_text()
    importer = importer_for(folder, tmp_path, star="particles.star")
    star.write_text(good + "x" * (2 << 20))  # was waited for as an unfinished line, re-read
    messages = [m for _ in range(3) for m in importer.poll_reimporting().messages if "newline" in m]
    assert len(messages) == 1, messages
    star.write_text(good.replace("loop_\n", "loop_\n" + "".join(
        f"_rlnJunk{i} #{i}\n" for i in range(3000)), 1))
    messages = [m for _ in range(3) for m in importer.poll_reimporting().messages if "columns" in m]
    assert len(messages) == 1, messages
    star.write_text(good)
    assert importer.poll_reimporting().total == 5


def test_a_star_of_binary_junk_is_refused_once_and_imported_once_fixed(tmp_path):
    folder = relion_folder(tmp_path, 5)
    star = folder / "particles.star"
    star.write_bytes(b"\x00\x01\x02 not a star \xff\xfe")
    importer = importer_for(folder, tmp_path, star="particles.star")
    messages = [m for _ in range(3) for m in importer.poll_reimporting().messages
                if "not a star file" in m]
    assert len(messages) == 1, messages
    star.write_text("# version 30001\n")  # a header being written: waited for, no refusal
    assert not [m for m in importer.poll_reimporting().messages if "not a star" in m]
    write_relion30_star(star, "mic.mrcs", 5, 3.0)
    assert importer.poll_reimporting().total == 5


def test_a_change_of_star_is_reported_by_a_poll_without_emptying_the_store(tmp_path):
    project = WarpToolsProject(tmp_path / "project")
    project.export(1)
    importer = importer_for(project.folder, tmp_path)
    importer.poll()
    saved = json.loads((tmp_path / "out" / "import.json").read_text())
    assert saved["source"][0] == "star" and saved["source"][4] == "white"  # the list form
    importer.configure(contrast="black")
    report = importer.poll()
    assert report.start_over is not None and not report.reimported
    assert "contrast changed white -> black" in report.start_over.reason
    assert importer.store.count == 10 and importer.store.generation == 0
