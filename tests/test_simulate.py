"""`live2d simulate` writes a Warp folder as Warp lays it out, plus the truth beside it."""

import csv
import xml.etree.ElementTree as ET

import mrcfile
import numpy as np
import pytest

from live2d.cli import main as cli_main
from live2d.simulate import MODEL, read_settings_values, simulate, truth_dir_for, write_settings


def star_rows(path):
    lines = path.read_text().splitlines()
    labels = [line.split()[0][1:] for line in lines if line.startswith("_rln")]
    rows = [line.split() for line in lines if line and line[0].isdigit()]
    return labels, rows


def test_cli_writes_settings_stacks_stars_and_truth(tmp_path):
    warp = tmp_path / "warp"
    assert cli_main(["simulate", str(warp), "--particles", "150", "--per-micrograph", "50",
                     "--box", "48", "--pixel-size", "3", "--views", "3"]) == 0

    raw = (warp / "previous.settings").read_bytes()
    assert raw.startswith(b"\xff\xfe")  # UTF-16 with a byte-order mark, as Warp writes it
    root = ET.fromstring(raw)
    params = {p.get("Name"): p.get("Value") for p in root.iter("Param")}
    binned = float(params["PixelSizeX"]) * 2 ** int(params["BinTimes"])
    assert binned == pytest.approx(3.0)
    assert params["BoxSize"] == "48" and params["DoExport"] == "True"
    assert params["ModelPath"].endswith(MODEL)

    labels, rows = star_rows(warp / f"allparticles_{MODEL}.star")
    assert len(rows) == 150 and len(labels) == len(rows[0])
    names = [row[labels.index("rlnImageName")] for row in rows]
    assert names[0].startswith("000001@particles/") and len(set(names)) == 150
    stacks = sorted((warp / "particles").glob("*.mrcs"))
    assert len(stacks) == 3
    for stack in stacks:
        with mrcfile.open(stack) as mrc:
            assert mrc.data.shape == (50, 48, 48)
            assert mrc.voxel_size.x == pytest.approx(3.0)

    truth = truth_dir_for(warp)
    with open(truth / "particles.csv") as handle:
        records = list(csv.DictReader(handle))
    assert [r["image_name"] for r in records] == names
    assert {int(r["view"]) for r in records} <= {0, 1, 2}
    with mrcfile.open(truth / "views.mrc") as mrc:
        assert mrc.data.shape == (3, 48, 48)


def test_extending_a_session_appends_and_keeps_earlier_micrographs(tmp_path):
    warp = tmp_path / "warp"
    simulate(warp, particles=100, per_micrograph=50, box=48, pixel_size=3.0, views=3)
    first = (warp / "particles").iterdir().__next__()
    before = first.read_bytes()
    _, rows_before = star_rows(warp / f"allparticles_{MODEL}.star")

    written = simulate(warp, particles=200, per_micrograph=50, box=48, pixel_size=3.0, views=3)
    assert written == 2
    assert first.read_bytes() == before
    _, rows_after = star_rows(warp / f"allparticles_{MODEL}.star")
    assert rows_after[:100] == rows_before and len(rows_after) == 200


def test_changing_the_box_rewrites_every_stack(tmp_path):
    warp = tmp_path / "warp"
    simulate(warp, particles=100, per_micrograph=50, box=48, pixel_size=3.0, views=3)
    simulate(warp, particles=100, per_micrograph=50, box=56, pixel_size=3.0, views=3)
    assert read_settings_values(warp)["Picking"]["BoxSize"] == "56"
    for stack in (warp / "particles").glob("*.mrcs"):
        with mrcfile.open(stack) as mrc:
            assert mrc.data.shape[1:] == (56, 56)


def test_particles_are_normalised_with_white_protein(tmp_path):
    warp = tmp_path / "warp"
    simulate(warp, particles=200, per_micrograph=200, box=48, pixel_size=3.0, snr=10.0, views=2)
    with mrcfile.open(next((warp / "particles").glob("*.mrcs"))) as mrc:
        images = mrc.data.astype(np.float64)
    y, x = np.mgrid[:48, :48] - 24
    centre = x**2 + y**2 < 8**2
    assert images[:, centre].mean() > images[:, ~centre].mean()  # protein white, as Warp exports


def test_write_settings_overrides_one_parameter_and_keeps_the_rest(tmp_path):
    warp = tmp_path / "warp"
    simulate(warp, particles=50, per_micrograph=50, box=48, pixel_size=3.0, views=2)
    write_settings(warp, DoExport=False)
    values = read_settings_values(warp)
    assert values["Picking"]["DoExport"] == "False" and values["Picking"]["BoxSize"] == "48"
