"""The page in a real headless Chromium: start a job, see classes, use the modal, go back in time,
and two pages showing the same state."""

import shutil

import pytest
from server_helpers import SMALL, RunningServer, small_warp

from live2d.server.control import Controller

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
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
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


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

    tiles[0].click()
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

    # The other page followed the same job without anyone touching it.
    wait(watcher, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile")) == 4)
    assert watcher.find_element(By.ID, "cycle-meta").text.startswith("Cycle 3")
    assert watcher.find_element(By.CSS_SELECTOR, "input[name=classes]").get_attribute(
        "value") == "4"
    page.find_element(By.ID, "tab-log").click()
    assert "job 1" in page.find_element(By.ID, "log").text


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
