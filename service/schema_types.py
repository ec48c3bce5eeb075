"""The field types that both request-model modules build on: ``service/schemas.py`` (the whole HTTP API) and
``service/oip_schemas.py`` (the Open Inference Protocol's inference request, which ``schemas.APIModels.build``
makes). They live here so that imports go one way, ``schemas -> oip_schemas -> schema_types``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Strict, Tag

# The OIP outputs and their datatypes; OutputName names the same keys, for the request and response models.
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

Pixel = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Shape = tuple[int, int, int]


def _exactly(item: Any, n: int) -> Any:
    return Annotated[list[item], Field(min_length=n, max_length=n)]


def _depth(value: Any) -> int:
    d = 0
    while isinstance(value, list) and value:
        value, d = value[0], d + 1
    return d


def _array_kind(value: Any) -> str:
    return "[H,W]" if _depth(value) == 2 else "[C,H,W]"


def pixel_array(shape: Shape, item: Any = Pixel) -> Any:
    """[C][H][W] ``item`` values (numbers in [0, 1] by default); for a one-channel model also [H][W]."""
    c, h, w = shape
    plane = _exactly(_exactly(item, w), h)
    volume = _exactly(plane, c)
    if c != 1:
        return volume
    return Annotated[
        Annotated[volume, Tag("[C,H,W]")] | Annotated[plane, Tag("[H,W]")],
        Discriminator(_array_kind),
    ]
