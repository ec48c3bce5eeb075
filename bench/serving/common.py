"""What ``bench/serving/serve.py`` and ``bench/serving/protocols.py`` both need: the calibrated artifact under
load (a 1-epoch mnist5k model trained for the run when none is given), its test-split images as request bodies,
the model's in-process ceiling, and a free loopback port. Both import it; neither imports the other's
helpers, so the two never import each other."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from detector.scoring import Detector
from service.images import encode_png
from training.data import load_card_dataset


# -- set-up ------------------------------------------------------------------------------------------------------
def ensure_artifact(path: str | None) -> Path:
    if path:
        return Path(path)
    out = Path(tempfile.mkdtemp(prefix="lgm-bench-")) / "mnist5k"
    lgm = [sys.executable, "-m", "service"]
    print(f"# training a 1-epoch mnist5k model into {out} ...", flush=True)
    subprocess.run(
        [*lgm, "train", "--dataset", "mnist5k", "--epochs", "1", "--out", str(out), "--quiet"], check=True
    )
    subprocess.run([*lgm, "calibrate", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return out


def test_images(det: Detector, n: int = 256) -> tuple[torch.Tensor, list[str]]:
    """Real test-split images: as a float batch (N, C, H, W), and as one-line /v1/predict JSON bodies (n of
    them: past the split's size, copies with 4 random pixels nudged by 1/255, all distinct)."""
    ds = det.meta["dataset"]
    data = load_card_dataset(ds)
    x = data.test.x[:n]  # (N, C, H, W) uint8
    if n > len(x):
        g = torch.Generator().manual_seed(0)
        reps = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].clone()
        flat = reps.view(n, -1)
        for i in range(len(x), n):
            px = torch.randint(0, flat.shape[1], (4,), generator=g)
            flat[i, px] = torch.where(flat[i, px] < 255, flat[i, px] + 1, flat[i, px] - 1)
        x = reps
    bodies = [
        json.dumps({"instances": [{"b64": base64.b64encode(encode_png(img)).decode()}]}) for img in x.numpy()
    ]
    return x.float() / 255.0, bodies


def ceiling(det: Detector, x: torch.Tensor, batch: int, threads: int, seconds: float = 3.0) -> float:
    """Images/s of Detector.score on full batches, in this process, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    xb = x[:batch] if len(x) >= batch else x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    with torch.inference_mode():
        for _ in range(3):
            det.score(xb)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            det.score(xb)
            n += batch
    return n / (time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
