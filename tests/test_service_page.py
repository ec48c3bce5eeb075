"""The web page in headless Chromium (Debian's chromium + chromium-driver): draw a digit on the canvas, submit,
see a class and an abnormality score; run FGSM and see both images scored."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service_common import ServerThread, detector_fixture, served_artifact_fixture, settings_for  # noqa: F401

from service.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lgm-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,1200",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(served_artifact: Path, detector) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings_for(served_artifact), detector=detector)) as srv:
        yield srv


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text.strip()


def test_draw_predict_and_fgsm(browser, server: ServerThread, detector, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: _text(d, "model-line").startswith("model lgm"))
    canvas = browser.find_element(By.ID, "canvas")
    # a "7": a bar, then a diagonal stroke
    ActionChains(browser).move_to_element_with_offset(canvas, -70, -80).click_and_hold().move_by_offset(
        140, 0
    ).move_by_offset(-40, 60).move_by_offset(-40, 100).release().perform()
    browser.find_element(By.ID, "predict").click()
    wait.until(lambda d: _text(d, "result-class") not in ("", "\u2013"))
    assert _text(browser, "result-class") in detector.class_names
    assert re.fullmatch(r"\d+\.\d%", _text(browser, "result-confidence"))
    score = float(_text(browser, "abnormality-value"))
    assert 0.0 <= score <= 1.0
    assert _text(browser, "flag") in ("looks like a clean input", "flagged as adversarial / abnormal")
    assert _text(browser, "message") == ""

    browser.find_element(By.ID, "fgsm").click()
    wait.until(lambda d: _text(d, "adv-class") not in ("", "\u2013"))
    assert (
        _text(browser, "orig-class") in detector.class_names
        and _text(browser, "adv-class") in detector.class_names
    )
    assert 0.0 <= float(_text(browser, "adv-abn")) <= 1.0
    assert browser.find_element(By.ID, "adv-img").get_attribute("src").startswith("data:image/png;base64,")
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_empty_canvas_asks_to_draw(browser, server: ServerThread) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 10).until(lambda d: "Draw a digit" in _text(d, "message"))
