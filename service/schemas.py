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
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, create_model

from service.oip_schemas import infer_request_model
from service.schema_types import OIP_OUTPUTS as OIP_OUTPUTS  # re-exported: the routes import it from here
from service.schema_types import OutputName, Shape, pixel_array

# A 1x1 black PNG; the server resizes it to the model's input shape.
TINY_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
IMAGE_FORMAT = "image"  # OpenAPI format of an encoded image file (base64 in JSON, raw bytes in multipart)
# Union members are told apart by these tags (they appear in validation error locations, which drop them).
TAGS = frozenset({"b64 instance", "array instance", "[C,H,W]", "[H,W]", "flat", "nested", "FP32", "UINT8"})


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
        description="log N(f(x); mu_k, Sigma_k) of the feature under the predicted class's Gaussian (nats): "
        "one of the statistics the detector combines; null: not revealed (query_reveal=label)"
    )
    abnormality_score: float | None = Field(
        ge=0,
        le=1,
        description="share of clean calibration inputs of the predicted class whose combined detector score "
        "is lower (0.99: more abnormal than 99% of them); null: not revealed",
    )
    is_adversarial: bool = Field(
        description="the combined detector score is above the predicted class's threshold, which was set at "
        "the target false-positive rate on clean calibration inputs"
    )
    threshold: float | None = Field(
        description="the log-likelihood (nats) below which this input is flagged on its likelihood alone; "
        "above it, it is still flagged when another statistic is extreme enough; null: not revealed"
    )


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
    device: str = Field(
        description="where the torch detector runs (FGSM; and scoring under the torch engine)"
    )
    engine: Literal["torch", "onnxruntime"] = Field(
        description="what scores the answers: torch (eager PyTorch) or onnxruntime (the exported detector)"
    )
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
    400: "a body that cannot be parsed (malformed multipart; binary tensor lengths that disagree with the body)",
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
    infer: type[BaseModel]  # POST /v2/models/{name}/infer, a JSON body
    infer_binary: type[BaseModel]  # its JSON header under the binary tensor data extension

    @classmethod
    def build(cls, shape: Shape, max_images: int) -> APIModels:
        c, h, w = shape
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
        infer = infer_request_model(shape, max_images, binary=False)
        infer_binary = infer_request_model(shape, max_images, binary=True)
        return cls(shape, max_images, predict, predict_form, perturb, infer, infer_binary)
