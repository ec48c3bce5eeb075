"""Score images with a calibrated L-GM detector.

An L-GM network (Wan et al., CVPR 2018) models its deep features as a Gaussian mixture, one component per
class. For an input x with feature f(x) and predicted class k:

    log_likelihood(x) = log N(f(x); mu_k, Lambda_k) = -d_k - 0.5 log|Lambda_k| - (D/2) log(2 pi)
    abnormality(x)    = P_clean(LL > log_likelihood(x) | predicted class k)     (empirical tail probability)
    is_adversarial(x) = log_likelihood(x) < threshold_k

``abnormality`` comes from the per-class quantiles of the clean calibration log-likelihoods stored in
detector.json (linear interpolation between quantiles; 1.0 below the lowest, 0.0 above the highest), so 0.99
means the likelihood is lower than that of 99% of clean calibration inputs of the same predicted class.
``threshold`` is in log-likelihood units (nats): the class's own threshold when detector.json deploys
per-class thresholds, the same global value for every input otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.artifacts import ArtifactError, load_artifact, read_json
from training.distributed import resolve_device
from training.lgm import LGMHead
from training.model import Classifier

DETECTOR_FILE = "detector.json"
DETECTOR_FORMAT = 1
THRESHOLD_UNITS = "log-likelihood (nats) of the feature under the predicted class; flagged when below"


class NotCalibratedError(ArtifactError):
    """The artifact has no usable detector.json; the message names the command that makes one."""


@dataclass
class Scores:
    """Per-input results, all on the CPU. N inputs, K classes."""

    pred: torch.Tensor  # (N,) int64
    probs: torch.Tensor  # (N, K) float32, the L-GM posterior softmax(logits)
    log_likelihood: torch.Tensor  # (N,) float32, log N(f(x); mu_pred, Lambda_pred)
    abnormality: torch.Tensor  # (N,) float32 in [0, 1]
    is_adversarial: torch.Tensor  # (N,) bool
    threshold: torch.Tensor  # (N,) float32, log-likelihood threshold applied to each input


def lgm_head(model: Classifier) -> LGMHead:
    if not isinstance(model.head, LGMHead):
        raise ValueError("the detector needs an L-GM model (head 'lgm'); this artifact has a softmax head")
    return model.head


def lgm_outputs(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and per-class log-likelihoods (N, K) of a batch in [0, 1]; differentiable."""
    logits, feats = model(x, return_features=True)
    return logits, lgm_head(model).log_likelihood(feats.float())


@torch.no_grad()
def raw_scores(model: Classifier, x: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """pred (N,), probs (N, K) and log-likelihood under the predicted class (N,), on the CPU, batched."""
    dev = next(model.parameters()).device
    preds, probs, lls = [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev).float()
        logits, ll = lgm_outputs(model, xb)
        pred = logits.argmax(1)
        preds.append(pred.cpu())
        probs.append(torch.softmax(logits.float(), 1).cpu())
        lls.append(ll.gather(1, pred[:, None]).squeeze(1).float().cpu())
    return {"pred": torch.cat(preds), "probs": torch.cat(probs), "log_likelihood": torch.cat(lls)}


def tail_probability(ll: np.ndarray, pred: np.ndarray, quantiles: dict[str, Any]) -> np.ndarray:
    """Abnormality = 1 - F_k(ll) with F_k the clean CDF of class k, interpolated between stored quantiles."""
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    per_class = quantiles["per_class"]
    glob = np.asarray(quantiles["global"], dtype=np.float64)
    out = np.empty(len(ll), dtype=np.float64)
    for k in np.unique(pred):
        sel = pred == k
        q = per_class[int(k)] if int(k) < len(per_class) and per_class[int(k)] is not None else glob
        q = np.maximum.accumulate(np.asarray(q, dtype=np.float64))  # guard: non-decreasing
        out[sel] = 1.0 - np.interp(ll[sel], q, levels, left=0.0, right=1.0)
    return np.clip(out, 0.0, 1.0)


def deployed_thresholds(kind: str | None, per_class: Sequence[float], global_threshold: float) -> np.ndarray:
    """The threshold in force for each predicted class, (K,): its own when ``kind`` is per_class, else the
    global one for every class."""
    per = np.asarray(per_class, dtype=np.float64)
    return per if kind == "per_class" else np.full(len(per), float(global_threshold), dtype=np.float64)


def thresholds_for(pred: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The log-likelihood threshold applied to each input (per-class or global, as deployed)."""
    c = calibration
    return deployed_thresholds(c.get("threshold_kind"), c["class_thresholds"], c["global_threshold"])[pred]


class Detector:
    """A calibrated L-GM detector: ``Detector.load(DIR).score(x)``."""

    def __init__(
        self, model: Classifier, meta: dict[str, Any], calibration: dict[str, Any], device: torch.device
    ):
        lgm_head(model)
        self.model = model.eval()
        self.meta = meta
        self.calibration = calibration
        self.device = device
        self.class_names: list[str] = list(meta["dataset"]["class_names"])
        self.input_shape: tuple[int, int, int] = tuple(int(v) for v in meta["arch"]["input_shape"])  # type: ignore[assignment]

    @classmethod
    def load(cls, artifact_dir: str | Path, device: str | torch.device = "auto") -> Detector:
        art = Path(artifact_dir)
        dev = resolve_device(device) if isinstance(device, str) else device
        model, meta = load_artifact(art, dev)
        lgm_head(model)
        calibration = load_calibration(art, meta)
        return cls(model, meta, calibration, dev)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), got {shape}"
            )

    def score(self, x: torch.Tensor, batch_size: int = 512, grad: bool = False) -> Scores:
        """Score a batch (N, C, H, W) of floats in [0, 1]. ``grad=True`` keeps the autograd graph (then all
        tensors stay on the model's device and only log_likelihood/probs are differentiable)."""
        self._check(x)
        if grad:
            logits, ll_all = lgm_outputs(self.model, x.to(self.device).float())
            pred = logits.argmax(1)
            ll = ll_all.gather(1, pred[:, None]).squeeze(1)
            probs = torch.softmax(logits, 1)
        else:
            raw = raw_scores(self.model, x, batch_size)
            pred, probs, ll = raw["pred"], raw["probs"], raw["log_likelihood"]
        pred_np = pred.detach().cpu().numpy()
        ll_np = ll.detach().cpu().double().numpy()
        abn = tail_probability(ll_np, pred_np, self.calibration["quantiles"])
        thr = thresholds_for(pred_np, self.calibration)
        dev = ll.device
        return Scores(
            pred=pred.long(),
            probs=probs.float(),
            log_likelihood=ll.float(),
            abnormality=torch.from_numpy(abn).float().to(dev),
            is_adversarial=torch.from_numpy(ll_np < thr).to(dev),
            threshold=torch.from_numpy(thr).float().to(dev),
        )

    def info(self) -> dict[str, Any]:
        """What GET /v1/model shows: thresholds, mode, target FPR and the calibration figures."""
        c = self.calibration
        return {
            "mode": c["mode"],
            "rule": c.get("rule"),
            "threshold_kind": c["threshold_kind"],
            "threshold_units": THRESHOLD_UNITS,
            "target_fpr": c["target_fpr"],
            "global_threshold": c["global_threshold"],
            "class_thresholds": dict(zip(self.class_names, c["class_thresholds"], strict=True)),
            "attacks": c.get("attacks", []),
            "budgets": c.get("budgets", {}),
            "calibration": c.get("figures", {}),
            "created": c.get("created"),
            "model_sha256": c.get("model_sha256"),
        }


def load_calibration(art_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Read ARTIFACT/detector.json and check it belongs to this model's weights."""
    art = Path(art_dir)
    path = art / DETECTOR_FILE
    if not path.is_file():
        raise NotCalibratedError(f"{path} missing: run `lgm calibrate {art}`")
    cal = read_json(path, "detector calibration (detector.json)")
    for key in ("mode", "threshold_kind", "target_fpr", "global_threshold", "class_thresholds", "quantiles"):
        if key not in cal:
            raise NotCalibratedError(f"{path}: missing key '{key}': run `lgm calibrate {art}`")
    if cal.get("model_sha256") != meta.get("weights_sha256"):
        raise NotCalibratedError(f"{path} was calibrated for other weights: run `lgm calibrate {art}`")
    k = len(meta["dataset"]["class_names"])
    if len(cal["class_thresholds"]) != k or len(cal["quantiles"]["per_class"]) != k:
        raise NotCalibratedError(f"{path}: expected {k} classes: run `lgm calibrate {art}`")
    return cal
