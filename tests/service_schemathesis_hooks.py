"""Schemathesis hooks for the service's OpenAPI document (loaded through ``schemathesis.toml``).

The document marks encoded images with the format ``image`` (``service/schemas.py``): a base64 string in JSON, a
file part in multipart. No JSON Schema can say "a file Pillow can decode", so schemathesis learns here how to
draw one: small PNG, JPEG, GIF or BMP images of random size, mode and pixels. Everything else it draws from the
schema alone.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    mode = draw(st.sampled_from(["L", "RGB"] if fmt == "JPEG" else ["L", "RGB", "RGBA", "P"]))
    if fmt == "BMP" and mode == "RGBA":
        mode = "RGB"
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _b64(data: bytes, data_url: bool) -> str:
    text = base64.b64encode(data).decode()
    return f"data:image/png;base64,{text}" if data_url else text


# JSON: a base64 image file, sometimes as a data: URL.
schemathesis.openapi.format("image", st.builds(_b64, image_files(), st.booleans()))
# multipart: each part of `files` (format binary there) is an image file.
schemathesis.openapi.format("binary", image_files())
