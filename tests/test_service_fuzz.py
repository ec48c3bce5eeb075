"""Property-based fuzz of the HTTP API (hypothesis) against a real uvicorn server on loopback: whatever arrives,
the answer is never a 5xx, every error is JSON ``{"error": str}``, and a success has one prediction per image."""

from __future__ import annotations

import base64
import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_service_common import ServerThread, detector_fixture, served_artifact_fixture, settings_for  # noqa: F401

from service.app import create_app

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(served_artifact: Path, detector) -> Iterator[ServerThread]:
    s = settings_for(served_artifact, max_request_bytes=256 * 1024, max_images=8, max_image_pixels=512 * 512)
    with ServerThread(create_app(s, detector=detector)) as srv:
        yield srv


def send(
    srv: ServerThread, method: str, path: str, body: bytes | None, ctype: str | None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def check(status: int, raw: bytes) -> dict | list | None:
    assert status < 500, (status, raw[:300])
    if status >= 400:
        body = json.loads(raw)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        return body
    return None


# -- strategies --------------------------------------------------------------------------------------------------
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
pixel = st.floats(min_value=-0.5, max_value=1.5) | st.sampled_from(
    [0.0, 1.0, 0.5, float("nan"), float("inf")]
)


@st.composite
def arrays(draw) -> list:
    h = draw(st.sampled_from([8, 8, 8, 7, 1]))
    w = draw(st.sampled_from([8, 8, 8, 9, 0]))
    grid = [[draw(pixel) for _ in range(w)] for _ in range(h)]
    return draw(st.sampled_from([grid, [grid], [grid, grid]]))


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["png", "jpeg", "gif", "truncated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "1", "P", "I;16", "F"]))
    if kind == "jpeg" and mode not in ("L", "RGB"):
        mode = "RGB"
    if kind == "gif" and mode in ("I;16", "F", "RGBA"):
        mode = "P"
    arr = np.random.default_rng(draw(st.integers(0, 1000))).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    img = img.convert("L").convert(mode) if mode in ("I;16", "F") else img.convert(mode)
    fmt = {"png": "PNG", "truncated": "PNG", "jpeg": "JPEG", "gif": "GIF"}[kind]
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode == "F" else fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return data


instance = st.one_of(
    st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, image_bytes()),
    st.builds(lambda a: {"array": a}, arrays()),
    st.builds(lambda t: {"b64": t}, st.text(max_size=40)),
    st.dictionaries(st.sampled_from(["b64", "array", "x"]), json_values, max_size=2),
    json_values,
)
predict_bodies = st.one_of(
    st.builds(lambda xs: {"instances": xs}, st.lists(instance, max_size=10)),
    json_values,
)


@st.composite
def oip_bodies(draw) -> object:
    n = draw(st.integers(-1, 3))
    shape = draw(st.sampled_from([[n, 1, 8, 8], [n, 1, 8], [n, 3, 8, 8], "x", [n, 1, 8, 8.0]]))
    size = draw(st.sampled_from([max(n, 0) * 64, 64, 0, 5]))
    data = draw(st.lists(pixel, min_size=size, max_size=size)) if draw(st.booleans()) else draw(json_values)
    t = {
        "name": draw(st.text(max_size=5)),
        "shape": shape,
        "datatype": draw(st.sampled_from(["FP32", "FP32", "FP64", "INT8", "BOOL", ""])),
        "data": data,
    }
    body: dict = {"inputs": draw(st.sampled_from([[t], [t, t], [], t]))}
    if draw(st.booleans()):
        body["outputs"] = draw(st.sampled_from([[{"name": "class"}], [{"name": "nope"}], "x", [1]]))
    if draw(st.booleans()):
        body["id"] = draw(json_scalars)
    return body


# -- properties --------------------------------------------------------------------------------------------------
@FUZZ
@given(body=predict_bodies, top_k=st.sampled_from(["", "?top_k=1", "?top_k=0", "?top_k=x", "?top_k=99"]))
def test_fuzz_predict_json(server: ServerThread, body: object, top_k: str) -> None:
    status, raw = send(server, "POST", "/v1/predict" + top_k, json.dumps(body).encode(), "application/json")
    check(status, raw)
    if status == 200:
        assert len(json.loads(raw)["predictions"]) == len(body["instances"])  # type: ignore[index]


@FUZZ
@given(files=st.lists(image_bytes(), max_size=10), field=st.sampled_from(["files", "files", "file"]))
def test_fuzz_predict_multipart(server: ServerThread, files: list[bytes], field: str) -> None:
    boundary = "fuzzboundary7MA4YWxk"
    parts = []
    for i, f in enumerate(files):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        parts.append(head.encode() + f + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, raw = send(server, "POST", "/v1/predict", body, f"multipart/form-data; boundary={boundary}")
    check(status, raw)
    if status == 200:
        assert len(json.loads(raw)["predictions"]) == len(files)


@FUZZ
@given(body=oip_bodies())
def test_fuzz_oip_infer(server: ServerThread, body: object) -> None:
    status, raw = send(server, "POST", "/v2/models/lgm/infer", json.dumps(body).encode(), "application/json")
    check(status, raw)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.sampled_from(
        [
            "/v1/predict",
            "/v1/perturb",
            "/v1/model",
            "/v2/models/lgm/infer",
            "/v2/models/lgm",
            "/healthz",
            "/v2",
        ]
    )
    | st.text(alphabet="/abcv12{}%.", max_size=20).map(lambda s: "/" + s),
    body=st.binary(max_size=300),
    ctype=st.sampled_from(
        [
            None,
            "application/json",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain",
            "image/png",
        ]
    ),
)
def test_fuzz_raw_requests(
    server: ServerThread, method: str, path: str, body: bytes, ctype: str | None
) -> None:
    status, raw = send(server, method, path, body if method in ("POST", "PUT") else None, ctype)
    check(status, raw)


@FUZZ
@given(
    instance=instance,
    eps=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none(), st.booleans()
    ),
)
def test_fuzz_perturb(server: ServerThread, instance: object, eps: object) -> None:
    body = json.dumps({"instance": instance, "epsilon": eps}).encode()
    status, raw = send(server, "POST", "/v1/perturb", body, "application/json")
    check(status, raw)
