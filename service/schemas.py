"""Response shapes and request examples, for the OpenAPI page at /docs.

The handlers build their JSON directly (the fast path skips response validation); these models document it and
the tests check real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# A 1x1 black PNG; the server resizes it to the model's input shape.
TINY_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="


class TopK(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    class_index: int = Field(description="predicted class")
    label: str = Field(description="its name")
    confidence: float = Field(description="posterior probability of the predicted class (L-GM softmax)")
    top_k: list[TopK] = Field(description="the most probable classes, best first")
    log_likelihood: float = Field(
        description="log N(f(x); mu_k, Lambda_k) of the feature under the predicted class"
    )
    abnormality_score: float = Field(
        ge=0, le=1, description="share of clean inputs of that class with a higher likelihood"
    )
    is_adversarial: bool = Field(description="log_likelihood < threshold")
    threshold: float = Field(description="the log-likelihood threshold applied (nats)")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]


class PerturbResponse(BaseModel):
    model: str
    model_version: str
    attack: Literal["FGSM"]
    epsilon: float
    original: Prediction
    perturbed: Prediction
    perturbed_png_b64: str = Field(description="the perturbed image (model resolution) as a PNG")
    original_png_b64: str = Field(description="the image the model saw, after conversion, as a PNG")


class ErrorBody(BaseModel):
    error: str


class Health(BaseModel):
    status: str


class OIPTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class OIPInferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[OIPTensor]


class OIPModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "missing or wrong X-API-Key (only when API keys are configured)",
    },
    413: {"model": ErrorBody, "description": "body larger than max_request_bytes"},
    415: {"model": ErrorBody, "description": "neither multipart/form-data nor application/json"},
    422: {"model": ErrorBody, "description": "input the model cannot take; the message names the problem"},
    503: {"model": ErrorBody, "description": "model not loaded yet"},
}

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                },
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "b64": {
                                        "type": "string",
                                        "description": "base64 image file (or data: URL)",
                                    },
                                    "array": {
                                        "type": "array",
                                        "description": "[C,H,W] or [H,W], values in [0,1]",
                                    },
                                },
                            },
                        },
                        "top_k": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "classes in top_k (default 3)",
                        },
                    },
                },
                "examples": {
                    "b64": {"summary": "a base64 PNG", "value": {"instances": [{"b64": TINY_PNG_B64}]}},
                    "array": {
                        "summary": "an 8x8 array (for an 8x8 one-channel model)",
                        "value": {"instances": [{"array": [[0.0] * 8] * 8}]},
                    },
                },
            },
        },
    }
}


def json_body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a required JSON body, for a route's ``openapi_extra``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


PERTURB_BODY: dict[str, Any] = json_body(
    {
        "type": "object",
        "properties": {
            "instance": {"type": "object", "description": "one instance, as in /v1/predict"},
            "epsilon": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
        },
    },
    {"instance": {"b64": TINY_PNG_B64}, "epsilon": 0.2},
)

INFER_BODY: dict[str, Any] = json_body(
    {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": ["FP32"]},
                        "data": {"type": "array"},
                    },
                },
            },
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
    },
    {
        "id": "42",
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
    },
)
