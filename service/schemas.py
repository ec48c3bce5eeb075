"""The HTTP API's bodies as pydantic models: one source for the OpenAPI document at /docs, for request
validation (FastAPI validates a body against its model before a handler runs) and for the tests, which check
real responses against the response models.

A request's exact shape depends on the served model (input shape) and on ``max_images``, so ``APIModels.build``
makes the request models once per app: an ``array`` instance must be [C][H][W] (or [H][W] for one-channel
models) numbers in [0, 1], an OIP tensor [N, C, H, W] with N*C*H*W values. What a schema cannot say (that a
base64 string or an uploaded file is an image Pillow can read) carries the OpenAPI format ``image`` and is checked
when decoded (``service/images.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, create_model, model_validator

# A 1x1 black PNG; the server resizes it to the model's input shape.
TINY_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
IMAGE_FORMAT = "image"  # OpenAPI format of an encoded image file (base64 in JSON, raw bytes in multipart)
OIP_OUTPUTS = {
    "class": "INT64",
    "probabilities": "FP32",
    "log_likelihood": "FP32",
    "abnormality_score": "FP32",
    "is_adversarial": "BOOL",
    "threshold": "FP32",
}
OutputName = Literal[
    "class", "probabilities", "log_likelihood", "abnormality_score", "is_adversarial", "threshold"
]
# Union members are told apart by these tags (they appear in validation error locations, which drop them).
TAGS = frozenset({"b64 instance", "array instance", "[C,H,W]", "[H,W]", "flat", "nested"})

Pixel = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Shape = tuple[int, int, int]


# -- responses ---------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the problem")


class Health(BaseModel):
    status: Literal["alive", "ready"]


class Ready(Health):
    detail: str | None = Field(
        None, description="what is degraded while still serving (absent when nothing is)"
    )


class TopK(BaseModel):
    label: str
    probability: float | None = Field(ge=0, le=1, description="null: not revealed (query_reveal)")


class Prediction(BaseModel):
    class_index: int = Field(ge=0, description="predicted class")
    label: str = Field(description="its name")
    confidence: float | None = Field(
        ge=0,
        le=1,
        description="posterior probability of the predicted class (L-GM softmax); null: not revealed",
    )
    top_k: list[TopK] = Field(description="the most probable classes, best first")
    log_likelihood: float | None = Field(
        description="log N(f(x); mu_k, Lambda_k) of the feature under the predicted class"
    )
    abnormality_score: float | None = Field(
        ge=0, le=1, description="share of clean inputs of that class with a higher likelihood"
    )
    is_adversarial: bool = Field(description="log_likelihood < threshold")
    threshold: float | None = Field(description="the log-likelihood threshold applied (nats)")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]
    client_flagged: bool = Field(
        False, description="this client's queries look like a query attack (near-duplicates of each other)"
    )


class PerturbResponse(BaseModel):
    model: str
    model_version: str
    attack: Literal["FGSM"]
    epsilon: float = Field(ge=0, le=1)
    original: Prediction
    perturbed: Prediction
    perturbed_png_b64: str = Field(description="the perturbed image (model resolution) as a PNG")
    original_png_b64: str = Field(description="the image the model saw, after conversion, as a PNG")


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="first 12 hex digits of the weights' sha256")
    classes: list[str]
    input_shape: list[int] = Field(description="[C, H, W]")
    input_range: list[float]
    dataset: dict[str, Any]
    architecture: dict[str, Any] | None
    lgm: dict[str, Any] | None
    metrics: dict[str, Any] | None
    detector: dict[str, Any] = Field(description="thresholds and calibration figures")
    device: str
    weights_sha256: str | None


class OIPTensor(BaseModel):
    name: OutputName
    shape: list[int]
    datatype: Literal["INT64", "FP32", "BOOL"]
    data: list[int] | list[float] | list[bool]


class OIPInferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description='{"client_flagged": bool}: this client\'s queries look like a query attack'
    )
    outputs: list[OIPTensor]


class OIPTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OIPModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OIPTensorMetadata]
    outputs: list[OIPTensorMetadata]


class OIPServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OIPLive(BaseModel):
    live: bool


class OIPReady(BaseModel):
    ready: bool


class OIPModelReady(BaseModel):
    name: str
    ready: bool


_ERROR_TEXT: dict[int, str] = {
    400: "a body that cannot be parsed (malformed multipart)",
    401: "missing or wrong X-API-Key",
    404: "no such model (or route, or the perturbation endpoint is disabled)",
    413: "body larger than max_request_bytes",
    415: "a body neither application/json nor multipart/form-data",
    422: "input the model cannot take; the message names the problem",
    429: "this client is refused for a while (query_policy=block); see Retry-After",
    503: "model not loaded yet",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, each an ``ErrorBody``."""
    return {code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in codes}


# -- requests ----------------------------------------------------------------------------------------------------
def _exactly(item: Any, n: int) -> Any:
    return Annotated[list[item], Field(min_length=n, max_length=n)]


def _depth(value: Any) -> int:
    d = 0
    while isinstance(value, list) and value:
        value, d = value[0], d + 1
    return d


def _array_kind(value: Any) -> str:
    return "[H,W]" if _depth(value) == 2 else "[C,H,W]"


def _instance_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = {"b64", "array"} & value.keys()
        if len(keys) == 1:
            return "b64 instance" if "b64" in keys else "array instance"
    elif isinstance(value, BaseModel):
        return "b64 instance" if hasattr(value, "b64") else "array instance"
    return None


def _data_kind(value: Any) -> str:
    return "nested" if isinstance(value, list) and value and isinstance(value[0], list) else "flat"


def pixel_array(shape: Shape) -> Any:
    """[C][H][W] numbers in [0, 1]; for a one-channel model also [H][W]."""
    c, h, w = shape
    plane = _exactly(_exactly(Pixel, w), h)
    volume = _exactly(plane, c)
    if c != 1:
        return volume
    return Annotated[
        Annotated[volume, Tag("[C,H,W]")] | Annotated[plane, Tag("[H,W]")],
        Discriminator(_array_kind),
    ]


class B64Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(
        min_length=1,
        description="an image file (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM) in base64, or a data: URL",
        json_schema_extra={"format": IMAGE_FORMAT},
    )


@dataclass(frozen=True)
class APIModels:
    """The request models of one app, for a model of input ``shape`` and at most ``max_images`` per request."""

    shape: Shape
    max_images: int
    predict: type[BaseModel]  # JSON body of POST /v1/predict
    predict_form: type[BaseModel]  # multipart body of POST /v1/predict
    perturb: type[BaseModel]  # POST /v1/perturb
    infer: type[BaseModel]  # POST /v2/models/{name}/infer

    @classmethod
    def build(cls, shape: Shape, max_images: int) -> APIModels:
        c, h, w = shape
        size = c * h * w
        array = pixel_array(shape)
        array_doc = f"[{c}, {h}, {w}]" + (f" or [{h}, {w}]" if c == 1 else "") + " numbers in [0, 1]"
        array_instance = create_model(
            "ArrayInstance",
            __config__=ConfigDict(extra="forbid"),
            array=(array, Field(description=f"pixels, never resized: {array_doc}")),
        )
        instance = Annotated[
            Annotated[B64Instance, Tag("b64 instance")] | Annotated[array_instance, Tag("array instance")],
            Discriminator(
                _instance_kind,
                custom_error_type="instance_kind",
                custom_error_message='must be an object with exactly one of "b64" or "array"',
            ),
        ]
        images = Field(
            min_length=1, max_length=max_images, description=f"1 to {max_images} images (max_images)"
        )
        predict = create_model(
            "PredictRequest",
            __config__=ConfigDict(
                extra="forbid", json_schema_extra={"examples": [{"instances": [{"b64": TINY_PNG_B64}]}]}
            ),
            instances=(list[instance], images),
        )
        predict_form = create_model(
            "PredictForm",
            __config__=ConfigDict(extra="forbid"),
            files=(
                list[Annotated[UploadFile, Field(json_schema_extra={"format": IMAGE_FORMAT})]],
                Field(
                    min_length=1,
                    max_length=max_images,
                    description="image files (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM), one part each",
                ),
            ),
        )
        perturb = create_model(
            "PerturbRequest",
            __config__=ConfigDict(
                extra="forbid",
                json_schema_extra={"examples": [{"instance": {"b64": TINY_PNG_B64}, "epsilon": 0.2}]},
            ),
            instance=(instance, Field(description="one instance, as in /v1/predict")),
            epsilon=(
                Annotated[float, Strict()],
                Field(0.2, ge=0.0, le=1.0, allow_inf_nan=False, description="L-inf step size"),
            ),
        )
        infer_input = _oip_input_model(shape, max_images)
        infer = create_model(
            "InferRequest",
            __config__=ConfigDict(
                extra="forbid",
                json_schema_extra={
                    "examples": [
                        {
                            "id": "42",
                            "inputs": [
                                {
                                    "name": "input",
                                    "shape": [1, c, h, w],
                                    "datatype": "FP32",
                                    "data": [0.0] * size,
                                }
                            ],
                        }
                    ]
                },
            ),
            id=(str | None, Field(None, description="echoed in the response")),
            parameters=(dict[str, Any] | None, Field(None, description="accepted and ignored")),
            inputs=(list[infer_input], Field(min_length=1, max_length=1, description="exactly one tensor")),
            outputs=(
                list[OIPRequestOutput] | None,
                Field(None, description="outputs to return, in this order (default: all)"),
            ),
        )
        return cls(shape, max_images, predict, predict_form, perturb, infer)


class OIPRequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: OutputName
    parameters: dict[str, Any] | None = None


def _oip_input_model(shape: Shape, max_images: int) -> type[BaseModel]:
    """The one OIP input tensor: FP32 [N, C, H, W] in [0, 1], ``data`` flat (N*C*H*W values) or nested."""
    c, h, w = shape
    size = c * h * w
    count = Annotated[int, Strict(), Field(ge=1, le=max_images)]
    data = Annotated[
        Annotated[list[Pixel], Tag("flat")] | Annotated[list[pixel_array((c, h, w))], Tag("nested")],
        Discriminator(_data_kind),
    ]

    def check_count(t: Any) -> Any:
        n = t.shape[0]
        values = len(t.data) * (size if _data_kind(t.data) == "nested" else 1)
        if values != n * size:
            raise ValueError(f"inputs[0].data holds {values} values; shape {list(t.shape)} needs {n * size}")
        return t

    def one_branch_per_batch_size(schema: dict[str, Any]) -> None:
        # JSON Schema cannot multiply, so the document lists the data length that goes with each N.
        schema["anyOf"] = [
            {
                "properties": {
                    "shape": {"prefixItems": [{"const": n}]},
                    "data": {
                        "anyOf": [
                            {"minItems": n * size, "maxItems": n * size, "items": {"type": "number"}},
                            {"minItems": n, "maxItems": n, "items": {"type": "array"}},
                        ]
                    },
                }
            }
            for n in range(1, max_images + 1)
        ]

    return create_model(
        "InferInputTensor",
        __config__=ConfigDict(extra="forbid", json_schema_extra=one_branch_per_batch_size),
        __validators__={"count": model_validator(mode="after")(check_count)},
        name=(str, Field(description="any name (the model has one input)")),
        shape=(tuple[count, Literal[c], Literal[h], Literal[w]], Field(description="[N, C, H, W]")),
        datatype=(Literal["FP32"], ...),
        parameters=(dict[str, Any] | None, Field(None, description="accepted and ignored")),
        data=(
            data,
            Field(description="N*C*H*W numbers in [0, 1], row-major, flat or nested as [N][C][H][W]"),
        ),
    )
