"""`live2d simulate` writes a Warp folder as Warp lays it out, plus the truth beside it."""

import csv
import xml.etree.ElementTree as ET

import mrcfile
import numpy as np
import pytest
import torch
from atomic_model import write_tiny_model

from live2d.alerts import read_alerts
from live2d.cli import main as cli_main
from live2d.epu import micrograph_origin, read_hole_squares, read_square_positions
from live2d.evaluate import model_phantom
from live2d.imaging import rotate
from live2d.junk import JUNK_KINDS, render_junk
from live2d.model_projection import ModelPhantom, read_atoms
from live2d.phantom import Phantom, microscope_images
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


def read_truth(warp):
    with open(truth_dir_for(warp) / "particles.csv") as handle:
        return list(csv.DictReader(handle))


def test_junk_and_off_centre_picks_are_recorded_in_the_truth(tmp_path):
    warp = tmp_path / "warp"
    assert cli_main(["simulate", str(warp), "--particles", "400", "--per-micrograph", "200",
                     "--box", "48", "--pixel-size", "3", "--views", "3", "--junk", "0.3",
                     "--off-centre", "6"]) == 0
    records = read_truth(warp)
    kinds = [r["kind"] for r in records]
    assert set(kinds) == {"particle", *JUNK_KINDS}
    assert 0.2 < 1 - kinds.count("particle") / len(kinds) < 0.4
    junk = [r for r in records if r["kind"] != "particle"]
    assert all(int(r["view"]) == -1 for r in junk)
    offsets = [np.hypot(float(r["shift_x"]), float(r["shift_y"])) / 3.0 for r in records
               if r["kind"] == "particle"]
    assert 4.5 < max(offsets) <= 6.0 + 1e-6  # pixels, up to --off-centre


def test_without_junk_every_pick_is_a_particle_near_the_centre(tmp_path):
    warp = tmp_path / "warp"
    simulate(warp, particles=200, per_micrograph=200, box=48, pixel_size=3.0, views=3)
    records = read_truth(warp)
    assert {r["kind"] for r in records} == {"particle"}
    diameter = 0.65 * 48 * 3.0
    assert max(np.hypot(float(r["shift_x"]), float(r["shift_y"])) for r in records) \
        <= 0.08 * diameter + 1e-6


def test_each_kind_of_junk_looks_like_it(tmp_path):
    phantom = Phantom(64, 3.0, n_views=4)
    rng = np.random.default_rng(1)
    draws = {kind: [render_junk(kind, phantom.views, rng, phantom._render_one)
                    for _ in range(20)] for kind in JUNK_KINDS}
    view_mass = phantom.views.sum(axis=(1, 2)).mean()
    assert all(np.ptp(image) < 0.2 for image in draws["empty"])  # nothing but a faint gradient
    assert all(image.max() > 2.5 for image in draws["contamination"])  # denser than protein
    for image in draws["carbon"]:  # a step: one side far denser than the other
        values = np.sort(image.ravel())
        assert values[-len(values) // 5:].mean() - values[: len(values) // 5].mean() > 0.8
    assert all(image.sum() > 1.5 * view_mass for image in draws["aggregate"])  # 2-4 particles
    with pytest.raises(ValueError, match="unknown junk kind"):
        render_junk("ice cream", phantom.views, rng, phantom._render_one)


def kinds_by_square(warp, epu):
    """The truth's kinds of pick on each grid square of the EPU folder ``epu``."""
    squares = read_hole_squares(epu)
    kinds: dict[str, list[str]] = {}
    for record in read_truth(warp):
        hole = micrograph_origin(record["image_name"].split("/")[-1]).foil_hole
        kinds.setdefault(squares[hole], []).append(record["kind"])
    return kinds


def test_a_bad_square_is_mostly_empty_ice_and_the_epu_folder_maps_every_hole(tmp_path):
    warp, epu = tmp_path / "warp", tmp_path / "epu"
    # 2 holes to a square: 8 micrographs each, so 24 micrographs make three squares.
    assert cli_main(["simulate", str(warp), "--particles", "240", "--per-micrograph", "10",
                     "--box", "32", "--pixel-size", "4", "--views", "2", "--epu", str(epu),
                     "--holes-per-square", "2", "--bad-square", "2"]) == 0
    files = sorted(epu.glob("Images-Disc1/GridSquare_*/Data/FoilHole_*_Data_*.xml"))
    assert len(files) == 24  # one acquisition file per movie, as EPU writes them
    ET.fromstring(files[0].read_bytes())  # well-formed XML
    _, rows = star_rows(warp / f"allparticles_{MODEL}.star")
    movies = {row[-1] for row in rows}
    assert {f.stem for f in files} == {m.removesuffix("_fractions.tif") for m in movies}
    kinds = kinds_by_square(warp, epu)
    first, bad, third = sorted(kinds)
    assert [len(kinds[s]) for s in (first, bad, third)] == [80, 80, 80]
    assert set(kinds[first]) == set(kinds[third]) == {"particle"}
    empty = kinds[bad].count("empty") / len(kinds[bad])
    assert 0.7 < empty < 1.0 and set(kinds[bad]) == {"particle", "empty"}


def test_each_square_gets_a_stage_position_on_a_raster_kept_as_the_session_grows(tmp_path):
    from live2d.simulate import SQUARE_PITCH_M, SQUARES_PER_ROW

    warp, epu = tmp_path / "warp", tmp_path / "epu"
    options = {"per_micrograph": 10, "box": 16, "pixel_size": 4.0, "views": 2, "epu_dir": epu,
               "holes_per_square": 1}
    simulate(warp, particles=120, **options)  # 12 micrographs: 3 squares of 4
    images = sorted(epu.glob("Images-Disc1/GridSquare_*/GridSquare_*.xml"))
    assert len(images) == 3
    root = ET.fromstring(images[0].read_bytes())  # EPU's namespaces, as real files have them
    assert root.tag == "{http://schemas.datacontract.org/2004/07/Fei.SharedObjects}MicroscopeImage"
    before = {path: path.read_bytes() for path in images}
    simulate(warp, particles=240, **options)  # 6 squares: past the first row
    after = sorted(epu.glob("Images-Disc1/GridSquare_*/GridSquare_*.xml"))
    assert len(after) == 6 and all(path.read_bytes() == data for path, data in before.items())
    pitch = SQUARE_PITCH_M * 1e6
    positions = read_square_positions(epu)
    assert [positions[p.parent.name.removeprefix("GridSquare_")] for p in after] == [
        pytest.approx((pitch * (n % SQUARES_PER_ROW), -pitch * (n // SQUARES_PER_ROW)))
        for n in range(6)]


def test_a_session_with_a_bad_square_grows_in_whole_micrographs(tmp_path):
    warp, epu = tmp_path / "warp", tmp_path / "epu"
    options = {"per_micrograph": 10, "box": 32, "pixel_size": 4.0, "views": 2, "epu_dir": epu,
               "holes_per_square": 1, "bad_square": 2}
    simulate(warp, particles=60, **options)  # 4 micrographs on square 1, 2 on the bad one
    before = {path.name: path.read_bytes() for path in (warp / "particles").iterdir()}
    truth_before = read_truth(warp)
    assert simulate(warp, particles=120, **options) == 6
    after = {path.name: path.read_bytes() for path in (warp / "particles").iterdir()}
    assert len(after) == 12 and all(after[name] == data for name, data in before.items())
    assert read_truth(warp)[:60] == truth_before
    assert [len(v) for _, v in sorted(kinds_by_square(warp, epu).items())] == [40, 40, 40]


def test_the_bad_square_of_a_short_session_is_the_worst_and_fires_the_alert(tmp_path, capsys):
    from test_session import SMALL_ARGS

    warp, epu = tmp_path / "warp", tmp_path / "epu"
    # Three squares of 8 micrographs: as many as the bad-square rule needs to judge one.
    simulate(warp, particles=480, per_micrograph=20, box=48, pixel_size=3.0, snr=0.5, views=4,
             epu_dir=epu, holes_per_square=2, bad_square=2)
    assert cli_main(["run", str(warp), "--once", "--epu", str(epu), *SMALL_ARGS]) == 0
    capsys.readouterr()
    assert cli_main(["yield", str(warp), "--by", "square", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [int(row["micrographs"]) for row in rows] == [8, 8, 8]
    fraction = {row["grid_square"]: float(row["good_fraction"]) for row in rows}
    bad = sorted(fraction)[1]
    assert all(fraction[bad] < 0.5 * fraction[square] for square in fraction if square != bad)
    assert [a.key for a in read_alerts(warp / "classification")] == [f"square:{bad}"]
    assert cli_main(["status", str(warp)]) == 0
    assert f"GridSquare_{bad}: " in capsys.readouterr().out


def test_an_atomic_model_gives_a_continuum_of_views_whose_truth_renders_each_particle(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.pdb")
    warp = tmp_path / "warp"
    # SNR so high that a pick is its clean image through the CTF, to compare with the truth.
    assert cli_main(["simulate", str(warp), "--model", str(model), "--particles", "80",
                     "--per-micrograph", "40", "--box", "48", "--pixel-size", "2", "--snr",
                     "1e6", "--junk", "0.25", "--seed", "3"]) == 0
    truth = truth_dir_for(warp)
    with open(truth / "particles.csv") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 80
    particles = [r for r in records if r["kind"] == "particle"]
    junk = [r for r in records if r["kind"] != "particle"]
    assert junk and all(int(r["view"]) == -1 for r in junk)
    assert all(int(r["view"]) == 0 for r in particles)
    euler = np.array([[float(r["rot"]), float(r["tilt"]), float(r["psi"])] for r in particles])
    # Uniform orientations: viewing directions all over the sphere, none twice.
    assert len(np.unique(np.round(euler[:, :2], 3), axis=0)) == len(particles)
    assert np.all((euler[:, 1] >= 0) & (euler[:, 1] <= 180))
    assert np.cos(np.radians(euler[:, 1])).min() < -0.5 < 0.5 < np.cos(
        np.radians(euler[:, 1])).max()

    phantom = model_phantom(truth)  # rebuilt from the record, as scoring does
    assert phantom is not None and phantom.box == 48
    first = [r for r in particles if r["image_name"].split("@")[1] == particles[0]
             ["image_name"].split("@")[1]]
    clean = phantom.render(np.array([[float(r["rot"]), float(r["tilt"]), float(r["psi"])]
                                     for r in first]),
                           np.array([[float(r["shift_x"]), float(r["shift_y"])] for r in first]))
    expected = microscope_images(clean, np.ones(len(first), dtype=bool),
                                 np.random.default_rng(0), pixel_size=2.0,
                                 diameter=phantom.diameter, snr=1e6,
                                 defocus_u=float(first[0]["defocus_u"]),
                                 defocus_v=float(first[0]["defocus_v"]),
                                 defocus_angle=float(first[0]["defocus_angle"]), voltage=300.0,
                                 cs=2.7, amplitude_contrast=0.07)
    with mrcfile.open(warp / first[0]["image_name"].split("@")[1]) as mrc:
        stack = np.array(mrc.data)
    for row, image in zip(first, expected, strict=True):
        index = int(row["image_name"].split("@")[0]) - 1
        assert np.corrcoef(stack[index].ravel(), image.ravel())[0, 1] > 0.99


def test_a_model_projection_turns_by_psi_as_the_phantom_convention_says(tmp_path):
    phantom = ModelPhantom(write_tiny_model(tmp_path / "tiny.pdb"), 48, 2.0, n_views=2)
    upright, turned = phantom.project(np.array([[30.0, 70.0, 0.0], [30.0, 70.0, 50.0]]))
    rotated = rotate(torch.from_numpy(upright[None]), np.array([50.0]))[0].numpy()
    assert np.corrcoef(rotated.ravel(), turned.ravel())[0, 1] > 0.98
    assert np.corrcoef(upright.ravel(), turned.ravel())[0, 1] < 0.95
    # Centred on the centre of mass, where the phantom's views turn about.
    axis = np.arange(48) - 24
    mass = upright.sum()
    assert abs((upright.sum(0) * axis).sum() / mass) < 0.5
    assert abs((upright.sum(1) * axis).sum() / mass) < 0.5


def test_a_model_that_is_not_one_or_does_not_fit_is_refused(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(ValueError, match="no ATOM"):
        read_atoms(empty)
    with pytest.raises(FileNotFoundError):
        read_atoms(tmp_path / "missing.pdb")
    with pytest.raises(ValueError, match="does not fit"):
        ModelPhantom(write_tiny_model(tmp_path / "tiny.pdb", radius=60.0), 32, 1.0)
