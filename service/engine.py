"""The model side of the server: a loaded ``detector.scoring.Detector``, its worker thread, warm-up and FGSM.

Everything torch does happens on one worker thread (``Engine.executor``), never on the event loop, and so does
ONNX Runtime's scoring under ``--engine onnxruntime`` (``service/onnx_engine.py``). The thread count is set on
that thread and process-wide, on purpose: with a micro-batcher feeding one forward at a time, ``cores - 1``
intra-op threads leave a core for the event loop (HTTP parsing, JSON, image decoding), which is what avoids the
oversubscription that stalls CPU servers.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from detector.gradient import fgsm
from detector.scoring import Detector, Scores


@dataclass
class BatchResult:
    """Scores of N images as numpy arrays (cheap to slice and to turn into JSON)."""

    pred: np.ndarray  # (N,) int64
    probs: np.ndarray  # (N, K) float32
    log_likelihood: np.ndarray  # (N,) float32
    abnormality: np.ndarray  # (N,) float32 in [0, 1]
    is_adversarial: np.ndarray  # (N,) bool
    threshold: np.ndarray  # (N,) float32

    @classmethod
    def from_scores(cls, s: Scores) -> BatchResult:
        """The response fields of a detector's ``Scores`` (on the CPU)."""
        return cls(
            pred=s.pred.numpy(),
            probs=s.probs.numpy(),
            log_likelihood=s.log_likelihood.numpy(),
            abnormality=s.abnormality.numpy(),
            is_adversarial=s.is_adversarial.numpy(),
            threshold=s.threshold.numpy(),
        )

    def slice(self, start: int, stop: int) -> BatchResult:
        return BatchResult(*(getattr(self, f)[start:stop] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.pred.shape[0])


def set_torch_threads(n: int) -> None:
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # may only be set once per process, before any inter-op work
        torch.set_num_interop_threads(1)


class Engine:
    """Owns the detector and the single worker thread it runs on; scores with PyTorch (``--engine torch``).

    ``score`` is the one scoring call of every answer path (the micro-batcher calls it); ``forward`` is what an
    engine computes, and ``service/onnx_engine.py``'s ``OnnxEngine`` replaces only it and the warm-up, so FGSM
    (``fgsm``) and the model's description keep using the torch detector whatever the engine.
    ``forwards`` and ``batch_sizes`` count what the worker did (the tests check coalescing with them).
    """

    name = "torch"

    def __init__(self, detector: Detector, threads: int = 1) -> None:
        self.detector = detector
        self.threads = threads
        self.forwards = 0
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self._lock = threading.Lock()
        self._threads_before = torch.get_num_threads()
        set_torch_threads(threads)
        self.executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="lgm-torch",
            initializer=torch.set_num_threads,
            initargs=(threads,),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.detector.input_shape

    @property
    def class_names(self) -> list[str]:
        return self.detector.class_names

    @property
    def device(self) -> torch.device:
        return self.detector.device

    # -- on the worker thread ------------------------------------------------------------------------------
    def score(self, x: torch.Tensor) -> BatchResult:
        """(N, C, H, W) in [0, 1] -> BatchResult, by this engine, counted. Runs on the worker thread."""
        res = self.forward(x)
        with self._lock:
            self.forwards += 1
            self.batch_sizes.append(int(x.shape[0]))
        return res

    def forward(self, x: torch.Tensor) -> BatchResult:
        """One forward of ``Detector.score`` in PyTorch."""
        with torch.inference_mode():
            s = self.detector.score(x, batch_size=max(512, int(x.shape[0])))
        return BatchResult.from_scores(s)

    def fgsm(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """FGSM against the model's own prediction on the float64 logit path (``detector/gradient.py``), so
        that it does not stall on an L-GM network's saturated float32 softmax. Runs on the worker thread."""
        return fgsm(self.detector.model, x.to(self.detector.device), eps).cpu()

    def warm_up(self, max_batch_size: int, rounds: int = 3) -> None:
        """A few forwards at the sizes the batcher will use, so the first request pays no allocation cost."""
        c, h, w = self.input_shape
        sizes = sorted({1, min(8, max_batch_size), max_batch_size})
        for _ in range(rounds):
            for n in sizes:
                self.forward(torch.rand(n, c, h, w))
        with self._lock:
            self.forwards = 0
            self.batch_sizes.clear()

    def shutdown(self) -> None:
        """Stop the worker thread and give torch back the thread count it had (matters when embedded)."""
        self.executor.shutdown(wait=True)
        torch.set_num_threads(self._threads_before)


def info(engine: Engine, model_name: str) -> dict[str, Any]:
    """The body of GET /v1/model."""
    det = engine.detector
    meta = det.meta
    c, h, w = det.input_shape
    return {
        "name": model_name,
        "version": model_version(meta),
        "classes": det.class_names,
        "input_shape": [c, h, w],
        "input_range": [0.0, 1.0],
        "dataset": {k: meta["dataset"].get(k) for k in ("name", "image_size", "sizes")},
        "architecture": meta.get("arch"),
        "lgm": meta.get("lgm"),
        "metrics": meta.get("metrics"),
        "detector": det.info(),
        "device": str(det.device),
        "engine": engine.name,
        "weights_sha256": meta.get("weights_sha256"),
    }


def model_version(meta: dict[str, Any]) -> str:
    """Short weights hash: changes exactly when the weights do."""
    return str(meta.get("weights_sha256", "unknown"))[:12]
