import numpy as np
import pytest

from live2d import cistem_star
from live2d.cistem_star import StarFormatError, read_star, write_star

# Two lines exactly as cisTEM 2's refine2d writes them (from ../shared/cistem-interface.md).
# cisTEM writes a single space on its blank header lines; keep them (\x20).
CISTEM_OUTPUT = """# Written by cisTEM Version 2.0.0-alpha-375-1a39ccb-dirty on 2026-11-23 21:56:48
#
\x20
data_
\x20
loop_
_cisTEMPositionInStack #1
_cisTEMAnglePsi #2
_cisTEMXShift #3
_cisTEMYShift #4
_cisTEMDefocus1 #5
_cisTEMDefocus2 #6
_cisTEMDefocusAngle #7
_cisTEMPhaseShift #8
_cisTEMOccupancy #9
_cisTEMLogP #10
_cisTEMSigma #11
_cisTEMScore #12
_cisTEMScoreChange #13
_cisTEMPixelSize #14
_cisTEMMicroscopeVoltagekV #15
_cisTEMMicroscopeCsMM #16
_cisTEMAmplitudeContrast #17
_cisTEMBeamTiltX #18
_cisTEMBeamTiltY #19
_cisTEMImageShiftX #20
_cisTEMImageShiftY #21
_cisTEMBest2DClass #22
#    POS     PSI       SHX       SHY      DF1      DF2  ANGAST  PSHIFT     OCC      LogP      SIGMA   SCORE  CHANGE    PSIZE    VOLT      Cs    AmpC  BTILTX  BTILTY  ISHFTX  ISHFTY 2DCLS 
       1  218.29     -0.00      0.00  13419.4  12971.7  157.85    0.00   84.08      -753   100.0000  113.05  113.05  2.00000  300.00    2.70  0.0700   0.000   0.000   0.000   0.000     5 
       2   15.00     -3.50      1.25  13419.4  12971.7  157.85    0.00   99.10      -712    98.5000   90.00   -2.00  2.00000  300.00    2.70  0.0700   0.000   0.000   0.000   0.000    -3 
"""  # noqa: W291, E501


def test_reads_cistem_output_and_writes_it_back_byte_for_byte(tmp_path):
    table = cistem_star.parse_star(CISTEM_OUTPUT)
    assert table["2DCLS"].tolist() == [5, -3]
    assert table["PSI"].tolist() == [218.29, 15.0] and table["LogP"].tolist() == [-753, -712]
    write_star(tmp_path / "out.star", table)
    written = (tmp_path / "out.star").read_text()
    data_lines = [line for line in CISTEM_OUTPUT.splitlines() if line.startswith("   ")]
    assert written.splitlines()[-2:] == data_lines  # same formats, trailing space included
    labels = [line for line in written.splitlines() if line.startswith("_cisTEM")]
    assert all(line.split()[1].startswith("#") for line in labels)  # cisTEM needs "label #N"


def test_data_block_ends_at_first_empty_line_and_unknown_labels_are_kept():
    text = CISTEM_OUTPUT.replace("_cisTEMBest2DClass #22", "_cisTEMBest2DClass #22\n_myExtra #23")
    lines = text.splitlines()
    lines = [line + " 7" if line.startswith("   ") else line for line in lines]
    table = cistem_star.parse_star("\n".join(lines[:-1]) + "\n\n" + lines[-1] + "\n")
    assert len(table) == 1 and table["_myExtra"].tolist() == [7]


def test_truncated_file_is_reported_not_misread(tmp_path):
    cut = CISTEM_OUTPUT[: CISTEM_OUTPUT.rindex("   2") + 40]
    with pytest.raises(StarFormatError, match="fewer than 22 fields"):
        cistem_star.parse_star(cut, "cut.star")
    with pytest.raises(StarFormatError, match="no loop_"):
        cistem_star.parse_star("data_\n", "empty.star")
    with pytest.raises(StarFormatError, match="not found"):
        read_star(tmp_path / "missing.star")


def test_provenance_column_round_trips_and_required_columns_are_enforced(tmp_path):
    table = cistem_star.new_table(3)
    table["DF1"] = table["DF2"] = 15000.0
    table["PSIZE"], table["VOLT"] = 1.5, 300.0
    table["ORIGNAME"] = [f"{i:07d}@particles/movie_{i}_BoxNet.mrcs" for i in (1, 2, 3)]
    write_star(tmp_path / "s.star", table)
    back = read_star(tmp_path / "s.star")
    assert back["ORIGNAME"].tolist() == table["ORIGNAME"].tolist()
    assert back["POS"].tolist() == [1, 2, 3] and np.allclose(back["DF1"], 15000.0)
    with pytest.raises(StarFormatError, match="PSIZE"):
        write_star(tmp_path / "bad.star", table.drop(columns=["PSIZE"]))


def test_a_growing_star_is_parsed_only_where_it_grew(tmp_path, monkeypatch):
    path = tmp_path / "particles.star"
    table = cistem_star.new_table(6)
    table["PSI"] = np.arange(6) * 10.0
    write_star(path, table.iloc[:4])
    parsed: list[int] = []
    parse = cistem_star.parse_star
    monkeypatch.setattr(cistem_star, "parse_star",
                        lambda text, name="": parsed.append(text.count("\n")) or parse(text, name))
    first = cistem_star.read_growing_star(path)
    assert first.equals(read_star(path))
    whole = parsed[-1]
    rows = cistem_star.format_rows(table.iloc[4:], cistem_star.columns_of(table))
    with open(path, "a") as handle:  # appended, the last row still being written
        handle.write(rows[:-5])
    grown = cistem_star.read_growing_star(path)
    assert len(grown) == 5 and parsed[-1] < whole  # the header and the one new row
    with open(path, "a") as handle:
        handle.write(rows[-5:])
    assert cistem_star.read_growing_star(path).equals(read_star(path))
    assert list(cistem_star.read_growing_star(path)["PSI"]) == [0, 10, 20, 30, 40, 50]
    grown["PSI"] = -1.0  # the caller's copy
    assert cistem_star.read_growing_star(path)["PSI"].iloc[0] == 0
    # rewritten in place (a store emptied): a new version reads it whole again
    write_star(path, table.iloc[:2])
    assert len(cistem_star.read_growing_star(path, version="2")) == 2
    assert cistem_star.read_growing_star(path, version="2").equals(read_star(path))
    # only the bytes the writer committed
    assert len(cistem_star.read_growing_star(path, length=len(path.read_bytes()) - 1,
                                             version="2")) == 1


def test_only_the_latest_growing_stars_stay_parsed(tmp_path):
    paths = [tmp_path / f"store_{i}.star" for i in range(cistem_star.GROWING_KEPT + 1)]
    for path in paths:
        write_star(path, cistem_star.new_table(3))
        assert len(cistem_star.read_growing_star(path)) == 3
    kept = {p.resolve() for p in paths[1:]}
    assert kept <= set(cistem_star._GROWING) and paths[0].resolve() not in cistem_star._GROWING
