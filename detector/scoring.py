"""Score images with a calibrated L-GM detector: ``Detector.load(DIR).score(x)``.

An L-GM network (Wan et al., CVPR 2018) models its deep features as a Gaussian mixture, one component per
class. For an input x with predicted class k the detector reports:

    log_likelihood(x) = log N(f(x); mu_k, Sigma_k)        the feature's log-likelihood under class k (nats,
                                                           with log-determinant and constant)
    score(x)          = the combined score of the detector's statistics (``detector/statistics.py``): in clean
                        mode the largest surprise -log P_clean(S_i > s_i(x)) over the likelihood, the
                        boundary statistic and each earlier layer's likelihood
    is_adversarial(x) = score(x) > T_k                     T_k set on the clean calibration split
    abnormality(x)    = P_clean(score < score(x) | predicted class k), from stored quantiles (0.99 = more
                        abnormal than 99% of clean calibration inputs of that class)
    threshold(x)      = the log-likelihood (nats) under which x is flagged on its likelihood alone; an input
                        above it is still flagged when another statistic is extreme enough
                        (so log_likelihood < threshold implies is_adversarial, not the reverse).

The Gaussians are those fitted at calibration to the training split's features (or the head's own, as
chosen by ``lgm calibrate --gaussians``); both files are checked against the weights' sha256 at load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.statistics import ScoreModel
from detector.store import DETECTOR_FILE, DETECTOR_FORMAT, NotCalibratedError, load_detector
from training.artifacts import load_artifact
from training.batched import batched
from training.distributed import resolve_device
from training.lgm import LGMHead
from training.model import Classifier

THRESHOLD_UNITS = (
    "combined score (largest surprise -log P_clean over the detector's statistics, or the roc-mode logistic "
    "score); flagged when above"
)

__all__ = ["DETECTOR_FILE", "DETECTOR_FORMAT", "Detector", "NotCalibratedError", "Scores", "load_calibration"]


@dataclass
class Scores:
    """Per-input results. N inputs, K classes, m statistics. On the CPU unless scored with ``grad=True``."""

    pred: torch.Tensor  # (N,) int64
    probs: torch.Tensor  # (N, K) float32, the L-GM posterior softmax(logits)
    log_likelihood: torch.Tensor  # (N,) float32, log N(f(x); mu_pred, Sigma_pred)
    abnormality: torch.Tensor  # (N,) float32 in [0, 1]
    is_adversarial: torch.Tensor  # (N,) bool
    threshold: torch.Tensor  # (N,) float32, log-likelihood flagged on its own
    score: torch.Tensor  # (N,) float64, the combined score (larger = more abnormal)
    surprises: torch.Tensor  # (N, m) float64, each statistic's surprise


def lgm_head(model: Classifier) -> LGMHead:
    if not isinstance(model.head, LGMHead):
        raise ValueError("the detector needs an L-GM model (head 'lgm'); this artifact has a softmax head")
    return model.head


def abnormality_from_quantiles(score: np.ndarray, pred: np.ndarray, quantiles: dict[str, Any]) -> np.ndarray:
    """P_clean(score < s | class) interpolated between the stored per-class quantiles of the clean score."""
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    per_class = quantiles["per_class"]
    out = np.empty(len(score), dtype=np.float64)
    for k in np.unique(pred):
        sel = pred == k
        q = np.maximum.accumulate(np.asarray(per_class[int(k)], dtype=np.float64))  # guard: non-decreasing
        out[sel] = np.interp(score[sel], q, levels, left=0.0, right=1.0)
    return np.clip(out, 0.0, 1.0)


def deployed_thresholds(kind: str | None, per_class: Sequence[float], global_threshold: float) -> np.ndarray:
    """The score threshold in force for each predicted class, (K,): its own when ``kind`` is per_class, else the
    global one for every class."""
    per = np.asarray(per_class, dtype=np.float64)
    return per if kind == "per_class" else np.full(len(per), float(global_threshold), dtype=np.float64)


def load_calibration(art_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """detector.json, checked (with its tensor file) against this model's weights."""
    return load_detector(art_dir, meta)[0]


class Detector:
    """A calibrated L-GM detector: the network, its score model and its thresholds.

    The network rests in eval mode, and every score runs it in eval mode whatever mode code around it left it in
    (``ScoreModel.forward`` through ``training/modes.py``'s ``eval_mode``), so that an attack library or a caller
    that puts it back in training mode changes neither the answers nor the weights and BatchNorm buffers."""

    def __init__(
        self,
        model: Classifier,
        meta: dict[str, Any],
        calibration: dict[str, Any],
        score_model: ScoreModel,
        device: torch.device,
    ) -> None:
        lgm_head(model)
        self.model = model.eval()
        self.meta = meta
        self.calibration = calibration
        self.device = device
        self.score_model = score_model.to(device)
        self.class_names: list[str] = list(meta["dataset"]["class_names"])
        self.input_shape: tuple[int, int, int] = tuple(int(v) for v in meta["arch"]["input_shape"])  # type: ignore[assignment]
        c = calibration
        self.thresholds = deployed_thresholds(
            c["threshold_kind"], c["class_thresholds"], c["global_threshold"]
        )
        self.ll_thresholds = np.array([score_model.likelihood_threshold(t) for t in self.thresholds])

    @classmethod
    def load(cls, artifact_dir: str | Path, device: str | torch.device = "auto") -> Detector:
        art = Path(artifact_dir)
        dev = resolve_device(device) if isinstance(device, str) else device
        model, meta = load_artifact(art, dev)
        lgm_head(model)
        calibration, sm = load_detector(art, meta)
        return cls(model, meta, calibration, sm, dev)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), got {shape}"
            )

    def outputs(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Differentiable outputs of one batch on the model's device: logits (N, K), ll (N, K) under every
        class, statistics (N, m), surprises (N, m) and score (N,), taken for ``cls`` when given (an attacker's
        target class), else for the predicted class."""
        logits, ll, stats = self.score_model.forward(self.model, x.to(self.device).float(), cls)
        surprises = self.score_model.surprises(stats.double())
        return {
            "logits": logits,
            "ll": ll,
            "stats": stats,
            "surprises": surprises,
            "score": self.score_model.combined(surprises),
        }

    def score(self, x: torch.Tensor, batch_size: int = 512, grad: bool = False) -> Scores:
        """Score a batch (N, C, H, W) of floats in [0, 1]. ``grad=True`` keeps the autograd graph (one pass,
        tensors on the model's device)."""
        self._check(x)
        out = self.outputs(x) if grad else batched(self.outputs, x, batch_size, self.device)
        logits = out["logits"]
        pred = logits.argmax(1)
        ll = out["ll"].gather(1, pred[:, None]).squeeze(1)
        pred_np = pred.detach().cpu().numpy()
        score_np = out["score"].detach().cpu().numpy()
        abn = abnormality_from_quantiles(score_np, pred_np, self.calibration["quantiles"])
        dev = ll.device
        return Scores(
            pred=pred.long(),
            probs=torch.softmax(logits, 1).float(),
            log_likelihood=ll.float(),
            abnormality=torch.from_numpy(abn).float().to(dev),
            is_adversarial=torch.from_numpy(score_np > self.thresholds[pred_np]).to(dev),
            threshold=torch.from_numpy(self.ll_thresholds[pred_np]).float().to(dev),
            score=out["score"],
            surprises=out["surprises"],
        )

    def info(self) -> dict[str, Any]:
        """What GET /v1/model shows: the score, thresholds, mode, target FPR and the calibration figures."""
        c = self.calibration
        s = c["score"]
        return {
            "mode": c["mode"],
            "rule": c.get("rule"),
            "threshold_kind": c["threshold_kind"],
            "threshold_units": THRESHOLD_UNITS,
            "target_fpr": c["target_fpr"],
            "global_threshold": c["global_threshold"],
            "class_thresholds": dict(zip(self.class_names, c["class_thresholds"], strict=True)),
            "likelihood_thresholds": dict(zip(self.class_names, self.ll_thresholds.tolist(), strict=True)),
            "score": {k: s.get(k) for k in ("gaussians", "shrinkage", "statistics", "combine")},
            "attacks": c.get("attacks", []),
            "budgets": c.get("budgets", {}),
            "calibration": c.get("figures", {}),
            "created": c.get("created"),
            "model_sha256": c.get("model_sha256"),
        }
