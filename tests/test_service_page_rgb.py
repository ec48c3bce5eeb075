"""A colour model served: the web page asks for a photo, uploads one of any size, shows it in colour with the
card's class names and the gauge (headless Chromium); and a grey image sent to the RGB model is repeated on the
three channels, as service/images.py documents."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_service_common import ServerThread, png_bytes, settings_for
from test_service_page import _text, browser  # noqa: F401  (the module-scoped headless Chromium)

from detector import Detector
from service.app import create_app

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def _colour_folder(root: Path) -> Path:
    """ROOT/train/<colour>/ and ROOT/test/<colour>/: 16x16 RGB noise tinted by the class's colour."""
    rng = np.random.default_rng(0)
    for part, n in (("train", 40), ("test", 10)):
        for name, rgb in COLOURS.items():
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                a = (0.7 * np.array(rgb) + 0.3 * rng.integers(0, 256, (16, 16, 3))).astype(np.uint8)
                Image.fromarray(a, mode="RGB").save(root / part / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_config_factory) -> Path:
    """A tiny L-GM model of 16x16 colour images (three colour classes), trained and calibrated."""
    from detector.calibration import calibrate
    from training.trainer import train

    data = _colour_folder(tmp_path_factory.mktemp("colours"))
    out = tmp_path_factory.mktemp("rgb") / "colours"
    train(tiny_config_factory(dataset="folder", data_root=str(data), epochs=12, batch_size=32), out)
    calibrate(out, mode="clean", device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def rgb_detector(rgb_artifact: Path) -> Detector:
    return Detector.load(rgb_artifact, "cpu")


def test_grey_image_to_rgb_model_is_repeated_on_three_channels(rgb_artifact: Path, rgb_detector) -> None:
    grey = np.full((28, 28), 153, dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    with TestClient(create_app(settings_for(rgb_artifact), detector=rgb_detector)) as client:
        preds = [
            client.post("/v1/predict", files={"files": ("a.png", png_bytes(img), "image/png")}).json()
            for img in (grey, as_rgb)
        ]
    assert preds[0] == preds[1] and preds[0]["predictions"][0]["label"] in COLOURS


def test_upload_a_photo_to_a_colour_model(browser, rgb_artifact: Path, rgb_detector, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with ServerThread(create_app(settings_for(rgb_artifact), detector=rgb_detector)) as srv:
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: _text(d, "model-line").startswith("model lgm"))
        assert _text(browser, "intro").startswith("Upload a photo (any size: the server resizes it to 16x16")
        assert _text(browser, "classes-line") == "classes: blue, green, red"
        assert _text(browser, "eps-value") == "0.031"  # 8/255, the colour budget
        browser.find_element(By.ID, "predict").click()
        wait.until(lambda d: "Upload a photo first" in _text(d, "message"))

        photo = tmp_path / "photo.png"  # 64x40, not the model's size: the server resizes it
        green = tuple(int(0.7 * v + 0.3 * 127.5) for v in COLOURS["green"])  # the training images' mean tint
        Image.new("RGB", (64, 40), green).save(photo)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: _text(d, "result-class") not in ("", "\u2013"))
        assert _text(browser, "result-class") == "green"
        assert re.fullmatch(r"\d+\.\d%", _text(browser, "result-confidence"))
        assert 0.0 <= float(_text(browser, "abnormality-value")) <= 1.0
        width = browser.find_element(By.ID, "abnormality-bar").value_of_css_property("width")
        assert float(width.removesuffix("px")) > 0
        # the canvas shows the upload in colour, not as grey
        r, g, b = browser.execute_script(
            "const c = document.getElementById('canvas'); return Array.from("
            "c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data.slice(0, 3));"
        )
        assert (r, g, b) == green

        browser.find_element(By.ID, "fgsm").click()
        wait.until(lambda d: _text(d, "adv-class") not in ("", "\u2013"))
        assert _text(browser, "adv-class") in COLOURS and 0.0 <= float(_text(browser, "adv-abn")) <= 1.0
