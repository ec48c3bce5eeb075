"""Model artifacts: ``model.safetensors`` (weights) + ``model.json`` (everything else), written atomically.

model.json holds ``format_version``, ``arch`` (a ModelSpec), ``dataset`` (name, root, split seed, class names),
``lgm`` (loss settings), ``train`` (the resolved training config), ``history``, ``metrics`` (at least
``test_accuracy`` and ``calibration_accuracy``) and ``weights_sha256``. Loading recomputes the hash and loads
with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from training.model import Classifier, ModelSpec

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


class ArtifactError(ValueError):
    """A missing, truncated or tampered artifact; the message is one line."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing {what}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path}: {what} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: {what} must hold a JSON object")
    return obj


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_to_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_artifact(out_dir: str | Path, model: Classifier, meta: dict[str, Any]) -> dict[str, Any]:
    """Write weights then metadata (with the weights' sha256). Returns the metadata written."""
    out = Path(out_dir)
    blob = st_save(state_to_cpu(model))
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    meta["arch"] = model.spec.to_dict()
    meta["weights_sha256"] = sha256_bytes(blob)
    atomic_write_bytes(out / WEIGHTS, blob)
    atomic_write_json(out / META, meta)
    return meta


def has_artifact(out_dir: str | Path) -> bool:
    return (Path(out_dir) / WEIGHTS).is_file() and (Path(out_dir) / META).is_file()


def load_meta(art_dir: str | Path) -> dict[str, Any]:
    art = Path(art_dir)
    if not art.is_dir():
        raise ArtifactError(f"{art}: no such artifact folder (train one with: lgm train --out {art})")
    meta = read_json(art / META, "model metadata (model.json)")
    for key in ("arch", "weights_sha256", "dataset"):
        if key not in meta:
            raise ArtifactError(f"{art / META}: missing key '{key}'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{art / META}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return meta


def load_artifact(
    art_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model from model.json, check the weights' sha256, load them. Model is in eval mode."""
    art = Path(art_dir)
    meta = load_meta(art)
    wpath = art / WEIGHTS
    if not wpath.is_file():
        raise ArtifactError(f"{wpath}: missing weights file")
    blob = wpath.read_bytes()
    if sha256_bytes(blob) != meta["weights_sha256"]:
        raise ArtifactError(f"{wpath}: sha256 does not match model.json (file truncated or tampered with)")
    try:
        state = st_load(blob)
        model = Classifier(ModelSpec.from_dict(meta["arch"]))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{art}: weights do not fit the architecture in model.json ({exc})") from None
    model.to(device).eval()
    return model, meta
