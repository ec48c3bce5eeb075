"""Validated request bodies -> (N, C, H, W) float32 tensors, and scores -> response JSON, for /v1 (the OIP /v2
routes have theirs in ``service/oip.py``).

FastAPI has already checked every body against its model (``service/schemas.py``): shapes, counts, numbers in
[0, 1]. What is left here is turning those into tensors, and decoding images (``service/images.py``), which
refuses with a 422 naming the problem: bad base64, files Pillow cannot (or must not) decode.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from service.engine import BatchResult
from service.images import Shape, decode_b64, decode_image


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """(C, H, W) arrays -> one (N, C, H, W) float32 tensor (a copy unless the one array is writable: torch
    tensors over read-only memory, e.g. an array viewing a decoded image's bytes, are undefined behaviour)."""
    if len(arrays) > 1:
        return torch.from_numpy(np.stack(arrays))
    one = arrays[0][None]
    return torch.from_numpy(one if one.flags.writeable else one.copy())


def instance_array(instance: Any, i: int, shape: Shape, max_pixels: int) -> np.ndarray:
    """One validated ``{"b64": ...}`` or ``{"array": ...}`` instance -> float32 (C, H, W)."""
    what = f"instances[{i}]"
    b64 = getattr(instance, "b64", None)
    if b64 is not None:
        return decode_image(decode_b64(b64, what), shape, max_pixels, what)
    return np.asarray(instance.array, dtype=np.float32).reshape(shape)  # [H][W] or [C][H][W], already checked


def instances_size(instances: list[Any]) -> int:
    """Rough bytes of a list of instances (to decide whether to decode them off the event loop)."""
    return sum(
        len(it.b64) if getattr(it, "b64", None) is not None else 8 * math.prod(np.shape(it.array))
        for it in instances
    )


def prediction_dicts(res: BatchResult, class_names: list[str], top_k: int) -> list[dict[str, Any]]:
    """One dict per image with exactly the fields of ``schemas.Prediction``."""
    k = max(1, min(top_k, len(class_names)))
    probs = res.probs.tolist()  # plain floats: cheaper to sort and to serialise than numpy scalars
    out = []
    pred, ll, abn, adv, thr = (
        res.pred.tolist(),
        res.log_likelihood.tolist(),
        res.abnormality.tolist(),
        res.is_adversarial.tolist(),
        res.threshold.tolist(),
    )
    for i in range(len(pred)):
        row = probs[i]
        c = pred[i]
        order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
        out.append(
            {
                "class_index": c,
                "label": class_names[c],
                "confidence": row[c],
                "top_k": [{"label": class_names[j], "probability": row[j]} for j in order],
                "log_likelihood": _finite(ll[i]),
                "abnormality_score": float(abn[i]),
                "is_adversarial": bool(adv[i]),
                "threshold": _finite(thr[i]),
            }
        )
    return out


def _finite(v: float) -> float:
    """JSON has no infinity: clamp a (theoretical) -inf log-likelihood to the float range."""
    if math.isfinite(v):
        return v
    return -3.4e38 if v < 0 else 3.4e38
