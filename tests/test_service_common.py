"""Shared pieces of the service tests: a calibrated tiny artifact, a real uvicorn server on a free loopback port,
and image helpers. Other ``test_service_*`` modules import the fixtures from here (``*_fixture``; pytest knows
them by their ``name``)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from detector.scoring import Detector
from service.app import create_app
from service.settings import ServeSettings


@pytest.fixture(scope="session", name="served_artifact")
def served_artifact_fixture(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny digits model, calibrated (clean mode) so the service can load it."""
    from detector.calibration import calibrate

    out = tmp_path_factory.mktemp("served") / "digits"
    shutil.copytree(tiny_artifact, out)
    calibrate(out, mode="clean", device="cpu", progress=False)
    return out


@pytest.fixture(scope="session", name="detector")
def detector_fixture(served_artifact: Path) -> Detector:
    return Detector.load(served_artifact, "cpu")


def settings_for(artifact: Path, **overrides) -> ServeSettings:
    base = dict(artifact=artifact, device="cpu", threads=1, max_wait_ms=2.0)
    base.update(overrides)
    return ServeSettings(**base)


@pytest.fixture(scope="module", name="client")
def client_fixture(served_artifact: Path, detector: Detector) -> Iterator[TestClient]:
    """TestClient over the app with its lifespan run (model loaded and warmed up)."""
    with TestClient(create_app(settings_for(served_artifact), detector=detector)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server for an app, on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def digit_images(detector: Detector, n: int = 4) -> torch.Tensor:
    """The first n test images of the digits set, float (N, C, H, W) in [0, 1] (exact multiples of 1/255)."""
    from training.data import load_dataset

    ds = detector.meta["dataset"]
    return load_dataset(ds["name"], ds.get("root"), ds.get("split_seed", 0)).test.x[:n].float() / 255.0


def as_png(x: torch.Tensor) -> bytes:
    """(1, H, W) in [0, 1] -> PNG that decodes back to exactly x (x a multiple of 1/255)."""
    return png_bytes((x[0] * 255).round().to(torch.uint8).numpy())
