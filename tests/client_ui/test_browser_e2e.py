"""End to end: real headless Chromium, the real app process, real TorchServe and PostgreSQL.

The app runs as `python -m client_ui` in a subprocess (not NiceGUI's `screen` fixture): that is
exactly what `make run` starts, it reads its configuration from the environment like a user's
shell would, it keeps NiceGUI's in-process `user` fixture free to run in the same pytest session,
and the test ends it with SIGINT to check that Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from client_ui import queries
from client_ui.database import Database
from client_ui.draw import DOT_HINT
from config import PROJECT_ROOT
from serving.server import free_ports
from tests.conftest import require_or_skip
from training.drawings import drawings

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.postgres]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--window-size=1280,820",
]

#: Mouse paths (offsets from the canvas centre, in CSS pixels) for digits a person might draw.
STROKES: dict[int, list[list[tuple[int, int]]]] = {
    1: [[(0, -90), (0, 90)]],
    7: [[(-70, -80), (70, -80), (-10, 95)]],
    0: [
        [(0, -90), (55, -60), (65, 0), (50, 60), (0, 90), (-50, 60), (-65, 0), (-55, -60), (0, -90)]
    ],
}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        require_or_skip("REQUIRE_BROWSER", f"needs {CHROMIUM} and {CHROMEDRIVER}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def app_url(torchserve: Any, postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """`python -m client_ui` against the test TorchServe and PostgreSQL; stopped with SIGINT."""
    (port,) = free_ports(1)
    inherited = {
        name: value
        for name, value in os.environ.items()
        # NiceGUI treats a process with PYTEST_CURRENT_TEST as its own test server.
        if name != "PYTEST_CURRENT_TEST" and not name.startswith("NICEGUI_")
    }
    env = {
        **inherited,
        **torchserve.env,
        "DATABASE_URL": postgres_url,
        "UI_HOST": "127.0.0.1",
        "UI_PORT": str(port),
        "MNIST_DATA_DIR": str(tmp_path / "data"),
    }
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "client_ui"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            returncode = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert returncode == 0, f"the app did not stop cleanly on SIGINT:\n{log_path.read_text()}"


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the app did not answer within 60 s:\n{log_path.read_text()}")


def by_testid(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def draw(driver: WebDriver, canvas: WebElement, strokes: list[list[tuple[int, int]]]) -> None:
    """Press, move in small steps and release the mouse, like a hand would."""
    for path in strokes:
        actions = ActionChains(driver, duration=10)
        actions.move_to_element_with_offset(canvas, *path[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(path):
            steps = 8
            for _ in range(steps):
                actions.move_by_offset(round((x1 - x0) / steps), round((y1 - y0) / steps))
        actions.release().perform()


def wait_for_text(driver: WebDriver, testid: str, predicate: Any, timeout: float = 30) -> str:
    WebDriverWait(driver, timeout).until(lambda d: predicate(by_testid(d, testid).text))
    return by_testid(driver, testid).text


def test_draw_predict_label_and_find_the_row_in_postgres(
    browser: WebDriver,
    app_url: str,
    postgres_url: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    screenshots = request.config.getoption("--screenshots") or tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    browser.get(app_url)
    canvas = WebDriverWait(browser, 20).until(lambda d: by_testid(d, "canvas"))
    draw(browser, canvas, [[(0, 0)]])  # a click in the middle: a dot, which is not sent
    wait_for_text(browser, "hint", lambda text: text == DOT_HINT)
    saved: dict[int, tuple[str, str]] = {}
    for true_digit, strokes in STROKES.items():
        by_testid(browser, "clear-button").click()
        wait_for_text(browser, "predicted-digit", lambda text: text == "–")
        draw(browser, canvas, strokes)
        shown = wait_for_text(browser, "predicted-digit", lambda text: text.isdigit())
        confidence = by_testid(browser, "confidence").text
        assert confidence.endswith("%")
        by_testid(browser, f"label-{true_digit}").click()
        status = wait_for_text(
            browser, "save-status", lambda text, d=true_digit: f"true label {d}." in text
        )
        row_id = int(status.split("#")[1].split(",")[0])
        saved[row_id] = (shown, str(true_digit))
    assert browser.save_screenshot(str(screenshots / "screenshot_draw.png"))

    database = Database(postgres_url)
    try:
        with database.session() as session:
            for row_id, (shown, true_digit) in saved.items():
                row = queries.get_prediction(session, row_id)
                assert row is not None
                assert (str(row.predicted_digit), str(row.true_label)) == (shown, true_digit)
                image = Image.open(io.BytesIO(row.image_data))
                assert image.format == "PNG" and image.size == (280, 280)
                assert row.model_version and row.latency_ms > 0
                assert 0 <= row.confidence <= 1
    finally:
        database.dispose()

    browser.set_window_size(1280, 1250)
    browser.get(f"{app_url}/statistics")
    wait_for_text(browser, "ts-health", lambda text: text.lower() == "healthy")
    assert wait_for_text(browser, "count-labelled", lambda text: text.isdigit()) == str(len(saved))
    time.sleep(1)  # let the charts finish drawing before the screenshot
    assert browser.save_screenshot(str(screenshots / "screenshot_statistics.png"))
    browser.set_window_size(1280, 820)


#: Drawings a reader could hesitate over: a C (an open 0 or 6), an L (a 1 with a foot, or half
#: a 4), an X (a crossed 8 or 4), a 1 with a hook. The test takes the first the model is unsure of.
AMBIGUOUS: list[list[list[tuple[int, int]]]] = [
    [[(50, -60), (0, -85), (-50, -40), (-50, 40), (0, 85), (50, 60)]],
    [[(-40, -90), (-40, 80), (50, 80)]],
    [[(-60, -80), (60, 80)], [(60, -80), (-60, 80)]],
    [[(-40, -60), (10, -90), (5, 90)]],
]


def test_an_unsure_drawing_shows_candidates_and_why(
    browser: WebDriver, app_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    screenshots = request.config.getoption("--screenshots") or tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1280, 1100)
    browser.get(app_url)
    canvas = WebDriverWait(browser, 20).until(lambda d: by_testid(d, "canvas"))
    seen = []
    for strokes in AMBIGUOUS:
        by_testid(browser, "clear-button").click()
        wait_for_text(browser, "predicted-digit", lambda text: text == "–")
        draw(browser, canvas, strokes)
        shown = wait_for_text(browser, "predicted-digit", lambda text: text.isdigit())
        seen.append((shown, by_testid(browser, "confidence").text))
        if by_testid(browser, "unsure-panel").is_displayed():
            break
    else:
        pytest.fail(f"the model was sure of every ambiguous drawing: {seen}")
    candidates = browser.find_elements(By.CSS_SELECTOR, '[data-testid^="candidate-"]')
    assert 2 <= len([c for c in candidates if c.is_displayed()]) <= 3
    assert candidates[0].text.startswith(shown)

    by_testid(browser, "why-button").click()
    wait_for_text(browser, "why-caption", lambda text: text.startswith("Red pixels"))
    overlay = by_testid(browser, "attribution-overlay").find_element(By.TAG_NAME, "img")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    time.sleep(1)  # let the chart and the overlay finish drawing before the screenshot
    assert browser.save_screenshot(str(screenshots / "screenshot_unsure.png"))
    browser.set_window_size(1280, 820)


def test_statistics_compare_two_versions_and_a_shadow_candidate(
    browser: WebDriver,
    app_url: str,
    postgres_url: str,
    mnist_dir: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Drawings answered by version 1.0, then by 2.0 after a promotion with 3.0 shadow-tested:
    the Statistics page a team reads before the next promotion (docs/retraining.md)."""
    screenshots = request.config.getoption("--screenshots") or tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    samples = drawings("thick_stroke", 60, data_dir=mnist_dir, seed=2)
    database = Database(postgres_url)
    with database.session() as session:
        for index, (image, label) in enumerate(samples):
            live_wrong, candidate_wrong = index % 6 == 0, index % 15 == 0
            promoted = index >= 30
            shadow = ((label + 2) % 10 if candidate_wrong else label) if promoted else None
            values = {
                "timestamp": datetime(2026, 12, 1 + index // 10, 12, tzinfo=timezone.utc),
                "predicted_digit": (label + 1) % 10 if live_wrong else label,
                "confidence": 0.9, "true_label": label, "image_data": image,
                "model_version": "2.0" if promoted else "1.0", "latency_ms": 5.0,
                "shadow_version": "3.0" if promoted else None,
                "shadow_digit": shadow,
            }  # fmt: skip
            queries.insert_prediction(session, values)
    database.dispose()
    browser.set_window_size(1280, 1900)
    browser.get(f"{app_url}/statistics")
    wait_for_text(browser, "shadow-count", lambda text: text == "30")
    assert "2.0" in by_testid(browser, "versions-table").text
    time.sleep(1)  # let the charts finish drawing before the screenshot
    assert browser.save_screenshot(str(screenshots / "screenshot_versions.png"))
    browser.set_window_size(390, 844)  # a phone: every card fits across, nothing scrolls sideways
    page_width, window_width = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert page_width <= window_width
    browser.set_window_size(1280, 820)
