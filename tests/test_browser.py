"""The page in a real headless Chromium: start a job, see classes, use the modal, go back in time,
two pages showing the same state, and choosing and exporting the good classes."""

import http.server
import json
import math
import mimetypes
import re
import shutil
import threading
from pathlib import Path

import pytest
from server_helpers import (
    SMALL,
    FolderTemplate,
    RunningServer,
    classified_folder,
    close_controller,
    small_warp,
)

import live2d.server
from live2d.curation import session_cycle_curation
from live2d.forecast import particle_times
from live2d.server.control import Controller
from live2d.store import read_committed_table
from live2d.streaming import keeping_up

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Debian's chromium and chromium-driver are needed (apt-get install chromium "
           "chromium-driver; .ci/run installs them)")


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))


@pytest.fixture
def server(tmp_path):
    warp = small_warp(tmp_path / "warp", particles=120)
    running = RunningServer(Controller(warp, engine="builtin", settings=SMALL))
    yield running
    running.stop()


@pytest.fixture
def pages():
    opened = []

    def open_page(url):
        driver = browser()
        opened.append(driver)
        driver.get(url)
        return driver

    yield open_page
    for driver in opened:
        driver.quit()


def wait(driver, condition, timeout=60):
    # The page redraws parts of itself as messages arrive: an element looked at a moment
    # before may be gone, which is a reason to look again, not a failure.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: condition(d))


def test_a_user_runs_a_job_and_browses_the_classes(server, pages):
    page = pages(server.url + "/")
    watcher = pages(server.url + "/")
    wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
    page.find_element(By.CSS_SELECTOR, "#expert-settings summary").click()
    classes = page.find_element(By.CSS_SELECTOR, "input[name=classes]")
    classes.clear()
    classes.send_keys("4")
    classes.send_keys(Keys.TAB)  # staged, not sent yet
    assert "changed" in classes.get_attribute("class")
    page.find_element(By.ID, "start-job").click()

    tiles = wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile")) == 4 and
                 "cycle 3" in d.find_element(By.ID, "cycle-select").text and
                 d.find_elements(By.CSS_SELECTOR, ".tile"))
    assert all(t.find_element(By.CSS_SELECTOR, ".count").text.isdigit() for t in tiles)
    wait(page, lambda d: d.find_element(By.ID, "status").text == "stopped")

    tiles[0].find_element(By.TAG_NAME, "img").click()  # the average opens the full size
    title = page.find_element(By.ID, "modal-title")
    assert page.find_element(By.ID, "modal").is_displayed() and "class 1:" in title.text
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait(page, lambda d: "class 2:" in title.text)
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    wait(page, lambda d: "class 1:" in title.text)
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(page, lambda d: not d.find_element(By.ID, "modal").is_displayed())

    meta = page.find_element(By.ID, "cycle-meta")
    assert meta.text.startswith("Cycle 3")
    page.find_element(By.ID, "cycle-prev").click()
    wait(page, lambda d: meta.text.startswith("Cycle 2"))
    page.find_element(By.ID, "sort-count").click()
    counts = [int(t.text) for t in page.find_elements(By.CSS_SELECTOR, ".tile .count")]
    assert counts == sorted(counts, reverse=True)
    assert page.find_elements(By.CSS_SELECTOR, "#plot polyline")
    links = page.find_elements(By.CSS_SELECTOR, "#downloads a")
    assert [a.get_attribute("href").rsplit("/", 1)[1] for a in links] == [
        "cycle_002.mrc", "cycle_002.star"]

    disk = page.find_element(By.ID, "disk").text  # disk use in sight, on every page
    assert disk.startswith("Disk: ") and "per particle" in disk and "free" in disk
    wait(watcher, lambda d: d.find_element(By.ID, "disk").text == disk)

    # The other page followed the same job without anyone touching it.
    wait(watcher, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile")) == 4)
    assert watcher.find_element(By.ID, "cycle-meta").text.startswith("Cycle 3")
    assert watcher.find_element(By.CSS_SELECTOR, "input[name=classes]").get_attribute(
        "value") == "4"
    page.find_element(By.ID, "tab-log").click()
    assert "job 1" in page.find_element(By.ID, "log").text

    # The next job is a streaming update: the page following the latest cycle says what it
    # took in and what waits.
    page.find_element(By.ID, "start-job").click()
    shown = watcher.find_element(By.ID, "cycle-meta")
    wait(watcher, lambda d: shown.text.startswith("Streaming update, cycle 4:"))
    assert "particles in the classes, 0 waiting for the next update" in shown.text
    links = watcher.find_elements(By.CSS_SELECTOR, "#downloads a")
    assert [a.get_attribute("href").rsplit("/", 1)[1] for a in links] == [
        "cycle_004.mrc", "cycle_004.star"]


def test_until_its_websocket_opens_the_page_says_connecting_not_stopped(pages):
    """The page's own files, from a server whose websocket never answers (a slow network, a
    server starting up): the badge must not claim a state the page has not heard yet."""
    static = Path(live2d.server.__file__).parent / "static"
    answered = threading.Event()

    class SlowSocket(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/ws"):
                answered.wait(30)  # the websocket hangs, never opened
                return
            name = "index.html" if self.path == "/" else self.path.removeprefix("/static/")
            body = (static / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(name)[0] or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowSocket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver = pages(f"http://127.0.0.1:{server.server_address[1]}/")
        wait(driver, lambda d: d.execute_script("return page.socket && page.socket.readyState")
             == 0)  # CONNECTING
        status = driver.find_element(By.ID, "status")
        assert status.text == "connecting…"
        assert status.get_attribute("data-status") == "connecting"
        assert driver.find_element(By.ID, "cycle-meta").text == "Connecting to the server…"
    finally:
        answered.set()
        server.shutdown()


def test_invalid_settings_are_caught_in_the_page_and_by_the_server(server, pages):
    page = pages(server.url + "/")
    wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
    page.find_element(By.CSS_SELECTOR, "#expert-settings summary").click()
    classes = page.find_element(By.CSS_SELECTOR, "input[name=classes]")
    classes.clear()
    classes.send_keys("0")
    classes.send_keys(Keys.TAB)
    error = page.find_element(By.ID, "error")
    wait(page, lambda d: error.is_displayed() and "between" in error.text)
    page.find_element(By.ID, "start-job").click()
    assert "fix the settings" in error.text
    assert page.find_element(By.ID, "status").text == "stopped"


def test_a_page_started_without_a_folder_leads_to_update_warp_directory(tmp_path, pages):
    root = tmp_path / "grids"
    (root / "warp").mkdir(parents=True)  # made before Warp writes anything into it
    running = RunningServer(Controller(engine="builtin", warp_root=root, settings=SMALL))
    try:
        page = pages(running.url + "/")
        wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
        missing = page.find_element(By.ID, "warp-missing")
        wait(page, lambda d: missing.is_displayed() and "Update Warp Directory" in missing.text)
        assert page.find_element(By.ID, "warp-dir").text == "none chosen yet"
        assert not page.find_element(By.ID, "start-job").is_enabled()
        assert not page.find_element(By.ID, "start-automatic").is_enabled()

        page.find_element(By.ID, "change-warp").click()
        field = page.find_element(By.ID, "warp-input")
        assert field.get_attribute("value") == f"{root}/"  # starts where the page may look
        field.send_keys("warp")
        field.send_keys(Keys.ENTER)
        wait(page, lambda d: d.find_element(By.ID, "warp-dir").text == str(root / "warp"))
        wait(page, lambda d: "no previous.settings" in missing.text)
        assert page.find_element(By.ID, "start-automatic").is_enabled()

        small_warp(root / "warp", particles=40)  # Warp starts: the warning goes by itself
        wait(page, lambda d: not missing.is_displayed(), timeout=30)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def classified_template(tmp_path_factory):
    return classified_folder(tmp_path_factory.mktemp("classified"))


@pytest.fixture
def classified(classified_template):
    """A server over a session whose first job (cycles 1-3, scored) is done: this test's
    copy of it."""
    warp = classified_template.restore() / "warp"
    running = RunningServer(Controller(warp, engine="builtin", settings=SMALL))
    yield running
    running.stop()


def tile(driver, number):
    return driver.find_element(By.CSS_SELECTOR, f".tile[data-class-number='{number}']")


def marked(driver, number, value):
    button = tile(driver, number).find_element(By.CSS_SELECTOR, f"button[data-mark={value}]")
    return button.get_attribute("aria-pressed") == "true" and \
        "marked" in button.get_attribute("class")


def test_a_user_marks_classes_on_one_page_another_sees_it_and_exports(classified, pages):
    session = classified.controller.session
    proposed = session.selection.summary()
    page, watcher = pages(classified.url + "/"), pages(classified.url + "/")
    for driver in (page, watcher):
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile .reason")) == 3)
    # Under every class: its resolution estimate, score and reason; said once what it is.
    for number in (1, 2, 3):
        shown = tile(page, number)
        assert re.fullmatch(r"(≤ )?\d+\.\d Å|no estimate",
                            shown.find_element(By.CSS_SELECTOR, ".resolution").text)
        assert re.fullmatch(r"score [01]\.\d\d",
                            shown.find_element(By.CSS_SELECTOR, ".score").text)
        assert shown.find_element(By.CSS_SELECTOR, ".reason").text
    assert "not a gold-standard resolution" in page.find_element(By.ID, "quality-help").text
    selected = page.find_element(By.ID, "selected-particles")
    assert selected.text == f"{proposed['particles']:,}"
    # The particle curation's count under each selected class, and the selection's as curated
    # (measured off the server's loop: shown when ready).
    curation = session_cycle_curation(session.output_dir, session.selection.latest_scored())
    kept = {c.number: c for c in curation.classes}
    wait(page, lambda d: d.find_element(By.ID, "selection-kept").is_displayed(), 30)
    assert page.find_element(By.ID, "selection-kept").text == (
        f"· {sum(kept[k].kept for k in proposed['classes']):,} good as the particle curation "
        "keeps them")
    for number in (1, 2, 3):
        shown = tile(page, number).find_element(By.CSS_SELECTOR, ".kept")
        if number in proposed["classes"]:
            assert shown.text == f"{kept[number].kept:,} of {kept[number].particles:,} kept"
            assert shown.get_attribute("title") == kept[number].rule()
        else:  # a junk class goes whole: nothing to count
            assert not shown.is_displayed()
    assert page.find_elements(By.CSS_SELECTOR, "#good-plot polyline[data-series=good]")
    assert page.find_elements(By.CSS_SELECTOR, "#plot polyline")

    assert not page.find_element(By.ID, "selection-moves").is_displayed()

    # As an ab initio restart leaves it: one mark moved to a new class, one dropped.
    state = json.loads((session.output_dir / "selection.json").read_text())
    state.update(carried=[[2, 3]], dropped=[1])
    (session.output_dir / "selection.json").write_text(json.dumps(state))
    # Junk on one page: both pages show the mark and the smaller selection.
    tile(page, 1).find_element(By.CSS_SELECTOR, "button[data-mark=junk]").click()
    for driver in (page, watcher):
        # the mark, and what the proposal learned from it for the classes left unmarked
        wait(driver, lambda d: marked(d, 1, "junk") and d.find_element(
            By.ID, "selected-particles").text == f"{session.selection.summary()['particles']:,}",
            20)
        assert tile(driver, 1).get_attribute("data-selected") == "false"
        assert "1 marked by hand" in driver.find_element(By.ID, "selection-detail").text
        moves = driver.find_element(By.ID, "selection-moves").text
        assert "class 2 → 3" in moves and "dropped" in moves and "class 1." in moves
        changed = len(session.selection.summary()["learned"]["changed"])
        assert f"The proposal learns from your marks: {changed} proposal" in moves
    # A second click (here on the other page) goes back to the proposal.
    tile(watcher, 1).find_element(By.CSS_SELECTOR, "button[data-mark=junk]").click()
    wait(page, lambda d: not marked(d, 1, "junk") and
         d.find_element(By.ID, "selected-particles").text == f"{proposed['particles']:,}", 20)

    # The full-size view has the same toggle (G and J keys too); the average still opens it.
    tile(page, 2).find_element(By.TAG_NAME, "img").click()
    assert "Å" in page.find_element(By.ID, "modal-quality").text
    page.find_element(By.CSS_SELECTOR, "#modal-mark button[data-mark=junk]").click()
    wait(watcher, lambda d: marked(d, 2, "junk"), 20)
    page.find_element(By.TAG_NAME, "body").send_keys("g")
    wait(watcher, lambda d: marked(d, 2, "good"), 20)
    good = page.find_element(By.CSS_SELECTOR, "#modal-mark button[data-mark=good]")
    wait(page, lambda d: good.get_attribute("aria-pressed") == "true", 20)
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    # Export: a link to the star in the output folder, on every page, that downloads.
    page.find_element(By.ID, "export").click()
    for driver in (page, watcher):
        link = driver.find_element(By.ID, "export-link")
        wait(driver, lambda d, link=link: (link.get_attribute("href") or "").endswith(
            "/files/exports/good_cycle_003.star"), 30)
        assert link.get_attribute("download") == "good_cycle_003.star"
    assert "exported" in page.find_element(By.ID, "export-status").text
    text = page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('export-link').href).then(r => r.text()).then(done);")
    assert "data_optics" in text and "data_particles" in text
    assert text == (session.output_dir / "exports" / "good_cycle_003.star").read_text()

    # Nothing selected: the export is refused and the page says why.
    for number in (1, 2, 3):
        tile(page, number).find_element(By.CSS_SELECTOR, "button[data-mark=junk]").click()
        wait(page, lambda d, n=number: marked(d, n, "junk"), 20)
    wait(page, lambda d: d.find_element(By.ID, "selected-particles").text == "0")
    page.find_element(By.ID, "export").click()
    error = page.find_element(By.ID, "error")
    wait(page, lambda d: error.is_displayed() and "is selected" in error.text, 30)
    assert page.find_element(By.ID, "export").is_enabled()

    # An earlier cycle shows what its scores proposed; marks are made on the latest one.
    page.find_element(By.ID, "cycle-prev").click()
    wait(page, lambda d: d.find_element(By.ID, "cycle-meta").text.startswith("Cycle 2"))
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile .reason")) == 3 and
         all(t.text for t in d.find_elements(By.CSS_SELECTOR, ".tile .reason")))
    assert not tile(page, 1).find_element(By.CSS_SELECTOR, "button[data-mark=good]").is_enabled()


def test_a_user_sets_where_alerts_go_and_sends_a_test(server, pages):
    from test_notify import Receiver  # a real webhook on 127.0.0.1

    hook = Receiver()
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        page = pages(server.url + "/")
        wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
        page.find_element(By.CSS_SELECTOR, "#notify-settings summary").click()
        assert page.find_element(By.ID, "notify-now").text == "no one"
        page.find_element(By.ID, "notify-input").send_keys("ftp://x/hook")
        page.find_element(By.CSS_SELECTOR, "#notify-form button[type=submit]").click()
        wait(page, lambda d: "give an http:// or https:// URL" in
             d.find_element(By.ID, "error").text)
        targets = page.find_element(By.ID, "notify-input")
        targets.clear()
        targets.send_keys(hook.url)
        page.find_element(By.CSS_SELECTOR, "#notify-form button[type=submit]").click()
        shown = f"http://127.0.0.1:{hook.server_address[1]}/…"  # the secret path never shown
        wait(page, lambda d: d.find_element(By.ID, "notify-now").text == shown)
        page.find_element(By.ID, "notify-test").click()
        wait(page, lambda d: d.find_element(By.ID, "notify-status").text == f"sent to {shown}")
        assert hook.wait_for(1)[0]["json"]["kind"] == "test"
        assert server.controller.session.state.notify == [hook.url]
    finally:
        hook.shutdown()
        hook.server_close()


def test_a_user_sets_the_epu_folder_and_sees_it_after_a_reload(server, pages, tmp_path):
    from live2d.simulate import write_epu_acquisition

    epu = tmp_path / "EPU_session"
    for index in range(48):  # four movies a foil hole, four holes a grid square
        write_epu_acquisition(epu, index)
    page = pages(server.url + "/")
    wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
    page.find_element(By.CSS_SELECTOR, "#epu-settings summary").click()
    assert page.find_element(By.ID, "epu-now").text == "none (the movie paths only)"
    field = page.find_element(By.ID, "epu-input")
    field.send_keys(str(tmp_path / "typo"))
    page.find_element(By.ID, "epu-save").click()
    wait(page, lambda d: "is not there" in d.find_element(By.ID, "error").text)
    field.clear()
    field.send_keys(str(epu))
    page.find_element(By.ID, "epu-save").click()
    wait(page, lambda d: d.find_element(By.ID, "epu-now").text == str(epu))
    status = page.find_element(By.ID, "epu-status").text
    assert "12 foil holes on 3 grid squares" in status and "next classified cycle" in status
    assert not page.find_element(By.ID, "error").is_displayed()

    page.refresh()  # the session's, not the page's: shown again from the server
    wait(page, lambda d: d.find_element(By.ID, "connection").text == "connected")
    page.find_element(By.CSS_SELECTOR, "#epu-settings summary").click()
    wait(page, lambda d: d.find_element(By.ID, "epu-now").text == str(epu))
    assert page.find_element(By.ID, "epu-input").get_attribute("value") == str(epu)
    assert server.controller.session.state.epu_dir == str(epu)
    page.find_element(By.ID, "epu-clear").click()
    wait(page, lambda d: d.find_element(By.ID, "epu-now").text == "none (the movie paths only)")
    assert server.controller.session.state.epu_dir == ""


COLLECTED = {**SMALL, "target_good_particles": 10}


@pytest.fixture(scope="module")
def collected_template(tmp_path_factory):
    from live2d.simulate import simulate

    def make(root: Path) -> None:
        warp, epu = root / "warp", root / "epu"
        simulate(warp, particles=480, per_micrograph=10, box=32, pixel_size=4.0, snr=0.5,
                 views=3, epu_dir=epu)
        controller = Controller(warp, engine="builtin", epu_dir=epu, settings=COLLECTED)
        try:
            assert controller.session.run_job("abinit")
        finally:
            close_controller(controller)

    return FolderTemplate(tmp_path_factory.mktemp("collected"), make)


@pytest.fixture
def collected(collected_template):
    """A server over an EPU-named session (3 grid squares of 4 foil holes each) whose first job
    is done, with its target of good particles reached: an alert in force (this test's copy
    of the folders)."""
    root = collected_template.restore()
    running = RunningServer(Controller(root / "warp", engine="builtin", epu_dir=root / "epu",
                                       settings=COLLECTED))
    yield running
    running.stop()


def test_the_forecast_of_the_latest_scored_cycle_shows_and_follows_each_cycle(collected,
                                                                            pages):
    from live2d.forecast import read_forecast

    session = collected.controller.session
    cycle, lines = read_forecast(session.output_dir)
    assert cycle == session.history[-1].number and lines[0].startswith("forecast by the")
    page = pages(collected.url + "/")
    shown = wait(page, lambda d: d.find_element(By.ID, "forecast-lines").text, 20)
    assert shown.splitlines() == lines
    assert "target of 10 good particles: reached" in shown
    # The next cycle's forecast replaces it in the open page.
    session.update_settings({"target_good_particles": 10**6})
    assert session.run_job("refine")
    cycle, lines = read_forecast(session.output_dir)
    wait(page, lambda d: f"cycle {cycle}" in d.find_element(By.ID, "forecast-lines").text, 20)
    assert "target of 1,000,000 good particles: " in \
        page.find_element(By.ID, "forecast-lines").text


def banners(driver):
    return [b for b in driver.find_elements(By.CSS_SELECTOR, "#alerts .alert-banner")
            if b.is_displayed()]


def test_an_alert_shows_on_every_page_and_a_dismissal_hides_it_everywhere(collected, pages):
    from live2d.alerts import BAD_SQUARE, TARGET_REACHED

    session = collected.controller.session
    [reached] = session.alerts.active
    assert reached.key == TARGET_REACHED  # fired by the job, before any page opened
    page, other = pages(collected.url + "/"), pages(collected.url + "/")
    for driver in (page, other):
        wait(driver, lambda d: len(banners(d)) == 1, 20)
        [banner] = banners(driver)
        assert banner.get_attribute("data-key") == TARGET_REACHED
        assert banner.find_element(By.CSS_SELECTOR, ".alert-text").text == reached.message
        assert banner.find_element(By.CSS_SELECTOR, ".alert-since").text.startswith("since ")

    # One that fires while the pages are open; its figures changing keep one banner.
    square = f"{BAD_SQUARE}:24668022"
    session._update_alerts((BAD_SQUARE,), {square: "GridSquare_24668022: 10% good particles"})
    session._update_alerts((BAD_SQUARE,), {square: "GridSquare_24668022: 9% good particles"})
    for driver in (page, other):
        wait(driver, lambda d: [b.get_attribute("data-key") for b in banners(d)] ==
             [TARGET_REACHED, square] and "9% good" in banners(d)[1].text, 20)

    # Dismissed on one page: gone from both, and from a page reloaded.
    banners(page)[1].find_element(By.CSS_SELECTOR, ".alert-dismiss").click()
    for driver in (page, other):
        wait(driver, lambda d: [b.get_attribute("data-key") for b in banners(d)] ==
             [TARGET_REACHED], 20)
    other.refresh()
    wait(other, lambda d: d.find_element(By.ID, "connection").text == "connected")
    wait(other, lambda d: len(banners(d)) == 1, 20)
    assert banners(other)[0].get_attribute("data-key") == TARGET_REACHED

    # It clears, then the square turns bad again: a new alert, shown again.
    session._update_alerts((BAD_SQUARE,), {})
    session._update_alerts((BAD_SQUARE,), {square: "GridSquare_24668022: 8% good particles"})
    for driver in (page, other):
        wait(driver, lambda d: len(banners(d)) == 2 and "8% good" in banners(d)[1].text, 20)
    session._update_alerts((BAD_SQUARE,), {})  # and clears: its banner goes
    wait(page, lambda d: len(banners(d)) == 1, 20)


def test_the_grid_square_map_shows_each_square_and_a_click_lists_its_holes(collected, pages):
    import csv

    out = collected.controller.session.output_dir
    with open(out / "yield_squares.csv", newline="") as handle:
        squares = list(csv.DictReader(handle))
    with open(out / "yield_holes.csv", newline="") as handle:
        holes = list(csv.DictReader(handle))
    assert len(squares) == 3
    page = pages(collected.url + "/")
    tiles = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#squares .square"), 20)
    assert [t.get_attribute("data-square") for t in tiles] == [  # collection order
        s["grid_square"] for s in sorted(squares, key=lambda s: s["first_seen"])]
    for shown in tiles:
        row = next(s for s in squares if s["grid_square"] == shown.get_attribute("data-square"))
        assert shown.find_element(By.CSS_SELECTOR, ".square-id").text == row["grid_square"]
        good = int(float(row["good_fraction"]) * 100 + 0.5)
        assert shown.find_element(By.CSS_SELECTOR, ".square-good").text == f"{good}% good"
        assert shown.find_element(By.CSS_SELECTOR, ".square-particles").text == row["particles"]
    assert not page.find_element(By.ID, "holes").is_displayed()

    tiles[1].click()
    name = tiles[1].get_attribute("data-square")
    rows = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#holes-table tbody tr"))
    expected = [h for h in holes if h["grid_square"] == name]
    assert [r.get_attribute("data-hole") for r in rows] == [h["foil_hole"] for h in expected]
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == [expected[0]["foil_hole"], expected[0]["micrographs"],
                         expected[0]["particles"], expected[0]["good_particles"]]
    assert f"GridSquare_{name}: 4 foil holes" in page.find_element(By.ID, "holes-title").text
    assert [t.get_attribute("aria-pressed") for t in tiles] == ["false", "true", "false"]


def test_without_epu_names_the_map_says_grid_squares_are_unknown(classified, pages):
    page = pages(classified.url + "/")
    note = page.find_element(By.ID, "grid-map-note")
    wait(page, lambda d: note.text.startswith("Grid squares are unknown"), 20)
    assert "3 micrographs, 120 particles" in note.text
    assert not page.find_elements(By.CSS_SELECTOR, "#squares .square")


def test_the_map_lays_squares_out_where_the_stage_put_them(collected, pages):
    from live2d.collection_yield import read_grid_map

    session = collected.controller.session
    epu = Path(session.state.epu_dir)
    images = sorted(epu.glob("Images-Disc1/GridSquare_*/GridSquare_*.xml"))
    assert len(images) == 3
    # In collection order: the first square, one 100 µm right of it (stage +x), one 100 µm
    # above it (stage +y, drawn up as in EPU's atlas).
    for image, (x, y) in zip(images, [(0, 0), (1e-4, 0), (0, 1e-4)], strict=True):
        text = image.read_text(encoding="utf-8")
        text = re.sub(r"<X>[^<]*</X>", f"<X>{x!r}</X>", re.sub(r"<Y>[^<]*</Y>", f"<Y>{y!r}</Y>",
                                                              text))
        image.write_text(text, encoding="utf-8")
    session.grid_map = read_grid_map(session.output_dir, epu)  # as after the next cycle
    page = pages(collected.url + "/")
    tiles = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#squares .square"), 20)
    assert "where the stage put them" in page.find_element(By.ID, "grid-map-note").text

    def centre(tile):
        box = tile.rect
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    (x0, y0), (x_right, y_right), (x_up, y_up) = (centre(t) for t in tiles)
    assert x_right - x0 > 50 and abs(y_right - y0) < 2  # right, level
    assert y0 - y_up > 50 and abs(x_up - x0) < 2  # up, above (screen y grows downwards)
    assert x_right - x0 == pytest.approx(y0 - y_up, abs=2)  # one scale for x and y

    tiles[2].click()  # a tile placed on the stage still lists its holes
    rows = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#holes-table tbody tr"))
    assert len(rows) == 4
    assert [t.get_attribute("aria-pressed") for t in tiles] == ["false", "false", "true"]


@pytest.fixture
def streamed(tmp_path):
    """A server over a session that streams: ab initio on 120 particles, then two updates as
    Warp goes on (80 and 40 new, in batches of 40: the second leaves the first's older ones
    as they were), and 40 more imported that wait for the next one."""
    warp = small_warp(tmp_path / "warp", particles=120)
    controller = Controller(warp, engine="builtin", settings={**SMALL, "stream_every": 40})
    session = controller.session
    assert session.run_job("abinit") and session.settings.mode == "stream"
    for particles in (200, 240):
        small_warp(warp, particles=particles)  # extends the simulated session
        assert session.run_job()
    small_warp(warp, particles=280)
    session.import_new()
    running = RunningServer(controller)
    yield running
    running.stop()


def test_a_streaming_session_plots_each_updates_latency_and_backlog(streamed, pages):
    session = streamed.controller.session
    updates = [r for r in session.history if r.streamed]
    assert [r.new_particles for r in updates] == [80, 40]
    assert all(len(r.latency) == 3 for r in updates)  # the stacks' times are known here
    page = pages(streamed.url + "/")
    points = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#latency-plot g.update"), 20)
    assert page.find_element(By.ID, "keeping-up").is_displayed()
    assert [p.get_attribute("data-cycle") for p in points] == [str(r.number) for r in updates]
    for point, record in zip(points, updates, strict=True):
        p50, p99, longest = record.latency
        assert [float(point.get_attribute(f"data-{name}")) for name in
                ("p50", "p99", "longest")] == [p50, p99, longest]
        assert len(point.find_elements(By.TAG_NAME, "circle")) == 2  # median and longest
    # The backlog: what the next update took in, then the 40 imported since the latest.
    assert [int(p.get_attribute("data-backlog")) for p in points] == [40, 40]
    tooltip = points[1].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert tooltip.startswith(f"cycle {updates[1].number}, ") and "40 new particles" in tooltip
    assert "40 waiting after it" in tooltip and "(median)" in tooltip
    assert len(page.find_elements(By.CSS_SELECTOR, "#latency-plot rect")) == 2

    # Beside the plot, what `live2d status` says: the latency over the last hour and how
    # long before the latest update the least recently aligned particles were classified.
    figures = keeping_up(session.history, particle_times(read_committed_table(
        session.output_dir))[0])
    assert figures.p50 is not None
    assert figures.oldest_alignment == updates[1].finished - updates[0].finished > 0
    hour = wait(page, lambda d: d.find_element(By.ID, "keeping-up-hour").is_displayed()
                and d.find_element(By.ID, "keeping-up-hour"), 20)
    assert [float(hour.get_attribute(f"data-{name}")) for name in ("p50", "p99")] == \
        [figures.p50, figures.p99]
    assert hour.text == (
        f"Over the last hour, stack written to particles in the classes: p50 "
        f"{waited(figures.p50)}, p99 {waited(figures.p99)}; the latest update's new particles "
        f"at most {waited(figures.latest_latency)}")
    aligned = page.find_element(By.ID, "keeping-up-aligned")
    assert float(aligned.get_attribute("data-seconds")) == figures.oldest_alignment
    assert aligned.text == (f"Least recently aligned particles: classified "
                            f"{waited(figures.oldest_alignment)} before the latest update "
                            f"(cycle {updates[-1].number})")

    # Particles that arrive after the latest update add to its backlog as they are imported.
    small_warp(session.warp_dir, particles=320)
    session.import_new()
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#latency-plot g.update")[-1]
         .get_attribute("data-backlog") == "80", 20)


def test_a_session_that_does_not_stream_shows_no_latency_plot(classified, pages):
    page = pages(classified.url + "/")
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile")) == 3, 20)
    assert not page.find_element(By.ID, "keeping-up").is_displayed()
    assert not page.find_elements(By.CSS_SELECTOR, "#latency-plot *")


def waited(seconds: float) -> str:
    """A wait as the page writes it (app.js waited)."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{math.floor(seconds + 0.5)} s"
