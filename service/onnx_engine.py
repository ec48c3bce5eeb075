"""``lgm serve --engine onnxruntime``: the same answers, scored by ONNX Runtime instead of eager PyTorch.

At start-up the loaded detector is exported in memory by the project's own exporter
(``detector/export.py``'s ``build_in_memory``: ``DetectorGraph`` traced to ONNX, ``onnx.checker``, then a run
against ``Detector.score`` on a few inputs; no file is written) and one ONNX Runtime session is made over it,
with ``--threads`` intra-op threads as torch gets them today. ``OnnxEngine`` is ``service/engine.py``'s
``Engine`` with its forward replaced: the same worker thread, the same micro-batcher, the same ``BatchResult``,
so ``/v1/predict``, OIP ``/v2`` (JSON and binary) and gRPC answer in the same form. Gradients stay in PyTorch:
``/v1/perturb``'s FGSM runs on the torch detector, which stays loaded alongside (its perturbed image is then
scored by ONNX Runtime, like every other answer).

Numbers agree with the torch engine up to float32 rounding: the combined score can differ by about 1e-3 where the
two top logits are close (``docs/deployment.md``, ``lgm export``), so an input within that distance of its
threshold may be flagged differently.

``onnx`` and ``onnxruntime`` are imported by ``detector/export.py`` only, inside the functions that need them:
importing this module loads neither, and a server on ``--engine torch`` never calls them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from detector.export import ExportError, build_in_memory, session
from detector.onnx_graph import INPUT
from detector.scoring import Detector
from service.engine import BatchResult, Engine

ENGINES = ("torch", "onnxruntime")
log = logging.getLogger("lgm.engine")
WHO = "--engine onnxruntime"  # how a start-up error names the engine
# the outputs a BatchResult holds, in its field order (the graph's "score" is not served)
FIELDS = ("class", "probabilities", "log_likelihood", "abnormality_score", "is_adversarial", "threshold")


def export(detector: Detector) -> bytes:
    """The detector as a checked ONNX model, in memory. A one-line ValueError naming the engine if it cannot be
    exported (or the onnx extra is missing)."""
    try:
        return build_in_memory(detector, WHO)
    except ExportError as exc:
        raise ValueError(str(exc) if str(exc).startswith(WHO) else f"{WHO}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{WHO} cannot export this artifact: {str(exc).splitlines()[0]}") from None


def prepare(
    requested: str, resolved: str, detector: Detector, model: bytes | None = None
) -> tuple[str, bytes | None]:
    """The engine to build and its export: (``resolved``, the export) as asked; when ``auto`` resolved to
    onnxruntime and the export fails, one warning and (``torch``, None); an explicit ``--engine onnxruntime``
    fails with the export's one-line error."""
    if resolved != "onnxruntime":
        return resolved, None
    try:
        return resolved, model if model is not None else export(detector)
    except ValueError as exc:
        if requested != "auto":
            raise
        log.warning("engine auto: scoring with torch, as %s", str(exc).splitlines()[0])
        return "torch", None


class OnnxEngine(Engine):
    """``Engine`` whose forward runs one ONNX Runtime session over the exported detector.

    Args:
        detector: the loaded torch detector (on the CPU): FGSM, the model's description and the export's source.
        threads: ONNX Runtime's intra-op threads (and torch's, for FGSM), as ``Engine`` sets torch's.
        model: the exported model's bytes (``export(detector)``); made here when None.
    """

    name = "onnxruntime"

    def __init__(self, detector: Detector, threads: int = 1, model: bytes | None = None) -> None:
        model = model if model is not None else export(detector)
        sess = session(model, threads, WHO)  # before the torch side is set up: a failure changes nothing
        super().__init__(detector, threads)
        self.model = model
        self.session: Any = sess

    def forward(self, x: torch.Tensor) -> BatchResult:
        """One run of the exported graph: (N, C, H, W) float32 in [0, 1] -> BatchResult (same dtypes)."""
        pixels = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self.session.run(list(FIELDS), {INPUT: pixels})
        return BatchResult(*out)


def create_engine(name: str, detector: Detector, threads: int, model: bytes | None = None) -> Engine:
    """The one place the engine is chosen: ``torch`` (``Engine``) or ``onnxruntime`` (``OnnxEngine``, over
    ``model`` when the caller exported it already, as ``lgm serve`` does before uvicorn starts)."""
    if name == "torch":
        return Engine(detector, threads)
    if name == "onnxruntime":
        return OnnxEngine(detector, threads, model)
    raise ValueError(f"--engine {name!r}: use one of {', '.join(ENGINES)}")
