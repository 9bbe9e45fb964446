"""The session report: one self-contained HTML file for the facility's records, made from a
session's output folder without changing anything in it."""

import hashlib
import html
import re
from pathlib import Path

import pytest
from test_collection_yield import open_session
from test_session import SMALL_ARGS

from live2d.alerts import AlertBook
from live2d.cli import main as cli_main
from live2d.collection_yield import latest_scored_cycle, score_particles, yield_tables
from live2d.epu import read_hole_squares
from live2d.history import read_history
from live2d.selection import SelectionState
from live2d.simulate import MICROGRAPHS_PER_HOLE, simulate
from live2d.store import read_committed_table

PER_MICROGRAPH = 15
# Two grid squares: the simulator puts 4 holes of 4 movies in a square.
MICROGRAPHS = MICROGRAPHS_PER_HOLE * 5
ALERT = ("GridSquare_24668022: 12% good particles over 4 micrographs, against 81% for the "
         "session's squares")


def run_session(tmp: Path, epu: bool) -> Path:
    """A short simulated session classified by ``live2d run --once``; its output folder. With
    ``epu``, EPU's movie names and session folder; without, the movies named otherwise."""
    warp = tmp / "warp"
    simulate(warp, particles=MICROGRAPHS * PER_MICROGRAPH, per_micrograph=PER_MICROGRAPH, box=48,
             pixel_size=3.0, snr=0.5, views=4, epu_dir=tmp / "epu" if epu else None)
    if not epu:  # the micrograph column (the last) named as SerialEM or a script would
        for star in warp.glob("*particles_*.star"):
            star.write_text(re.sub(r"(\s)FoilHole_(\S+)$", r"\1movie_\2", star.read_text(),
                                   flags=re.M))
    epu_args = ["--epu", str(tmp / "epu")] if epu else []
    assert cli_main(["run", str(warp), "--once", *epu_args, *SMALL_ARGS]) == 0
    return warp / "classification"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """A classified session with EPU names over two grid squares, a class marked junk (so
    that the squares' good fractions are not all 100%) and an alert in force."""
    output = run_session(tmp_path_factory.mktemp("epu_session"), epu=True)
    latest = read_history(output)[-1]
    SelectionState(cycle=latest.number, job=latest.job, marks={"1": "junk"}).save(output)
    AlertBook(output).update(["square"], {"square:24668022": ALERT})
    return output


def report(folder: Path, to: Path, capsys) -> str:
    assert cli_main(["report", str(folder), "--to", str(to)]) == 0
    assert str(to) in capsys.readouterr().out
    return to.read_text(encoding="utf-8")


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_report_is_one_file_with_every_section_and_changes_nothing(session, tmp_path,
                                                                       capsys):
    warp = session.parent
    before = snapshot(warp)
    page = report(warp, tmp_path / "report.html", capsys)  # the Warp folder names it too
    assert snapshot(warp) == before  # only read: a running session is left alone
    assert list(tmp_path.iterdir()) == [tmp_path / "report.html"]

    # Self-contained: every src and href is a data URI, nothing is fetched from outside.
    links = re.findall(r"""(?:src|href)\s*=\s*['"]?([^'" >]*)""", page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert not re.search(r"https?://", page)
    assert "<style>" in page and "<link" not in page and "<script" not in page

    latest = read_history(session)[-1]
    gallery = re.findall(r"<img src='data:image/png;base64,[^']+' alt='class (\d+)'>", page)
    assert gallery == [str(k) for k in range(1, len(latest.class_counts) + 1)]
    for count in latest.class_counts:
        assert f"{count:,} particles" in page
    assert "class 1</b><br>" in page  # marked junk: not framed as selected
    assert "class 1</b> ✓ selected" not in page

    # The settings as the session keeps them (SMALL_ARGS), the alert, the summary.
    assert "<td>Initial particles per class</td><td>40</td>" in page
    assert "<td>Final high-res limit</td><td>12.0 Å</td>" in page
    assert html.escape(ALERT) in page
    assert f"<td>Cycles</td><td>{len(read_history(session))}</td>" in page
    assert "<td>Particles imported</td><td>300</td>" in page
    assert "1 Ab initio" in page and latest.engine in page

    # The squares with their good fractions, as live2d yield gives them.
    particles = score_particles(session, read_committed_table(session),
                                latest_scored_cycle(session))
    squares = yield_tables(particles, read_hole_squares(session.parent.parent / "epu"))["square"]
    assert [row["grid_square"] for row in squares] == ["24668021", "24668022"]
    assert len({row["good_fraction"] for row in squares} - {1.0}) >= 1  # the mark counts
    for row in squares:
        assert re.search(rf"<td>GridSquare_{row['grid_square']}</td>(<td[^>]*>[^<]*</td>){{3}}"
                         rf"<td>{row['good_fraction']:.0%}</td>", page)
    assert "Forecast" in page and "good particles per hour" in page


def test_a_session_without_epu_names_gives_per_micrograph_figures(tmp_path, capsys):
    output = run_session(tmp_path, epu=False)
    page = report(output, tmp_path / "report.html", capsys)
    assert "Yield per micrograph" in page and "GridSquare_" not in page
    assert page.count("<td>movie_") == MICROGRAPHS


def test_a_session_with_no_cycle_yet_says_there_are_no_classes(tmp_path, capsys):
    output = tmp_path / "out"
    open_session(output, tmp_path / "warp").close()  # started, Warp not yet: nothing imported
    page = report(output, tmp_path / "report.html", capsys)
    assert "No classes yet" in page and "No cycle with class scores yet" in page
    assert "<td>Cycles</td><td>0</td>" in page
    assert "<img" not in page


def test_a_folder_that_is_no_session_is_refused_with_a_message(tmp_path, capsys):
    (tmp_path / "somewhere").mkdir()
    assert cli_main(["report", str(tmp_path / "somewhere"), "--to",
                     str(tmp_path / "r.html")]) == 1
    assert "is not a Live2D session" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
