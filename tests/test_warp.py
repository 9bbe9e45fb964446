"""Reading Warp's settings, star files and stacks, including while Warp is writing them."""

import os
import struct

import mrcfile
import numpy as np
import pytest
from warp_fixtures import MODEL, WarpFolder, settings_values, settings_xml

from live2d.mrc import MrcStack
from live2d.source_images import open_images
from live2d.warp import (
    TAIL_CHECK_BYTES,
    BrokenStack,
    StackNotReady,
    StarProgress,
    StarRewritten,
    WarpFolderError,
    WarpSettingsInvalid,
    WarpSettingsMissing,
    WarpSettingsUnreadable,
    WarpStarError,
    check_particle_stack,
    check_particle_values,
    particle_star_path,
    read_new_rows,
    read_particle_images,
    read_settings,
    split_image_name,
)

HEADER = "\ndata_\n\nloop_\n" + "".join(
    f"_{name} #{i}\n" for i, name in enumerate(
        ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
         "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnCtfMaxResolution"], start=1))


def row(i: int) -> str:
    return f"{i:06d}@particles/m_{MODEL}.mrcs 15000.0 14800.0 12.5 300.0 2.7 0.07 4.1\n"


@pytest.fixture
def warp(tmp_path) -> WarpFolder:
    folder = WarpFolder(tmp_path / "warp", box=32, pixel_size=2.0, per_micrograph=30)
    folder.add_micrographs(2)
    return folder


# ----------------------------------------------------------------------------- settings
def test_settings_give_binned_pixel_size_box_diameter_and_model(warp):
    settings = read_settings(warp.folder)
    assert settings.pixel_size == pytest.approx(2.0)  # PixelSizeX 1.0 × 2**BinTimes 1
    assert settings.box == 32 and settings.model == MODEL and settings.export
    assert settings.invert and settings.diameter == 40 and settings.min_score == 0.95
    assert (settings.voltage, settings.cs, settings.amplitude_contrast) == (300, 2.7, 0.07)
    assert settings.signature == (32, MODEL, 0.95)
    assert particle_star_path(warp.folder, settings).name == f"allparticles_{MODEL}.star"
    assert particle_star_path(warp.folder, settings, "good").name == f"goodparticles_{MODEL}.star"
    assert particle_star_path(warp.folder, settings, "goodparticles").name.startswith("good")


def test_settings_are_parsed_as_utf16_bytes_with_a_byte_order_mark(tmp_path):
    data = settings_xml(settings_values(box=96, pixel_size=3.32, bin_times=2, model="MyNet"))
    assert data[:2] == b"\xff\xfe" and b'encoding="utf-16"' not in data  # really UTF-16
    (tmp_path / "previous.settings").write_bytes(data)
    settings = read_settings(tmp_path)
    assert settings.pixel_size == pytest.approx(3.32)  # 0.83 × 2**2
    assert (settings.box, settings.model) == (96, "MyNet")


def test_a_folder_without_settings_is_refused_with_the_reason(tmp_path):
    # Missing settings are told apart (callers started before Warp wait for them)...
    with pytest.raises(WarpSettingsMissing, match=r"no previous\.settings in .*Warp processes"):
        read_settings(tmp_path)
    # ...from a folder that is not there at all.
    with pytest.raises(WarpFolderError, match="does not exist") as caught:
        read_settings(tmp_path / "nowhere")
    assert not isinstance(caught.value, WarpSettingsMissing)


def test_export_off_is_refused_with_the_reason(warp):
    warp.write_settings(DoExport=False)
    with pytest.raises(WarpFolderError, match="particle export is off") as caught:
        read_settings(warp.folder)
    assert not isinstance(caught.value, WarpSettingsUnreadable)  # waiting will not fix it


def test_settings_mid_write_are_unreadable_not_fatal(warp):
    path = warp.folder / "previous.settings"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WarpSettingsUnreadable, match="cannot be parsed"):
        read_settings(warp.folder)


def test_settings_missing_a_required_parameter_are_unreadable(tmp_path):
    values = settings_values()
    del values["Picking"]["BoxSize"]
    (tmp_path / "previous.settings").write_bytes(settings_xml(values))
    with pytest.raises(WarpSettingsUnreadable, match="BoxSize"):
        read_settings(tmp_path)


# ----------------------------------------------------------------------------- star files
def test_rows_are_read_incrementally_and_an_unfinished_line_waits(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER + row(1) + row(2) + row(3)[:20])
    table, progress = read_new_rows(star, StarProgress())
    assert table["rlnImageName"].tolist() == [row(1).split()[0], row(2).split()[0]]
    assert table["rlnDefocusU"].dtype.kind == "f"
    assert "rlnPhaseShift" not in table  # optional: the importer uses 0

    star.write_text(HEADER + row(1) + row(2) + row(3) + row(4))  # rewritten whole, as Warp does
    table, progress = read_new_rows(star, progress)
    assert [n[:6] for n in table["rlnImageName"]] == ["000003", "000004"]
    assert progress.rows == 4
    table, same = read_new_rows(star, progress)
    assert len(table) == 0 and same == progress


def test_a_header_caught_mid_write_consumes_nothing(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER[:30])
    table, progress = read_new_rows(star, StarProgress())
    assert len(table) == 0 and progress == StarProgress()
    star.write_text(HEADER + row(1))
    table, progress = read_new_rows(star, progress)
    assert table["rlnImageName"].tolist() == [row(1).split()[0]] and progress.rows == 1


def test_a_rewrite_that_changes_read_rows_is_detected(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER + row(1) + row(2))
    _, progress = read_new_rows(star, StarProgress())
    star.write_text(HEADER + row(2) + row(1) + row(3))
    with pytest.raises(StarRewritten):
        read_new_rows(star, progress)
    star.write_text(HEADER + row(1) + row(2)[:10])  # truncated mid-line while Warp rewrites it
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
    assert progress.rows == 3001


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
])
def test_malformed_star_files_give_a_clear_error(tmp_path, text, message):
    star = tmp_path / "p.star"
    star.write_text(text)
    with pytest.raises(WarpStarError, match=message) as caught:
        read_new_rows(star, StarProgress())
    assert "p.star" in str(caught.value) or "rlnDefocus" in str(caught.value)


@pytest.mark.parametrize("section, name, value", [
    (None, "PixelSizeX", "NaN"), (None, "PixelSizeX", "-Infinity"),
    ("Picking", "BoxSize", "Infinity"), ("Picking", "BoxSize", "1e308"),
    ("Picking", "Diameter", "NaN"), ("CTF", "Voltage", "1e308"), ("CTF", "Cs", "inf"),
    ("CTF", "Amplitude", "NaN"), ("Import", "BinTimes", "1e308"),
])
def test_non_finite_or_absurd_settings_name_the_setting_and_value(warp, section, name, value):
    values = settings_values(box=32, pixel_size=2.0)
    values[section][name] = value
    (warp.folder / "previous.settings").write_bytes(settings_xml(values))
    with pytest.raises(WarpSettingsInvalid) as caught:  # not an OverflowError traceback
        read_settings(warp.folder)
    assert name in str(caught.value) and repr(value) in str(caught.value)
    assert isinstance(caught.value, WarpSettingsUnreadable)  # tried again at the next poll


def test_bad_ctf_values_refuse_their_rows_only_once_per_column_and_fault(tmp_path):
    star = tmp_path / "p.star"
    bad = {2: ("15000.0", "inf"), 3: ("15000.0", "1e308"), 4: ("15000.0", "nan"),
           5: ("15000.0", "n/a"), 6: ("15000.0", "inf"), 7: ("300.0", "-Infinity"),
           8: ("14800.0", "90000.0")}
    text = HEADER + "".join(row(i).replace(*bad[i], 1) if i in bad else row(i)
                            for i in range(1, 11))
    star.write_text(text)
    table, progress = read_new_rows(star, StarProgress())  # the rows are read, not refused here
    assert progress.rows == 10
    good, refusals = check_particle_values(table)
    assert good["rlnImageName"].tolist() == [row(i).split()[0] for i in (1, 9, 10)]
    assert good["rlnDefocusU"].dtype == float
    found = {(r.column, r.problem.split()[1], r.value, r.row + 1, len(r.names))
             for r in refusals}
    assert found == {("rlnDefocusU", "infinite", "inf", 2, 2),  # rows 2 and 6: said once
                     ("rlnDefocusU", "outside", "1e308", 3, 1),
                     ("rlnDefocusU", "not", "nan", 4, 2),  # "n/a" is not a number either
                     ("rlnVoltage", "infinite", "-inf", 7, 1),
                     ("rlnDefocusU/rlnDefocusV", "by", "15000.0 and 90000.0", 8, 1)}


def test_a_star_of_too_many_columns_or_an_endless_line_is_refused(tmp_path):
    star = tmp_path / "p.star"
    star.write_text(HEADER + "".join(f"_rlnExtra{i} #{i + 9}\n" for i in range(2000)))
    with pytest.raises(WarpStarError, match="more than 1000 columns"):
        read_new_rows(star, StarProgress())
    star.write_text(HEADER + row(1) + "x" * (3 << 20))  # no newline: would wait forever
    with pytest.raises(WarpStarError, match="without a newline"):
        read_new_rows(star, StarProgress())
    star.write_text(HEADER + row(1) + row(2)[:20])  # an ordinary unfinished row still waits
    table, progress = read_new_rows(star, StarProgress())
    assert len(table) == 1 and progress.rows == 1


# ----------------------------------------------------------------------------- stacks
def test_images_are_read_by_warp_image_name(warp):
    names = [f"000002@{warp.stack_name(0)}", f"000001@{warp.stack_name(1)}",
             f"000030@{warp.stack_name(0)}"]
    images = read_particle_images(warp.folder, names)
    assert images.shape == (3, 32, 32) and images.dtype == np.float32
    assert np.array_equal(images[0], warp.images(0)[1])
    assert np.array_equal(images[1], warp.images(1)[0])
    assert np.array_equal(images[2], warp.images(0)[29])
    with pytest.raises(WarpStarError, match="box is 64"):
        read_particle_images(warp.folder, names, 64)


def test_a_stack_still_being_written_is_not_ready(warp):
    stack = warp.stack_path(0)
    name = f"000030@{warp.stack_name(0)}"
    full = stack.read_bytes()
    stack.write_bytes(full[: len(full) - 100])  # header says 30 images, the data is short
    with pytest.raises(StackNotReady, match="bytes of the"):
        read_particle_images(warp.folder, [name], 32)
    stack.write_bytes(full[:500])  # not even a whole header
    with pytest.raises(StackNotReady):
        read_particle_images(warp.folder, [name], 32)
    stack.unlink()
    with pytest.raises(StackNotReady, match="not written yet") as caught:
        read_particle_images(warp.folder, [name], 32)
    assert caught.value.stack == warp.stack_name(0)
    stack.write_bytes(full)
    assert np.array_equal(read_particle_images(warp.folder, [name], 32)[0], warp.images(0)[29])


def test_a_stack_whose_header_counts_fewer_images_is_not_ready(warp):
    stack = warp.stack_path(0)
    with open(stack, "r+b") as handle:  # header written for 10 images so far
        handle.seek(8)
        handle.write(struct.pack("<i", 10))
    with pytest.raises(StackNotReady, match="counts 10 images, 30 needed"):
        read_particle_images(warp.folder, [f"000030@{warp.stack_name(0)}"], 32)
    assert read_particle_images(warp.folder, [f"000010@{warp.stack_name(0)}"]).shape[0] == 1
    with mrcfile.open(stack, permissive=True, header_only=True) as mrc:
        assert mrc.header.nz == 10


def test_windows_paths_and_line_endings_from_warp_are_read(tmp_path):
    star = tmp_path / "p.star"
    star.write_bytes((HEADER + row(1) + row(2)).replace("\n", "\r\n").replace(
        "particles/", "particles\\").encode())
    table, _ = read_new_rows(star, StarProgress())
    assert len(table) == 2 and table.loc[1, "rlnDefocusU"] == 15000.0
    assert split_image_name(table.loc[1, "rlnImageName"]) == (1, f"particles/m_{MODEL}.mrcs")


def test_a_stack_that_waiting_will_not_fix_is_broken_at_once_one_being_written_is_not_ready(
        warp, tmp_path):
    """Checked from the header and the file's size before anything is read or allocated."""
    stack = warp.stack_path(0)
    name = f"000030@{warp.stack_name(0)}"
    full = stack.read_bytes()
    for broken, says in ((full[:92] + struct.pack("<i", 2**31 - 1) + full[96:],
                          "2147483647-byte extended header"),
                         (b"Warp session notes\n" * 100, "not an MRC stack"),
                         (full[:12] + struct.pack("<i", 77) + full[16:], "not an MRC stack")):
        stack.write_bytes(broken)
        with pytest.raises(BrokenStack, match=says):
            check_particle_stack(warp.folder, [name], 32)
    stack.unlink()
    os.mkfifo(stack)  # opened without blocking, and refused
    with pytest.raises(BrokenStack, match="is a FIFO, not a regular file"):
        read_particle_images(warp.folder, [name], 32)
    stack.unlink()
    stack.write_bytes(bytes(1024) + full[1024:])  # header not written yet
    with pytest.raises(StackNotReady, match="header is still blank"):
        check_particle_stack(warp.folder, [name], 32)
    stack.write_bytes(full[:1024])  # the header, no images yet
    with pytest.raises(StackNotReady, match="bytes of the"):
        check_particle_stack(warp.folder, [name], 32)
    stack.write_bytes(full[:8] + struct.pack("<i", 0) + full[12:1024])  # an empty store's
    assert len(open_images(stack)) == 0 and MrcStack(stack).shape == (0, 32, 32)
    big_endian = tmp_path / "big.mrcs"
    with mrcfile.new(big_endian) as mrc:
        mrc.set_data(warp.images(0)[:3].astype(">f4"))
    np.testing.assert_array_equal(MrcStack(big_endian)[[2, 0]], warp.images(0)[[2, 0]])
