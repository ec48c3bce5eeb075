"""The calibrated detector on disk: ``detector.json`` (settings, thresholds, tail models, figures) beside
``detector.safetensors`` (the fitted Gaussians' tensors). No pickles.

Both are tied to the model's weights: detector.json records the weights' sha256 and the tensor file's sha256,
and the tensor file's own metadata records the weights' sha256 too, so a detector fitted to other weights, or a
tensor file copied from another calibration, is refused at load with one line that names ``lgm calibrate``.
Writes are atomic (tensors first, then the JSON that points at them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from detector.gaussians import ClassGaussians
from detector.statistics import ScoreModel
from detector.tails import TailModel
from training.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, read_json, sha256_bytes

DETECTOR_FILE = "detector.json"
TENSOR_FILE = "detector.safetensors"
DETECTOR_FORMAT = 2
REQUIRED = (
    "mode",
    "threshold_kind",
    "target_fpr",
    "global_threshold",
    "class_thresholds",
    "quantiles",
    "score",
)


class NotCalibratedError(ArtifactError):
    """The artifact has no usable detector.json; the message names the command that makes one."""


def score_tensors(sm: ScoreModel) -> dict[str, torch.Tensor]:
    out = sm.gaussians.tensors("feature")
    for i, g in enumerate(sm.layer_gaussians):
        out.update(g.tensors(f"layer{i + 1}"))
    if sm.noise is not None:
        out["stability.noise"] = sm.noise
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def score_settings(sm: ScoreModel) -> dict[str, Any]:
    """The JSON half of a ScoreModel (the tensors go to detector.safetensors)."""
    return {
        "groups": list(sm.groups),
        "statistics": sm.names,
        "n_layers": len(sm.layer_gaussians),
        "combine": sm.combine,
        "weights": sm.weights,
        "bias": sm.bias,
        "tails": [t.to_dict() for t in sm.tails],
    }


def save_detector(art_dir: str | Path, cal: dict[str, Any], sm: ScoreModel) -> dict[str, Any]:
    """Write detector.safetensors, then detector.json (with the tensors' sha256). Returns the JSON written."""
    art = Path(art_dir)
    blob = st_save(score_tensors(sm), metadata={"model_sha256": str(cal["model_sha256"])})
    cal = dict(
        cal, format_version=DETECTOR_FORMAT, tensors_file=TENSOR_FILE, tensors_sha256=sha256_bytes(blob)
    )
    cal["score"] = dict(cal.get("score", {}), **score_settings(sm))
    atomic_write_bytes(art / TENSOR_FILE, blob)
    atomic_write_json(art / DETECTOR_FILE, cal)
    return cal


def _refuse(path: Path, why: str, art: Path) -> NotCalibratedError:
    return NotCalibratedError(f"{path}{why}: run `lgm calibrate {art}`")


def load_detector(art_dir: str | Path, meta: dict[str, Any]) -> tuple[dict[str, Any], ScoreModel]:
    """Read and check detector.json and detector.safetensors against this model's weights."""
    art = Path(art_dir)
    path = art / DETECTOR_FILE
    if not path.is_file():
        raise _refuse(path, " missing", art)
    cal = read_json(path, "detector calibration (detector.json)")
    if cal.get("format_version") != DETECTOR_FORMAT:
        raise _refuse(
            path, f" is format {cal.get('format_version')!r}, this version reads {DETECTOR_FORMAT}", art
        )
    for key in REQUIRED:
        if key not in cal:
            raise _refuse(path, f": missing key '{key}'", art)
    if cal.get("model_sha256") != meta.get("weights_sha256"):
        raise _refuse(path, " was calibrated for other weights", art)
    k = len(meta["dataset"]["class_names"])
    if len(cal["class_thresholds"]) != k or len(cal["quantiles"]["per_class"]) != k:
        raise _refuse(path, f": expected {k} classes", art)
    tpath = art / TENSOR_FILE
    if not tpath.is_file():
        raise _refuse(tpath, " missing", art)
    blob = tpath.read_bytes()
    if sha256_bytes(blob) != cal.get("tensors_sha256"):
        raise _refuse(tpath, " does not match detector.json (another calibration's, or damaged)", art)
    try:
        tensors = st_load(blob)
        from safetensors import safe_open

        with safe_open(str(tpath), framework="pt") as f:
            file_sha = (f.metadata() or {}).get("model_sha256")
    except (SafetensorError, OSError) as exc:
        raise _refuse(tpath, f" is not a readable safetensors file ({exc})", art) from None
    if file_sha != meta.get("weights_sha256"):
        raise _refuse(tpath, " was fitted to other weights", art)
    s = cal["score"]
    try:
        sm = ScoreModel(
            groups=list(s["groups"]),
            gaussians=ClassGaussians.from_tensors(tensors, "feature"),
            layer_gaussians=[
                ClassGaussians.from_tensors(tensors, f"layer{i + 1}") for i in range(int(s["n_layers"]))
            ],
            tails=[TailModel.from_dict(t) for t in s["tails"]],
            combine=s["combine"],
            weights=s.get("weights"),
            bias=float(s.get("bias", 0.0)),
            noise=tensors["stability.noise"] if "stability" in s["groups"] else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(path, f": incomplete score settings ({exc})", art) from None
    if len(sm.tails) != len(sm.names):
        raise _refuse(path, f": {len(sm.tails)} tail models for {len(sm.names)} statistics", art)
    return cal, sm
