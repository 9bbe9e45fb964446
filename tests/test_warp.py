"""Reading Warp's settings, star files and stacks, including while Warp is writing them."""

import mrcfile
import numpy as np
import pytest

from live2d.simulate import MODEL, simulate, write_settings
from live2d.warp import (
    TAIL_CHECK_BYTES,
    StackNotReady,
    StarProgress,
    StarRewritten,
    WarpFolderError,
    WarpSettingsUnreadable,
    WarpStarError,
    particle_star_path,
    read_new_rows,
    read_particle_images,
    read_settings,
)

HEADER = "\ndata_\n\nloop_\n" + "".join(
    f"_{name} #{i}\n" for i, name in enumerate(
        ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
         "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnCtfMaxResolution"], start=1))


def row(i: int) -> str:
    return f"{i:06d}@particles/m_{MODEL}.mrcs 15000.0 14800.0 12.5 300.0 2.7 0.07 4.1\n"


@pytest.fixture
def warp(tmp_path):
    folder = tmp_path / "warp"
    simulate(folder, particles=60, per_micrograph=30, box=32, pixel_size=2.0, views=2)
    return folder


def test_settings_give_binned_pixel_size_box_diameter_and_model(warp):
    settings = read_settings(warp)
    assert settings.pixel_size == pytest.approx(2.0)  # PixelSizeX 1.0 × 2**BinTimes 1
    assert settings.box == 32 and settings.model == MODEL and settings.export
    assert settings.invert and settings.diameter > 0
    assert particle_star_path(warp, settings).name == f"allparticles_{MODEL}.star"
    assert particle_star_path(warp, settings, "goodparticles").name.startswith("good")


def test_a_folder_without_settings_is_refused_with_the_reason(tmp_path):
    with pytest.raises(WarpFolderError, match=r"previous\.settings"):
        read_settings(tmp_path)
    with pytest.raises(WarpFolderError, match="does not exist"):
        read_settings(tmp_path / "nowhere")


def test_export_off_is_refused_with_the_reason(warp):
    write_settings(warp, DoExport=False)
    with pytest.raises(WarpFolderError, match=r"[Ee]xport"):
        read_settings(warp)


def test_settings_mid_write_are_unreadable_not_fatal(warp):
    path = warp / "previous.settings"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WarpSettingsUnreadable, match="cannot be parsed"):
        read_settings(warp)


def test_settings_read_as_utf16_bytes(warp):
    assert (warp / "previous.settings").read_bytes()[:2] == b"\xff\xfe"
    assert read_settings(warp).pixel_size == pytest.approx(2.0)


def test_rows_are_read_incrementally_and_an_unfinished_line_waits(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER + row(1) + row(2) + row(3)[:20])
    table, progress = read_new_rows(star, StarProgress())
    assert table["rlnImageName"].tolist() == [row(1).split()[0], row(2).split()[0]]
    assert table["rlnDefocusU"].dtype.kind == "f"

    star.write_text(HEADER + row(1) + row(2) + row(3) + row(4))  # rewritten whole, as Warp does
    table, progress = read_new_rows(star, progress)
    assert [n[:6] for n in table["rlnImageName"]] == ["000003", "000004"]
    assert progress.rows == 4
    table, same = read_new_rows(star, progress)
    assert len(table) == 0 and same == progress


def test_a_rewrite_that_changes_read_rows_is_detected(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER + row(1) + row(2))
    _, progress = read_new_rows(star, StarProgress())
    star.write_text(HEADER + row(2) + row(1) + row(3))
    with pytest.raises(StarRewritten):
        read_new_rows(star, progress)
    star.write_text(HEADER + row(1))  # truncated while Warp rewrites it
    with pytest.raises(StarRewritten):
        read_new_rows(star, progress)


def test_only_new_bytes_are_parsed(tmp_path):
    """A byte changed far before the read point goes unnoticed: proof that old rows are not
    re-read (reading stays O(new rows))."""
    star = tmp_path / "p.star"
    rows = [row(i) for i in range(1, 3001)]
    star.write_text(HEADER + "".join(rows))
    _, progress = read_new_rows(star, StarProgress())
    assert progress.offset > 2 * TAIL_CHECK_BYTES
    text = HEADER + "".join(rows)
    text = text.replace(row(5), row(5).replace("15000.0", "garbage"), 1)
    star.write_text(text + row(3001))
    table, progress = read_new_rows(star, progress)
    assert table["rlnImageName"].tolist() == [row(3001).split()[0]]


def test_extra_columns_and_any_column_order_are_fine(tmp_path):
    star = tmp_path / "p.star"
    labels = ["rlnMicrographName", "rlnAmplitudeContrast", "rlnSphericalAberration", "rlnVoltage",
              "rlnDefocusAngle", "rlnDefocusV", "rlnDefocusU", "rlnImageName", "rlnNewThing"]
    header = "data_\nloop_\n" + "".join(f"_{name} #{i}\n" for i, name in enumerate(labels, 1))
    star.write_text(header + "m.tif 0.1 2.7 300 5 14000 15000 000001@particles/a.mrcs x\n")
    table, _ = read_new_rows(star, StarProgress())
    assert table.loc[0, "rlnDefocusU"] == 15000 and table.loc[0, "rlnNewThing"] == "x"


@pytest.mark.parametrize("text, message", [
    (HEADER + row(1) + "this is not a row\n", "has 5 values where the header has 8"),
    (HEADER.replace("_rlnDefocusV #3\n", "") + row(1).replace(" 14800.0", ""), "rlnDefocusV"),
    (HEADER + row(1).replace("15000.0", "n/a"), "non-numeric"),
])
def test_malformed_star_files_give_a_clear_error(tmp_path, text, message):
    star = tmp_path / "p.star"
    star.write_text(text)
    with pytest.raises(WarpStarError, match=message):
        read_new_rows(star, StarProgress())


def test_images_are_read_by_warp_image_name(warp):
    names = [f"000002@particles/FoilHole_01000_Data_{MODEL}.mrcs",
             f"000001@particles/FoilHole_01001_Data_{MODEL}.mrcs"]
    images = read_particle_images(warp, names, 32)
    with mrcfile.open(warp / names[0].split("@")[1]) as mrc:
        assert np.array_equal(images[0], mrc.data[1])
    with mrcfile.open(warp / names[1].split("@")[1]) as mrc:
        assert np.array_equal(images[1], mrc.data[0])


def test_a_stack_still_being_written_is_not_ready(warp):
    stack = warp / "particles" / f"FoilHole_01000_Data_{MODEL}.mrcs"
    name = f"000030@particles/{stack.name}"
    full = stack.read_bytes()
    stack.write_bytes(full[: len(full) - 100])  # header says 30 images, the data is short
    with pytest.raises(StackNotReady, match=r"needed|unreadable"):
        read_particle_images(warp, [name], 32)
    stack.unlink()
    with pytest.raises(StackNotReady, match="not written yet"):
        read_particle_images(warp, [name], 32)
    stack.write_bytes(full)
    assert read_particle_images(warp, [name], 32).shape == (1, 32, 32)
