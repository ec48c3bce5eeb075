"""The deployed detector as one torch module from pixels to the served answer, for ``lgm export`` (ONNX).

``DetectorGraph(detector)`` computes what ``Detector.score`` (``detector/scoring.py``) computes, as torch
operations that ``torch.onnx.export`` can write out, with the loaded detector's fitted tensors as buffers:

- the network and the statistics: ``ScoreModel.forward`` itself (``detector/statistics.py``: the likelihood, the
  boundary statistic and each tapped layer's likelihood under the predicted class, float32 as served);
- the surprises -log P_clean(S_i > s_i): ``TailStack.surprise`` (``detector/tails.py``) rewritten without
  ``torch.searchsorted``, which ONNX has no operator for: the bracketing knot's index is the count of knots at or
  below the value, which is what ``searchsorted(..., right=True)`` returns on sorted knots (float64, as served);
- the combined score: ``ScoreModel.combined`` itself; the flag: score above the predicted class's deployed
  threshold (``deployed_thresholds``);
- the abnormality: ``abnormality_from_quantiles``'s ``np.interp`` between the per-class clean quantiles, written
  as numpy's interpolation (the interval [q_j, q_{j+1}) that holds the score, 0 below the first quantile, 1 at or
  above the last);
- the likelihood threshold of the predicted class (``Detector.ll_thresholds``).

Outputs, in order, are those of the Open Inference Protocol route (``OUTPUTS``, the keys of
``service/schema_types.py``'s ``OIP_OUTPUTS``; a test keeps the two equal) and the combined score. Gradients stay
in PyTorch: nothing in the project scores through this module besides the exporter and its tests.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from detector.gaussians import ClassGaussians
from detector.scoring import Detector
from detector.statistics import ScoreModel

INPUT = "input"
# name -> (ONNX Runtime / OIP datatype, shape past the batch axis: () or ("K",) for one entry per class)
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "class": ("INT64", ()),
    "probabilities": ("FP32", ("K",)),
    "log_likelihood": ("FP32", ()),
    "abnormality_score": ("FP32", ()),
    "is_adversarial": ("BOOL", ()),
    "threshold": ("FP32", ()),
    "score": ("FP64", ()),
}


def _buffers(module: nn.Module, prefix: str, g: ClassGaussians) -> None:
    for name in ("means", "whiten", "logdet"):
        module.register_buffer(f"{prefix}_{name}", getattr(g, name).detach().cpu().clone())


def _gaussians(module: nn.Module, prefix: str) -> ClassGaussians:
    return ClassGaussians(*(getattr(module, f"{prefix}_{n}") for n in ("means", "whiten", "logdet")))


class DetectorGraph(nn.Module):
    """``Detector.score`` as one module: x (N, C, H, W) float32 in [0, 1] -> the tuple of ``OUTPUTS``."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        sm = det.score_model.to("cpu")
        self.model = copy.deepcopy(det.model).cpu().eval()  # the detector's own network stays where it is
        self.groups = list(sm.groups)
        self.n_layers = len(sm.layer_gaussians)
        self.combine = sm.combine
        self.weights = sm.weights
        self.bias = sm.bias
        _buffers(self, "feature", sm.gaussians)
        for i, g in enumerate(sm.layer_gaussians):
            _buffers(self, f"layer{i + 1}", g)
        self.has_noise = sm.noise is not None
        if sm.noise is not None:  # the stability statistic's fixed noise patterns
            self.register_buffer("stability_noise", sm.noise.detach().cpu().float().clone())
        tails = sm.tails
        if any(t.levels != tails[0].levels for t in tails):
            raise ValueError("the tail models must share their bulk levels")
        self.u = float(tails[0].u)
        f64 = torch.float64
        self.register_buffer("tail_knots", torch.tensor([t.values for t in tails], dtype=f64))  # (m, L)
        self.register_buffer("tail_levels", torch.tensor(tails[0].levels, dtype=f64))  # (L,)
        self.register_buffer("tail_beta", torch.tensor([t.beta for t in tails], dtype=f64))  # (m,)
        self.register_buffer("thresholds", torch.tensor(det.thresholds, dtype=f64))  # (K,), a copy
        self.register_buffer("ll_thresholds", torch.tensor(det.ll_thresholds, dtype=torch.float32))
        q = det.calibration["quantiles"]
        per_class = np.maximum.accumulate(np.asarray(q["per_class"], dtype=np.float64), axis=1)
        self.register_buffer("quantiles", torch.as_tensor(per_class, dtype=f64))  # (K, Lq)
        self.register_buffer("quantile_levels", torch.as_tensor(np.asarray(q["levels"], dtype=np.float64)))

    def score_model(self) -> ScoreModel:
        """The ``ScoreModel`` whose statistics this module computes, over its own buffers."""
        return ScoreModel(
            groups=self.groups,
            gaussians=_gaussians(self, "feature"),
            layer_gaussians=[_gaussians(self, f"layer{i + 1}") for i in range(self.n_layers)],
            tails=[],
            combine=self.combine,
            weights=self.weights,
            bias=self.bias,
            noise=self.stability_noise if self.has_noise else None,
        )

    def surprises(self, v: torch.Tensor) -> torch.Tensor:
        """(N, m) statistics -> (N, m) surprises: ``TailStack.surprise`` with the knot search as a count."""
        knots, levels, beta = self.tail_knots, self.tail_levels, self.tail_beta
        n_knots = knots.shape[1]
        vt = v.t()  # (m, N)
        q_u = knots[:, -1:]
        tail = -math.log1p(-self.u) + (vt - q_u) / beta[:, None]
        vb = torch.minimum(torch.maximum(vt, knots[:, :1]), q_u)
        at_or_below = (knots[:, None, :] <= vb[:, :, None]).long().sum(2)  # (m, N): searchsorted, right=True
        hi = at_or_below.clamp(1, n_knots - 1)
        x0, x1 = knots.gather(1, hi - 1), knots.gather(1, hi)
        l0, l1 = levels[hi - 1], levels[hi]
        width = x1 - x0
        ones = torch.ones_like(width)
        frac = torch.where(width > 0, (vb - x0) / torch.where(width > 0, width, ones), ones)
        cdf = l0 + frac * (l1 - l0)
        bulk = -torch.log1p(-cdf.clamp(max=self.u))
        return torch.where(vt > q_u, tail, bulk).t()

    def abnormality(self, score: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(N,) scores and classes -> P_clean(score < s | class): numpy's ``interp`` over the class's quantiles."""
        q = self.quantiles[pred]  # (N, Lq)
        levels = self.quantile_levels
        n_q = q.shape[1]
        s = score[:, None]
        j = ((q <= s).long().sum(1, keepdim=True) - 1).clamp(0, n_q - 2)  # q_j <= s < q_{j+1} inside
        x0, x1 = q.gather(1, j), q.gather(1, j + 1)
        f0, f1 = levels[j], levels[j + 1]
        width = x1 - x0
        slope = (f1 - f0) / torch.where(width > 0, width, torch.ones_like(width))
        inside = (slope * (s - x0) + f0).squeeze(1)
        first, last = q[:, 0], q[:, -1]
        out = torch.where(score < first, torch.zeros_like(score), inside)
        out = torch.where(score > last, torch.ones_like(score), out)
        out = torch.where(score == last, levels[-1].expand_as(score), out)
        return out.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (N, C, H, W) float32 in [0, 1] -> class, probabilities, log_likelihood, abnormality_score,
        is_adversarial, threshold, score (``OUTPUTS``)."""
        sm = self.score_model()
        logits, ll, stats = sm.forward(self.model, x.float())
        score = sm.combined(self.surprises(stats.double()))
        pred = logits.argmax(1)
        return (
            pred,
            torch.softmax(logits, 1).float(),
            ll.gather(1, pred[:, None]).squeeze(1).float(),
            self.abnormality(score, pred).float(),
            score > self.thresholds[pred],
            self.ll_thresholds[pred],
            score,
        )
