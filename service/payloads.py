"""Request bodies -> (N, C, H, W) float32 tensors, and scores -> response JSON, for /v1 and the OIP /v2 routes.

Parsing refuses, with a 4xx ``APIError`` naming the problem: malformed JSON, a wrong JSON shape, an empty batch,
too many images, a wrong dtype, NaN or infinity, values outside [0, 1], and images Pillow cannot (or must not)
decode. See ``service/images.py`` for how encoded images are converted to the model's input shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from service.engine import BatchResult
from service.errors import APIError
from service.images import Shape, as_array, check_values, decode_b64, decode_image, parse_array

OIP_OUTPUTS = {
    "class": "INT64",
    "probabilities": "FP32",
    "log_likelihood": "FP32",
    "abnormality_score": "FP32",
    "is_adversarial": "BOOL",
    "threshold": "FP32",
}


def load_json(body: bytes) -> Any:
    if not body:
        raise APIError(422, "empty request body; send JSON")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise APIError(422, "request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise APIError(422, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise APIError(422, "malformed JSON: nested too deeply") from None


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise APIError(422, "empty batch: send at least one image")
    if n > max_images:
        raise APIError(422, f"too many images: {n} in one request, the cap is {max_images} (max_images)")


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """(C, H, W) arrays -> one (N, C, H, W) float32 tensor (a copy unless the one array is writable: torch
    tensors over read-only memory, e.g. an array viewing a decoded image's bytes, are undefined behaviour)."""
    if len(arrays) > 1:
        return torch.from_numpy(np.stack(arrays))
    one = arrays[0][None]
    return torch.from_numpy(one if one.flags.writeable else one.copy())


# -- /v1 ---------------------------------------------------------------------------------------------------------
def instances_from_json(obj: Any, max_images: int) -> list[Any]:
    if not isinstance(obj, dict) or "instances" not in obj:
        raise APIError(422, 'JSON body must be an object {"instances": [...]}')
    inst = obj["instances"]
    if not isinstance(inst, list):
        raise APIError(422, f'"instances" must be a list, got {type(inst).__name__}')
    check_count(len(inst), max_images)
    for i, it in enumerate(inst):
        if not isinstance(it, dict) or ("b64" in it) == ("array" in it):
            raise APIError(422, f'instances[{i}] must be an object with exactly one of "b64" or "array"')
    return inst


def decode_instance(it: dict[str, Any], i: int, shape: Shape, max_pixels: int) -> np.ndarray:
    what = f"instances[{i}]"
    if "b64" in it:
        return decode_image(decode_b64(it["b64"], what), shape, max_pixels, what)
    return parse_array(it["array"], shape, what)


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


# -- /v2 (Open Inference Protocol) ----------------------------------------------------------------------------------
def oip_input(obj: Any, shape: Shape, max_images: int) -> tuple[torch.Tensor, list[str], str | None]:
    """An OIP inference request -> (x (N, C, H, W), requested output names, request id)."""
    if not isinstance(obj, dict):
        raise APIError(422, "inference request must be a JSON object")
    req_id = obj.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise APIError(422, '"id" must be a string')
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise APIError(422, '"inputs" must be a list holding exactly one tensor')
    t = inputs[0]
    if not isinstance(t, dict):
        raise APIError(422, "inputs[0] must be an object with name, shape, datatype and data")
    for key in ("name", "shape", "datatype", "data"):
        if key not in t:
            raise APIError(422, f"inputs[0] lacks {key!r}")
    if t["datatype"] != "FP32":
        raise APIError(422, f"inputs[0].datatype is {t['datatype']!r}; this model takes FP32")
    c, h, w = shape
    shp = t["shape"]
    if (
        not isinstance(shp, list)
        or len(shp) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shp)
        or tuple(shp[1:]) != (c, h, w)
    ):
        raise APIError(422, f"inputs[0].shape is {shp!r}; expected [N, {c}, {h}, {w}]")
    n = shp[0]
    check_count(n if n >= 0 else 0, max_images)
    arr = as_array(t["data"], "inputs[0].data")
    if arr.size != n * c * h * w:
        raise APIError(422, f"inputs[0].data holds {arr.size} values; shape {shp} needs {n * c * h * w}")
    arr = check_values(arr.reshape(n, c, h, w), "inputs[0].data")
    outputs = list(OIP_OUTPUTS)
    req_out = obj.get("outputs")
    if req_out is not None:
        if not isinstance(req_out, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in req_out
        ):
            raise APIError(422, '"outputs" must be a list of objects with a "name"')
        names = [o["name"] for o in req_out]
        unknown = [nm for nm in names if nm not in OIP_OUTPUTS]
        if unknown:
            raise APIError(422, f"unknown output {unknown[0]!r}; outputs are {', '.join(OIP_OUTPUTS)}")
        outputs = names
    return torch.from_numpy(np.ascontiguousarray(arr)), outputs, req_id


def oip_outputs(res: BatchResult, names: list[str]) -> list[dict[str, Any]]:
    n = len(res)
    data = {
        "class": (res.pred, [n]),
        "probabilities": (res.probs, list(res.probs.shape)),
        "log_likelihood": (np.nan_to_num(res.log_likelihood, neginf=-3.4e38, posinf=3.4e38), [n]),
        "abnormality_score": (res.abnormality, [n]),
        "is_adversarial": (res.is_adversarial, [n]),
        "threshold": (res.threshold, [n]),
    }
    out = []
    for nm in names:
        arr, shp = data[nm]
        out.append({"name": nm, "shape": shp, "datatype": OIP_OUTPUTS[nm], "data": arr.reshape(-1).tolist()})
    return out
