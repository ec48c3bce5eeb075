"""The Open Inference Protocol v2 request path that HTTP (``service/api_v2.py``) and gRPC (``service/grpc_server.py``)
share: which model a request names, turning its input tensor into the model's (N, C, H, W) float32 batch, running
it, and turning the scores into output tensors.

Tensors are described once here: the input is FP32 (pixels in [0, 1]) or UINT8 (0..255, scaled by 1/255 exactly
as decoded images are, ``service/images.py``); the outputs and their datatypes are ``schemas.OIP_OUTPUTS``.
Raw tensor bytes (the HTTP binary extension, gRPC's ``raw_input_contents``) are little-endian, row-major, as the
protocol says; BOOL is one byte per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.batcher import MicroBatcher
from service.engine import BatchResult, Engine
from service.errors import APIError
from service.oip_schemas import DATATYPE_ERROR, INPUT_DATATYPES
from service.schemas import OIP_OUTPUTS
from service.state import ServiceState

SERVER_NAME = "lgm-detect"
EXTENSIONS = ["binary_tensor_data"]  # advertised in GET /v2 and gRPC ServerMetadata
OUTPUT_DTYPES = {"INT64": "<i8", "FP32": "<f4", "BOOL": "u1"}
_BYTE_SCALE = np.float32(1.0 / 255.0)
# the model metadata's platform by engine (``--engine``): Triton's names, as lgm export's config.pbtxt declares
PLATFORMS = {"torch": "pytorch", "onnxruntime": "onnxruntime_onnx"}


def check_model(st: ServiceState, name: str, version: str | None = None) -> None:
    """404 unless ``name`` (and ``version``, if given) is the model this server serves."""
    if name != st.settings.model_name:
        raise APIError(404, f"unknown model {name!r}; this server serves {st.settings.model_name!r}")
    if version and version != st.model_version:
        raise APIError(
            404, f"unknown version {version!r} of {name!r}; the loaded version is {st.model_version!r}"
        )


def server_version() -> str:
    """The installed package's version (GET /v2 and gRPC ServerMetadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lgm-detect")
    except PackageNotFoundError:
        return "unknown"


def ready(st: ServiceState) -> tuple[Engine, MicroBatcher[BatchResult]]:
    """The engine and batcher, or 503 before the model is loaded."""
    if not st.ready or st.engine is None or st.batcher is None:
        raise APIError(503, "model not loaded yet; retry when /readyz says ready")
    return st.engine, st.batcher


async def score(st: ServiceState, x: torch.Tensor) -> BatchResult:
    """Score an (N, C, H, W) batch through the micro-batcher: the one entry point of every OIP request."""
    _, batcher = ready(st)
    res = await batcher.submit(x)
    st.metrics.count_scored(res.is_adversarial)
    return res


def model_metadata(st: ServiceState, name: str) -> dict[str, Any]:
    """The body of GET /v2/models/{name} (and gRPC ModelMetadata)."""
    engine, _ = ready(st)
    c, h, w = engine.input_shape
    out_shapes = {"probabilities": [-1, len(engine.class_names)]}
    return {
        "name": name,
        "versions": [st.model_version],
        "platform": PLATFORMS.get(engine.name, engine.name),
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [
            {"name": nm, "datatype": dt, "shape": out_shapes.get(nm, [-1])} for nm, dt in OIP_OUTPUTS.items()
        ],
    }


# -- inputs ------------------------------------------------------------------------------------------------------
def check_input(st: ServiceState, datatype: str, shape: list[int], where: str = "inputs[0]") -> None:
    """What the pydantic model checks for JSON, for requests that skip it (gRPC): datatype and shape."""
    if datatype not in INPUT_DATATYPES:
        raise APIError(422, f"{where}.datatype is {datatype!r}; {DATATYPE_ERROR}")
    c, h, w = st.models.shape
    if len(shape) != 4 or list(shape[1:]) != [c, h, w]:
        raise APIError(422, f"{where}.shape is {list(shape)}; expected [N, {c}, {h}, {w}]")
    if shape[0] < 1:
        raise APIError(422, "empty batch: send at least one image")
    if shape[0] > st.settings.max_images:
        raise APIError(
            422,
            f"too many images: {shape[0]} in one request, the cap is {st.settings.max_images} (max_images)",
        )


def from_raw(raw: bytes, datatype: str, shape: list[int], where: str = "inputs[0]") -> torch.Tensor:
    """Little-endian tensor bytes -> (N, C, H, W) float32 in [0, 1]; 422 on a wrong size, NaN or range."""
    dtype = np.dtype(INPUT_DATATYPES[datatype])
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise APIError(
            422, f"{where}: {len(raw)} bytes of data; shape {list(shape)} in {datatype} needs {need}"
        )
    return from_array(np.frombuffer(raw, dtype=dtype), datatype, shape, where)


def from_array(arr: np.ndarray, datatype: str, shape: list[int], where: str = "inputs[0]") -> torch.Tensor:
    """Flat values not checked yet (raw bytes, gRPC contents) -> (N, C, H, W) float32 in [0, 1]; 422 on a wrong
    count, NaN or a value out of the datatype's range."""
    if arr.size != math.prod(shape):
        raise APIError(422, f"{where}: {arr.size} values; shape {list(shape)} needs {math.prod(shape)}")
    if datatype == "UINT8":
        if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise APIError(422, f"{where}: UINT8 values must lie in 0..255")
        return torch.from_numpy(arr.astype(np.float32).reshape(shape) * _BYTE_SCALE)
    x = arr.astype(np.float32).reshape(shape)  # a writable, native-endian copy
    if not np.isfinite(x).all():
        raise APIError(422, f"{where}: values must be finite (found NaN or infinity)")
    if x.min() < 0.0 or x.max() > 1.0:
        raise APIError(
            422, f"{where}: FP32 values must lie in [0, 1] (found {float(x.min())}..{float(x.max())})"
        )
    return torch.from_numpy(x)


def from_values(values: Any, datatype: str, shape: list[int]) -> torch.Tensor:
    """Already-checked values -> (N, C, H, W) float32 in [0, 1]. ``values``: flat, or nested per image (each
    [C][H][W], or [H][W] for one channel, the two forms may mix), or a numpy array."""
    dt = np.uint8 if datatype == "UINT8" else np.float32
    if isinstance(values, list) and values and isinstance(values[0], list):
        arr = np.stack([np.asarray(v, dtype=dt).reshape(shape[1:]) for v in values])
    else:
        arr = np.asarray(values, dtype=dt).reshape(shape)
    if datatype == "UINT8":
        arr = arr.astype(np.float32) * _BYTE_SCALE
    return torch.from_numpy(arr)


# -- outputs -----------------------------------------------------------------------------------------------------
@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray  # flat

    def raw(self) -> bytes:
        return self.array.astype(OUTPUT_DTYPES[self.datatype], copy=False).tobytes()


def outputs(res: BatchResult, names: list[str]) -> list[OutputTensor]:
    """The named outputs of a scored batch, in the order asked (JSON has no infinity: a -inf log-likelihood is
    clamped to the float range)."""
    n, ll = len(res), res.log_likelihood
    arrays = {
        "class": res.pred,
        "probabilities": res.probs,
        "log_likelihood": ll if np.isfinite(ll).all() else np.nan_to_num(ll, neginf=-3.4e38, posinf=3.4e38),
        "abnormality_score": res.abnormality,
        "is_adversarial": res.is_adversarial,
        "threshold": res.threshold,
    }
    return [
        OutputTensor(
            nm,
            OIP_OUTPUTS[nm],
            list(arrays[nm].shape) if nm == "probabilities" else [n],
            arrays[nm].reshape(-1),
        )
        for nm in names
    ]
