"""Where each particle came from (EPU's names and session folder) and the good particles per
micrograph, foil hole and grid square: the tables, the command and the session's CSVs."""

import collections
import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from live2d import cistem_star
from live2d.cli import main as cli_main
from live2d.collection_yield import COLUMNS, YieldError, score_particles, yield_tables
from live2d.epu import MicrographOrigin, micrograph_origin, read_hole_squares
from live2d.history import CycleHistory, CycleRecord
from live2d.output_folder import SESSION_STATE, YIELD_TABLES
from live2d.selection import SelectionState
from live2d.store import ParticleStore

BOX = 8
EPU_MOVIE = "FoilHole_24697853_Data_24671885_24671887_20231104_084015_fractions"
# Micrograph -> the classes of its particles in cycle 1 (None: picked since, not classified).
MICROGRAPHS = {
    "/data/GridSquare_111/Data/FoilHole_501_Data_9_11_20231104_084015_fractions.tif":
        [1, 1, 2, 3],
    "FoilHole_501_Data_9_11_20231104_085015_fractions.tif": [1, 0],
    "FoilHole_502_Data_9_11_20231104_083000_fractions.tif": [3, 1, 2],
    "mic_0001.mrc": [None, None],
}
A, B, C, D = MICROGRAPHS


def test_epu_names_give_hole_and_time_and_a_path_the_square():
    assert micrograph_origin(f"{EPU_MOVIE}.tiff") == MicrographOrigin(
        f"{EPU_MOVIE}.tiff", foil_hole="24697853", acquired="2023-11-04T08:40:15Z")
    in_square = f"D:\\EPU\\Images-Disc1\\GridSquare_24668021\\Data\\{EPU_MOVIE}.mrc"
    origin = micrograph_origin(in_square)
    assert (origin.grid_square, origin.foil_hole) == ("24668021", "24697853")
    assert micrograph_origin("FoilHole_00003_Data.tif").foil_hole == "00003"  # no time: none
    assert micrograph_origin("FoilHole_00003_Data.tif").acquired == ""


@pytest.mark.parametrize("name", ["20231104_Grid3_0012.tif", "sq04_hole17_00042.mrc",
                                  "mic_0001.mrc", "", "GridSquare_12_of_many.tif"])
def test_other_names_give_neither_hole_nor_square(name):
    assert micrograph_origin(name) == MicrographOrigin(name)


def write_epu_folder(root, squares: dict[str, list[str]]) -> None:
    for square, holes in squares.items():
        data = root / "Images-Disc1" / f"GridSquare_{square}" / "Data"
        data.mkdir(parents=True, exist_ok=True)
        for hole in holes:
            (data / f"FoilHole_{hole}_Data_9_11_20231104_084015.xml").write_text("<xml/>")
            (data / f"FoilHole_{hole}_Data_9_11_20231104_084015.jpg").write_bytes(b"")


def test_the_hole_to_square_map_is_read_from_the_epu_folder_as_it_grows(tmp_path):
    assert read_hole_squares(tmp_path) == {}
    write_epu_folder(tmp_path, {"111": ["501"]})
    (tmp_path / "Images-Disc1" / "GridSquare_111" / "GridSquare_20231104_083000.xml").write_text("")
    assert read_hole_squares(tmp_path) == {"501": "111"}
    write_epu_folder(tmp_path, {"222": ["502", "503"]})
    assert read_hole_squares(tmp_path) == {"501": "111", "502": "222", "503": "222"}


# A grid square's image as EPU 3.x writes it (shortened: the elements around the stage kept,
# with their nesting and namespaces): X and Y in metres.
SQUARE_IMAGE = """<?xml version="1.0" encoding="utf-8"?>
<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects"
                 xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <name>Empty</name>
  <uniqueID>510c9950-f76a-44a5-a234-3e8e26c7612c</uniqueID>
  <CustomData xmlns:a="http://schemas.microsoft.com/2003/10/Serialization/Arrays">
    <a:KeyValueOfstringanyType><a:Key>DoseOnCamera</a:Key>
      <a:Value i:type="b:double" xmlns:b="http://www.w3.org/2001/XMLSchema">61.15</a:Value>
    </a:KeyValueOfstringanyType>
  </CustomData>
  <SpatialScale><offset><x><numericValue>7</numericValue></x></offset></SpatialScale>
  <microscopeData>
    <acquisition><acquisitionDateTime>2025-01-08T15:11:49+00:00</acquisitionDateTime>
      <camera><Binning xmlns:a="http://schemas.datacontract.org/2004/07/System.Drawing">
        <a:x>2</a:x><a:y>2</a:y></Binning></camera>
    </acquisition>
    <optics><BeamShift xmlns:a="http://schemas.datacontract.org/2004/07/Fei.Types">
      <a:_x>0</a:_x><a:_y>0</a:_y></BeamShift></optics>
    <stage>
      <Holder>Unspecified</Holder>
      <Position>
        <A>-0.00021334249972001129</A>
        <B>0.0168283325</B>
        <X>{x}</X>
        <Y>{y}</Y>
        <Z>8.5697261603200029E-05</Z>
      </Position>
      <SampleLoader>None</SampleLoader>
    </stage>
  </microscopeData>
</MicroscopeImage>
"""


def write_square_image(epu_dir, square, taken, text):
    folder = epu_dir / "Images-Disc1" / f"GridSquare_{square}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"GridSquare_{taken}.xml").write_text(text, encoding="utf-8")
    return folder / f"GridSquare_{taken}.xml"


def test_each_square_has_its_stage_position_from_its_newest_image(tmp_path, monkeypatch):
    from live2d import epu

    assert epu.read_square_positions(tmp_path / "not there") == {}
    write_square_image(tmp_path, "111", "20250108_151151",
                       SQUARE_IMAGE.format(x="-9.8805664700000079E-05", y="0.000164716208"))
    write_square_image(tmp_path, "222", "20250108_150000", SQUARE_IMAGE.format(x="1", y="1"))
    write_square_image(tmp_path, "222", "20250108_152955",  # taken again: this one counts
                       SQUARE_IMAGE.format(x="2.5E-05", y="-4E-05"))
    positions = epu.read_square_positions(tmp_path)
    assert positions.keys() == {"111", "222"}
    assert positions["111"] == pytest.approx((-98.8056647, 164.716208))
    assert positions["222"] == pytest.approx((25.0, -40.0))

    # Read again as EPU goes on: only the new square's file is parsed.
    parsed = []
    parse = epu._parse_stage_position
    monkeypatch.setattr(epu, "_parse_stage_position", lambda path: parsed.append(path.name)
                        or parse(path))
    write_square_image(tmp_path, "333", "20250108_160000", SQUARE_IMAGE.format(x="0", y="0"))
    assert epu.read_square_positions(tmp_path) == {**positions, "333": (0.0, 0.0)}
    assert parsed == ["GridSquare_20250108_160000.xml"]


def test_a_half_written_or_positionless_square_image_gives_no_position_said_once(tmp_path,
                                                                                caplog):
    from live2d.epu import read_square_positions

    whole = SQUARE_IMAGE.format(x="1E-05", y="2E-05")
    half = write_square_image(tmp_path, "111", "20250108_151151", whole[:len(whole) // 2])
    write_square_image(tmp_path, "222", "20250108_152955",
                       whole.replace("<Position>", "<Elsewhere>")
                       .replace("</Position>", "</Elsewhere>"))
    write_square_image(tmp_path, "333", "20250108_153000", "")  # created, nothing written yet
    write_square_image(tmp_path, "444", "20250108_154000",
                       SQUARE_IMAGE.format(x="3E-05", y="4E-05"))
    with caplog.at_level("WARNING", logger="live2d"):
        for _ in range(3):
            assert read_square_positions(tmp_path) == {"444": pytest.approx((30.0, 40.0))}
    said = [r.getMessage() for r in caplog.records if "gives no stage position" in r.getMessage()]
    assert len(said) == 3
    assert [sum(f"GridSquare_{s}" in m for m in said) for s in ("111", "222", "333")] == [1, 1, 1]
    assert "no microscopeData/stage/Position" in next(m for m in said if "GridSquare_222" in m)

    half.write_text(whole, encoding="utf-8")  # EPU finishes writing it
    assert read_square_positions(tmp_path)["111"] == pytest.approx((10.0, 20.0))


def test_the_grid_map_carries_each_squares_stage_position(tmp_path):
    from live2d.collection_yield import grid_map, read_grid_map, table_csv

    squares = [{"grid_square": name, "micrographs": 1, "particles": 10, "good_particles": 5,
                "good_fraction": 0.5, "first_seen": f"2024-01-01T00:0{i}:00Z", "last_seen": ""}
               for i, name in enumerate(("111", "222"))]
    out = tmp_path / "out"
    out.mkdir()
    (out / "yield_squares.csv").write_text(table_csv(squares, "square"))
    (out / "yield_holes.csv").write_text(table_csv([], "hole"))
    (out / "yield_micrographs.csv").write_text(table_csv([], "micrograph"))
    assert [(s["x_um"], s["y_um"]) for s in grid_map(out)["squares"]] == [(None, None)] * 2
    shown = grid_map(out, {"222": (12.345678, -80.0000001)})["squares"]
    assert [(s["x_um"], s["y_um"]) for s in shown] == [(None, None), (12.3, -80.0)]

    write_square_image(tmp_path / "epu", "111", "20250108_151151",
                       SQUARE_IMAGE.format(x="-8E-05", y="1.6E-04"))
    shown = read_grid_map(out, tmp_path / "epu")["squares"]
    assert [(s["x_um"], s["y_um"]) for s in shown] == [(-80.0, 160.0), (None, None)]


@pytest.fixture
def output(tmp_path):
    """An output folder by hand: 11 particles in 4 micrographs, cycle 1 classified the first
    9 into 3 classes (scores propose 1 and 3), and class 3 is marked junk: only class 1 is
    good."""
    folder = tmp_path / "out"
    store = ParticleStore(folder)
    store.reset(1.5, BOX)
    names = [name for name, classes in MICROGRAPHS.items() for _ in classes]
    table = pd.DataFrame({"DF1": 15000.0, "DF2": 14000.0, "ANGAST": 0.0, "PSIZE": 1.5,
                          "VOLT": 300.0, "Cs": 2.7, "AmpC": 0.07, "MICROGRAPH": names,
                          "ORIGNAME": [f"{i + 1:06d}@p.mrcs" for i in range(len(names))]})
    store.append(np.zeros((len(names), BOX, BOX), dtype=np.float32), table)
    classes = [k for ks in MICROGRAPHS.values() for k in ks if k is not None]
    star = cistem_star.new_table(len(classes))
    star["2DCLS"] = classes
    cistem_star.write_star(folder / "cycle_001.star", star)
    record = CycleRecord(
        number=1, job=1, job_type="abinit", block="startup", block_cycle=1, job_cycle=2,
        job_cycles=3, high_res=20.0, fraction=1.0, particles=len(classes),
        class_counts=[4, 2, 2], started=0.0, finished=1.0, engine="builtin (test)",
        generation=0, particles_per_second=100.0, classes="cycle_001.mrc",
        star="cycle_001.star", thumbnails="thumbnails/cycle_001", class_score=[0.9, 0.2, 0.8])
    CycleHistory(folder).append(record)
    SelectionState(cycle=1, job=1, marks={"3": "junk"}).save(folder)
    (folder / SESSION_STATE).write_text("{}")
    return folder


def figures(micrographs, particles, good, first, last):
    return {"micrographs": micrographs, "particles": particles, "good_particles": good,
            "good_fraction": round(good / particles, 4), "first_seen": first, "last_seen": last}


def test_every_pick_counts_and_the_selected_classes_are_good(output):
    tables = yield_tables(score_particles(output, ParticleStore(output).read_table()))
    assert tables["micrograph"] == [
        {"grid_square": "111", "foil_hole": "501", "micrograph": A,
         **figures(1, 4, 2, "2023-11-04T08:40:15Z", "2023-11-04T08:40:15Z")},
        # the hole's square from its other movie's path
        {"grid_square": "111", "foil_hole": "501", "micrograph": B,
         **figures(1, 2, 1, "2023-11-04T08:50:15Z", "2023-11-04T08:50:15Z")},
        {"grid_square": "", "foil_hole": "502", "micrograph": C,
         **figures(1, 3, 1, "2023-11-04T08:30:00Z", "2023-11-04T08:30:00Z")},
        {"grid_square": "", "foil_hole": "", "micrograph": D, **figures(1, 2, 0, "", "")},
    ]
    assert tables["hole"] == [
        {"grid_square": "111", "foil_hole": "501",
         **figures(2, 6, 3, "2023-11-04T08:40:15Z", "2023-11-04T08:50:15Z")},
        {"grid_square": "", "foil_hole": "502",
         **figures(1, 3, 1, "2023-11-04T08:30:00Z", "2023-11-04T08:30:00Z")},
    ]
    assert tables["square"] == [
        {"grid_square": "111", **figures(2, 6, 3, "2023-11-04T08:40:15Z",
                                         "2023-11-04T08:50:15Z")}]
    squares = yield_tables(score_particles(output, ParticleStore(output).read_table()),
                           {"502": "222"})["square"]
    assert [(r["grid_square"], r["particles"], r["good_particles"]) for r in squares] == \
        [("111", 6, 3), ("222", 3, 1)]


def cli_csv(capsys, *args) -> tuple[str, list[list[str]]]:
    """The command's CSV: its header line as written, and its rows."""
    assert cli_main(["yield", *map(str, args), "--format", "csv"]) == 0
    header, rows = capsys.readouterr().out.split("\n", 1)
    return header, list(csv.reader(io.StringIO(rows)))


def test_the_command_writes_each_table_with_its_columns(output, tmp_path, capsys):
    epu = tmp_path / "epu"
    write_epu_folder(epu, {"111": ["501"], "222": ["502"]})
    header, squares = cli_csv(capsys, output, "--by", "square", "--epu", epu)
    assert header == \
        "grid_square,micrographs,particles,good_particles,good_fraction,first_seen,last_seen"
    assert squares == [
        ["111", "2", "6", "3", "0.5", "2023-11-04T08:40:15Z", "2023-11-04T08:50:15Z"],
        ["222", "1", "3", "1", "0.3333", "2023-11-04T08:30:00Z", "2023-11-04T08:30:00Z"]]
    header, holes = cli_csv(capsys, output, "--by", "hole")
    assert header == ("grid_square,foil_hole,micrographs,particles,good_particles,"
                      "good_fraction,first_seen,last_seen")
    assert holes[1] == ["", "502", "1", "3", "1", "0.3333", "2023-11-04T08:30:00Z",
                        "2023-11-04T08:30:00Z"]
    header, micrographs = cli_csv(capsys, output, "--by", "micrograph")
    assert header == ("grid_square,foil_hole,micrograph,micrographs,particles,"
                      "good_particles,good_fraction,first_seen,last_seen")
    assert micrographs[-1] == ["", "", "mic_0001.mrc", "1", "2", "0", "0.0", "", ""]
    assert cli_main(["yield", str(output), "--by", "hole", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["good_fraction"] == 0.5
    assert cli_main(["yield", str(output)]) == 0
    assert "111" in capsys.readouterr().out


def test_the_command_says_when_there_is_no_session_or_no_scored_cycle(output, tmp_path, capsys):
    assert cli_main(["yield", str(tmp_path / "nowhere")]) == 1
    assert "no session.json" in capsys.readouterr().err
    (output / "history.jsonl").unlink()
    assert cli_main(["yield", str(output)]) == 1
    assert "no cycle with class scores" in capsys.readouterr().err
    with pytest.raises(YieldError):
        score_particles(output, ParticleStore(output).read_table())


def test_a_session_writes_the_three_tables_after_each_scored_cycle(tmp_path, monkeypatch):
    from test_session import SMALL_ARGS, small_session

    import live2d.session
    from live2d.simulate import write_epu_acquisition

    scored = []

    def spied(folder, table, record, curate=True):
        scored.append((record.job_cycle, record.job_cycles, curate))
        return score_particles(folder, table, record, curate)

    monkeypatch.setattr(live2d.session, "score_particles", spied)
    warp, epu = tmp_path / "warp", tmp_path / "epu"
    small_session(warp)
    for index in range(4):  # the simulator's EPU folder for its 4 micrographs
        write_epu_acquisition(epu, index)
    assert cli_main(["run", str(warp), "--once", "--epu", str(epu), *SMALL_ARGS]) == 0
    # The curation reads images: only the cycle the job ends with is curated.
    assert len(scored) >= 2
    assert [curate for _, _, curate in scored] == [cycle == cycles for cycle, cycles, _ in scored]
    assert scored[-1][2]
    out = warp / "classification"
    assert json.loads((out / SESSION_STATE).read_text())["epu_dir"] == str(epu.resolve())
    tables = {level: list(csv.DictReader(io.StringIO((out / name).read_text())))
              for level, name in YIELD_TABLES.items()}
    for level, name in YIELD_TABLES.items():
        header = next(csv.reader(io.StringIO((out / name).read_text())))
        assert tuple(header) == COLUMNS[level]
    assert len(tables["micrograph"]) == 4  # the simulator's EPU names: 4 movies of one hole
    assert sum(int(r["particles"]) for r in tables["micrograph"]) == 240
    assert [(r["foil_hole"], r["micrographs"], r["particles"]) for r in tables["hole"]] == \
        [("24697853", "4", "240")]
    assert [(r["grid_square"], r["micrographs"], r["particles"]) for r in tables["square"]] \
        == [("24668021", "4", "240")]  # from the EPU folder: the names do not say
    good = sum(int(r["good_particles"]) for r in tables["micrograph"])
    assert 0 <= good <= 240 and tables["hole"][0]["first_seen"] == "2023-11-04T08:40:15Z"


def test_the_simulator_writes_the_epu_folder_of_its_movies(tmp_path):
    from live2d.simulate import HOLES_PER_SQUARE, MICROGRAPHS_PER_HOLE, MODEL, simulate

    micrographs = MICROGRAPHS_PER_HOLE * (HOLES_PER_SQUARE + 1)  # a square and a hole more
    simulate(tmp_path / "warp", particles=2 * micrographs, per_micrograph=2, box=16,
             pixel_size=3.0, views=2, epu_dir=tmp_path / "epu")
    squares = read_hole_squares(tmp_path / "epu")
    assert len(squares) == HOLES_PER_SQUARE + 1
    assert sorted(collections.Counter(squares.values()).values()) == [1, HOLES_PER_SQUARE]
    star = (tmp_path / "warp" / f"allparticles_{MODEL}.star").read_text()
    holes = {micrograph_origin(line.split()[-1]).foil_hole for line in star.splitlines()
             if "FoilHole_" in line}
    assert holes == set(squares)  # every movie's hole has its square


def open_session(output, warp, **kwargs):
    from live2d.session import Session

    (warp).mkdir(exist_ok=True)  # Warp not started yet: nothing is imported
    return Session(warp, output, engine="builtin", **kwargs)


def test_the_epu_folder_is_kept_in_the_session_and_used_after_a_restart(output, tmp_path,
                                                                          capsys):
    epu = tmp_path / "epu"
    write_epu_folder(epu, {"111": ["501"], "222": ["502"]})
    (output / SESSION_STATE).unlink()  # the fixture's stand-in: a real session starts here
    session = open_session(output, tmp_path / "warp", epu_dir=epu)
    session.close()
    assert json.loads((output / SESSION_STATE).read_text())["epu_dir"] == str(epu.resolve())
    restarted = open_session(output, tmp_path / "warp")  # not told again
    try:
        restarted._write_yield(restarted.history[-1])
    finally:
        restarted.close()
    squares = list(csv.DictReader(io.StringIO((output / YIELD_TABLES["square"]).read_text())))
    assert [(r["grid_square"], r["good_particles"]) for r in squares] == [("111", "3"),
                                                                         ("222", "1")]
    _, rows = cli_csv(capsys, output, "--by", "square")  # the command, without --epu
    assert [row[0] for row in rows] == ["111", "222"]


def test_an_older_session_json_without_the_epu_folder_still_opens(output, tmp_path):
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp", epu_dir=tmp_path)
    session.close()
    state = json.loads((output / SESSION_STATE).read_text())
    del state["epu_dir"]
    (output / SESSION_STATE).write_text(json.dumps(state))
    session = open_session(output, tmp_path / "warp")
    session.close()
    assert session.state.epu_dir == ""


def test_a_missing_epu_folder_gives_per_micrograph_figures_and_one_log_line(output, tmp_path,
                                                                           capsys):
    (output / SESSION_STATE).unlink()
    session = open_session(output, tmp_path / "warp", epu_dir=tmp_path / "nowhere")
    try:
        for _ in range(2):
            session._write_yield(session.history[-1])
    finally:
        session.close()
    said = [line for line in (output / "live2d.log").read_text().splitlines()
            if "nowhere" in line]
    assert len(said) == 1 and "WARNING" in said[0] and "is not there" in said[0]
    micrographs = list(csv.DictReader(io.StringIO(
        (output / YIELD_TABLES["micrograph"]).read_text())))
    assert [r["particles"] for r in micrographs] == ["4", "2", "3", "2"]
    squares = list(csv.DictReader(io.StringIO((output / YIELD_TABLES["square"]).read_text())))
    assert [r["grid_square"] for r in squares] == ["111"]  # from a movie's path only
    _, rows = cli_csv(capsys, output, "--by", "micrograph")
    assert len(rows) == 4
