"""Request models of the Open Inference Protocol v2 inference route, as the stock clients send them.

The protocol (kserve/open-inference-protocol, ``required_api.md``) lets a request carry ``id``, ``parameters``,
per-input ``parameters`` and ``outputs``; KServe's client adds ``model_name`` too. The model takes one tensor
[N, C, H, W] in one of two datatypes:

- ``FP32``: pixels in [0, 1];
- ``UINT8``: pixels in 0..255 (divided by 255 on arrival): a quarter of FP32's bytes and no float parsing.

Two variants of the request model are built per app:

- ``json``: a plain JSON body, every input carries ``data`` (this is the one the OpenAPI document shows, and
  what schemathesis draws from);
- ``binary``: the JSON header of a request that uses the binary tensor data extension (Triton's
  ``binary_tensor_data``; the header's length is the ``Inference-Header-Content-Length`` HTTP header), where an
  input may instead name ``parameters.binary_data_size`` and its bytes follow the header
  (``service/oip_binary.py`` checks them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    Tag,
    create_model,
    model_validator,
)

from service.schema_types import OutputName, Pixel, Shape, pixel_array

# datatype -> (numpy dtype of its little-endian bytes, item type in JSON, what the values must be)
INPUT_DATATYPES = {"FP32": "<f4", "UINT8": "u1"}


def _integral(v: Any) -> Any:
    """JSON Schema's integers include 3.0: take an integral float as an int (never a bool or a string)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


BytePixel = Annotated[int, Strict(), Field(ge=0, le=255), BeforeValidator(_integral)]
ITEMS: dict[str, Any] = {"FP32": Pixel, "UINT8": BytePixel}
ITEM_SCHEMAS = {
    "FP32": {"type": "number", "minimum": 0.0, "maximum": 1.0},
    "UINT8": {"type": "integer", "minimum": 0, "maximum": 255},
}
RANGES = {"FP32": "numbers in [0, 1]", "UINT8": "integers in 0..255"}
DATATYPE_ERROR = "this model takes FP32 (pixels in [0, 1]) or UINT8 (pixels in 0..255)"


def _data_kind(value: Any) -> str:
    return "nested" if isinstance(value, list) and value and isinstance(value[0], list) else "flat"


def _datatype_kind(value: Any) -> str | None:
    dt = value.get("datatype") if isinstance(value, dict) else getattr(value, "datatype", None)
    return dt if isinstance(dt, str) and dt in INPUT_DATATYPES else None


def binary_data_size(parameters: BaseModel | None) -> int | None:
    """``parameters.binary_data_size`` of an input (None when absent)."""
    return getattr(parameters, "binary_data_size", None)


class RequestParameters(BaseModel):
    """A request's ``parameters``: ``binary_data_output`` is read, any other is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    binary_data_output: StrictBool | None = Field(
        None, description="true: every output as raw bytes after the JSON (binary tensor data extension)"
    )


class OutputParameters(BaseModel):
    """An output's ``parameters``: ``binary_data`` is read, any other is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    binary_data: StrictBool | None = Field(
        None, description="true: this output as raw bytes (binary extension); overrides binary_data_output"
    )


class RequestedOutput(BaseModel):
    """One entry of ``outputs``: a name, and optionally ``parameters.binary_data`` (binary extension)."""

    model_config = ConfigDict(extra="forbid")
    name: OutputName
    parameters: OutputParameters | None = None


def _input_parameters(binary: bool) -> type[BaseModel]:
    """An input's ``parameters``: ``binary_data_size`` only under the binary extension, others ignored."""
    size = Annotated[int, Strict(), Field(ge=0)] | None if binary else None
    return create_model(
        "InputParametersBinary" if binary else "InputParameters",
        __config__=ConfigDict(extra="allow"),
        binary_data_size=(
            size,
            Field(
                None,
                description="bytes of this input after the JSON header"
                if binary
                else "only under the binary extension (the Inference-Header-Content-Length header)",
            ),
        ),
    )


def _tensor_model(shape: Shape, max_images: int, datatype: str, binary: bool) -> type[BaseModel]:
    """One input tensor of ``datatype``: [N, C, H, W], ``data`` flat (N*C*H*W values) or nested [N][C][H][W];
    in ``binary`` mode ``data`` may be left out for ``parameters.binary_data_size``."""
    c, h, w = shape
    size = c * h * w
    item = ITEMS[datatype]
    count = Annotated[int, Strict(), Field(ge=1, le=max_images)]
    data = Annotated[
        Annotated[list[item], Tag("flat")] | Annotated[list[pixel_array(shape, item)], Tag("nested")],
        Discriminator(_data_kind),
    ]

    def check_count(t: Any) -> Any:
        n = t.shape[0]
        if t.data is None:
            if binary_data_size(t.parameters) is None:
                raise ValueError("inputs[0] has neither 'data' nor parameters.binary_data_size")
            return t
        if binary_data_size(t.parameters) is not None:
            raise ValueError("inputs[0] has both 'data' and parameters.binary_data_size; send one")
        values = len(t.data) * (size if _data_kind(t.data) == "nested" else 1)
        if values != n * size:
            raise ValueError(f"inputs[0].data holds {values} values; shape {list(t.shape)} needs {n * size}")
        return t

    def one_branch_per_batch_size(schema: dict[str, Any]) -> None:
        # JSON Schema cannot multiply, so the document lists the data length that goes with each N.
        number = ITEM_SCHEMAS[datatype]
        schema["anyOf"] = [
            {
                "properties": {
                    "shape": {"prefixItems": [{"const": n}]},
                    "data": {
                        "anyOf": [
                            {"minItems": n * size, "maxItems": n * size, "items": number},
                            {"minItems": n, "maxItems": n, "items": {"type": "array"}},
                        ]
                    },
                }
            }
            for n in range(1, max_images + 1)
        ]

    data_field = Field(
        None if binary else ...,
        description=f"N*C*H*W {RANGES[datatype]}, row-major, flat or nested as [N][C][H][W]"
        + ("; or leave out and send the bytes after the JSON header" if binary else ""),
    )
    return create_model(
        f"InferInput{datatype}" + ("Header" if binary else ""),
        __config__=ConfigDict(
            extra="forbid", json_schema_extra=None if binary else one_branch_per_batch_size
        ),
        __validators__={"count": model_validator(mode="after")(check_count)},
        name=(str, Field(description="any name (the model has one input)")),
        shape=(tuple[count, Literal[c], Literal[h], Literal[w]], Field(description="[N, C, H, W]")),
        datatype=(Literal[datatype], Field(description=RANGES[datatype])),  # type: ignore[valid-type]
        parameters=(_input_parameters(binary) | None, Field(None, description="others are ignored")),
        data=((data | None) if binary else data, data_field),
    )


def infer_request_model(shape: Shape, max_images: int, binary: bool) -> type[BaseModel]:
    """The body of POST /v2/models/{name}/infer (``binary``: the JSON header of a binary-extension request)."""
    c, h, w = shape
    tensor = Annotated[
        Annotated[_tensor_model(shape, max_images, "FP32", binary), Tag("FP32")]
        | Annotated[_tensor_model(shape, max_images, "UINT8", binary), Tag("UINT8")],
        Discriminator(_datatype_kind, custom_error_type="datatype", custom_error_message=DATATYPE_ERROR),
    ]
    example = {
        "id": "42",
        "inputs": [{"name": "input", "shape": [1, c, h, w], "datatype": "FP32", "data": [0.0] * (c * h * w)}],
    }
    return create_model(
        "InferRequestHeader" if binary else "InferRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
        id=(str | None, Field(None, description="echoed in the response")),
        model_name=(str | None, Field(None, description="accepted and ignored: the path names the model")),
        model_version=(
            str | None,
            Field(None, description="if given and not empty, the loaded version (else 404)"),
        ),
        parameters=(RequestParameters | None, Field(None)),
        inputs=(list[tensor], Field(min_length=1, max_length=1, description="exactly one tensor")),
        outputs=(
            list[RequestedOutput] | None,
            Field(None, description="outputs to return, in this order (default: all)"),
        ),
    )
