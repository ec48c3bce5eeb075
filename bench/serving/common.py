"""What ``bench/serving/serve.py`` and ``bench/serving/protocols.py`` both need: the calibrated artifact under
load (a 1-epoch mnist5k model trained for the run when none is given), its test-split images as request bodies,
the model's in-process ceiling (per scoring engine with ``--engines``), and a free loopback port. Both import
it; neither imports the other's helpers, so the two never import each other."""

from __future__ import annotations

import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
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


def engine_ceilings(
    det: Detector, x: torch.Tensor, batch: int, threads: int, engines: list[str], model: bytes | None
) -> dict[str, float]:
    """Images/s of each engine's scoring on full batches in this process (``bench/serving/engines.py``'s
    ``scorer``), one after the other; ``model``: the exported graph for onnxruntime (made once by the caller)."""
    from bench.serving.engines import images_per_second, scorer

    xb = x[:batch] if len(x) >= batch else x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    with torch.inference_mode():
        return {e: images_per_second(scorer(det, e, threads, model), xb, 3.0) for e in engines}


class Ceilings:
    """The in-process ceiling of each scoring engine, measured again between the servers of a run (the machine's
    speed drifts): images/s of full batches of ``batch`` with ``cores`` threads, the engines one after the other
    in each round. ``engines``: those of ``--engines``, or None for the server's default engine alone (the report
    then keeps the single-engine form)."""

    def __init__(self, det: Detector, x: torch.Tensor, batch: int, cores: int, engines: list[str] | None):
        from service.settings import ServeSettings

        self.det, self.x, self.batch, self.cores = det, x, batch, cores
        self.explicit = engines is not None
        # the engine the servers of this benchmark (--device cpu) resolve their default, auto, to
        self.engines = list(engines) if engines else [ServeSettings(device="cpu").resolved_engine()]
        self.model = None
        if "onnxruntime" in self.engines:  # exported once, as lgm serve --engine onnxruntime does at start-up
            from detector.export import build_in_memory

            self.model = build_in_memory(det, "bench/serving/serve.py --engines onnxruntime")
        self.rounds: list[dict[str, float]] = []
        self.one_thread = engine_ceilings(det, x, batch, 1, self.engines, self.model)
        self.one_image_ms: dict[str, float] = {}
        if self.explicit:
            from bench.serving.engines import one_image_ms, scorer

            with torch.inference_mode():
                for e in self.engines:
                    self.one_image_ms[e] = one_image_ms(
                        scorer(det, e, 1, self.model), x[:1].contiguous(), 200
                    )
        self.measure()

    def measure(self) -> None:
        """One round, then torch back to one thread (the load generators and servers get the cores)."""
        self.rounds.append(
            engine_ceilings(self.det, self.x, self.batch, self.cores, self.engines, self.model)
        )
        torch.set_num_threads(1)

    def report(self) -> dict:
        """The report's ``ceiling``: the first engine's median, all and one-thread figures, and with
        ``--engines`` the same per engine, its one-image latency, and its ratio to the first engine by round."""
        first = self.engines[0]
        out: dict = {
            "median": statistics.median(r[first] for r in self.rounds),
            "all": [r[first] for r in self.rounds],
            "one_thread": self.one_thread[first],
        }
        if self.explicit:
            out["engines"] = {
                e: {
                    "median": statistics.median(r[e] for r in self.rounds),
                    "all": [r[e] for r in self.rounds],
                    "one_thread": self.one_thread[e],
                    "one_image_ms": self.one_image_ms[e],
                    "ratios": [r[e] / r[first] for r in self.rounds],
                }
                for e in self.engines
            }
        return out


def engine_list(text: str) -> list[str] | None:
    """``--engines`` as a list (None when not given: the server's default engine, not passed to lgm serve)."""
    from bench.serving.engines import ENGINES

    engines = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or len(set(engines)) != len(engines):
        raise SystemExit(f"--engines {text!r}: distinct names among {', '.join(ENGINES)}")
    return engines or None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
