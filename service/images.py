"""Turn request payloads (encoded images, nested arrays) into float32 arrays of the model's input shape.

The conversion rule for encoded images (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM; the first frame of an animation):

1. The header is read first; an image whose width x height exceeds ``max_image_pixels`` is refused (422)
   before any pixel is decoded (decompression-bomb guard, on top of Pillow's own ``MAX_IMAGE_PIXELS``).
2. Transparency is composited onto black (a drawn digit on a transparent canvas becomes MNIST-like).
3. Colour: a model with C = 1 gets the ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``); a model with
   C = 3 gets RGB (a grey image is repeated on the three channels). 16-bit images are scaled by 1/65535, float
   images clipped to [0, 1].
4. Size: resized to the model's H x W with Pillow's bilinear filter (antialiased when shrinking); the aspect
   ratio is not kept. Crop or pad yourself first if that matters.
5. Pixels are divided by 255, giving values in [0, 1]. No inversion: send what the model was trained on (the
   MNIST models expect a light digit on a dark background).

Arrays (JSON ``array`` instances, OIP tensors) are never resized: their models (``service/schemas.py``) ask for
the model's shape and numbers in [0, 1].
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import APIError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
Shape = tuple[int, int, int]


def _bad(what: str, problem: str) -> APIError:
    return APIError(422, f"{what}: {problem}")


def _grey_float(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float images -> an 'F' image with values in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    else:
        arr = arr / (65535.0 if img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255 else 255.0)
    return Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32), mode="F")


def decode_image(data: bytes, shape: Shape, max_pixels: int, what: str = "image") -> np.ndarray:
    """Encoded image bytes -> float32 (C, H, W) in [0, 1], following the module's conversion rule."""
    c, h, w = shape
    if c not in (1, 3):
        raise _bad(what, f"this model takes {c}-channel input; send arrays, not encoded images")
    if not data:
        raise _bad(what, "empty file")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _bad(what, f"not an image Pillow can read (accepted: {', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bad(what, "image too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _bad(what, f"unreadable image header ({exc})") from None
    iw, ih = img.size
    if iw * ih > max_pixels:
        raise _bad(what, f"{iw}x{ih} = {iw * ih} pixels exceeds the cap of {max_pixels} (max_image_pixels)")
    if iw < 1 or ih < 1:
        raise _bad(what, "image has no pixels")
    try:
        img.load()
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            img = _grey_float(img)
        elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            bg.alpha_composite(rgba)
            img = bg.convert("RGB")
        want = "L" if c == 1 else "RGB"
        if img.mode not in ("F", want):
            img = img.convert(want)
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bad(what, "image too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise _bad(
            what,
            f"truncated or corrupt image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
        ) from None
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)  # (H, W), already in [0, 1]
        arr = arr[None] if c == 1 else np.repeat(arr[None], 3, axis=0)
        return np.ascontiguousarray(arr)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    return np.ascontiguousarray(arr, dtype=np.float32) * np.float32(1.0 / 255.0)


def encode_png(chw: np.ndarray) -> bytes:
    """uint8 (C, H, W) with C = 1 (grey) or 3 (RGB) -> PNG file bytes."""
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_b64(text: str, what: str = "image") -> bytes:
    """Base64 (optionally a ``data:...;base64,`` URL) -> bytes."""
    if text.startswith("data:"):
        comma = text.find(",")
        if comma < 0:
            raise _bad(what, "data URL without a comma")
        text = text[comma + 1 :]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(what, "b64 is not valid base64") from None
    if not data:
        raise _bad(what, "b64 decodes to zero bytes")
    return data
