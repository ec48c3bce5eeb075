"""Bad input gets a 4xx with a JSON ``{"error": ...}`` naming the problem, never a 5xx, and the server keeps
serving; API keys, CORS and start-up failures of ``lgm serve``."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_service_common import (  # noqa: F401
    client_fixture,
    detector_fixture,
    png_bytes,
    served_artifact_fixture,
    settings_for,
)

import service.settings as settings_module
from service.app import create_app
from service.cli import main as lgm_main
from service.settings import ServeSettings, cgroup_cpu_limit

GOOD = {"instances": [{"array": [[0.5] * 8] * 8}]}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _b64(data: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(data).decode()}]}


REAL_PNG = png_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
NOISE_PNG = png_bytes(np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8))

JSON_CASES = {
    "not an image": (_b64(b"hello, this is text"), "not an image"),
    "truncated image": (_b64(NOISE_PNG[: int(len(NOISE_PNG) * 0.7)]), "truncated or corrupt"),
    "bomb beyond Pillow's limit": (_b64(png_header_only(30000, 30000)), "too large"),
    "bomb beyond our cap": (_b64(png_header_only(5000, 5000)), "max_image_pixels"),
    "bad base64": ({"instances": [{"b64": "###"}]}, "base64"),
    "b64 not a string": ({"instances": [{"b64": 5}]}, "string"),
    "no instances key": ({"images": []}, "instances"),
    "instances not a list": ({"instances": "x"}, "list"),
    "instance not an object": ({"instances": [[0.1]]}, "exactly one of"),
    "instance with both": ({"instances": [{"b64": "", "array": []}]}, "exactly one of"),
    "top level a list": ([1, 2], "instances"),
    "empty batch": ({"instances": []}, "empty batch"),
    "wrong shape": ({"instances": [{"array": [[0.5] * 7] * 8}]}, "shape"),
    "ragged": ({"instances": [{"array": [[0.5] * 8] * 7 + [[0.5] * 3]}]}, "3 values, expected 8"),
    "strings": ({"instances": [{"array": [["0.5"] * 8] * 8}]}, "numbers"),
    "booleans": ({"instances": [{"array": [[True] * 8] * 8}]}, "booleans"),
    "nulls": ({"instances": [{"array": [[None] * 8] * 8}]}, "numbers"),
    "above one": ({"instances": [{"array": [[1.5] * 8] * 8}]}, "[0, 1]"),
    "below zero": ({"instances": [{"array": [[-0.1] * 8] * 8}]}, "[0, 1]"),
    "array not a list": ({"instances": [{"array": 0.5}]}, "list"),
    "huge integers": ({"instances": [{"array": [[10**40] * 8] * 8}]}, "[0, 1]"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_json_input_is_422(client: TestClient, case: str) -> None:
    body, words = JSON_CASES[case]
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422, (case, r.text)
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"instances": [{"array": [[NaN, 0.5]]}]}', "finite"),
        (
            b'{"instances": [{"array": '
            + json.dumps([[0.5] * 8] * 7 + [[0.5] * 7 + [float("inf")]]).encode()
            + b"}]}",
            "finite",
        ),
        (b'{"instances": [{"array": [[Infinity] * 8]}]}', "malformed JSON"),
        (b'{"instances": [', "malformed JSON"),
        (b"\xff\xfe\x00", "JSON"),
        (b"", "empty request body"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
    ],
)
def test_bad_raw_json_is_422(client: TestClient, raw: bytes, words: str) -> None:
    r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]


def test_nan_and_inf_arrays(client: TestClient) -> None:
    for bad in ("NaN", "Infinity", "-Infinity"):
        rows = ["[" + ", ".join(["0.5"] * 8) + "]"] * 7 + [f"[{bad}, 0, 0, 0, 0, 0, 0, 0]"]
        raw = '{"instances": [{"array": [' + ", ".join(rows) + "]}]}"
        r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "finite" in r.json()["error"], (bad, r.text)


def test_multipart_errors(client: TestClient) -> None:
    r = client.post("/v1/predict", files=[("files", ("x.txt", b"not an image", "text/plain"))])
    assert r.status_code == 422 and "files[0]" in r.json()["error"]
    r = client.post("/v1/predict", files=[("image", ("a.png", REAL_PNG, "image/png"))])
    assert r.status_code == 422 and "files" in r.json()["error"]
    r = client.post("/v1/predict", files=[("files", ("a.png", b"", "image/png"))])
    assert r.status_code == 422 and "empty" in r.json()["error"]
    r = client.post("/v1/predict", files={"files": (None, "a text field, not a file")})
    assert r.status_code == 422 and "'files'" in r.json()["error"]
    r = client.post("/v1/predict", data={"files": "urlencoded"})
    assert r.status_code == 415


def test_unsupported_content_type(client: TestClient) -> None:
    r = client.post("/v1/predict", content=REAL_PNG, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "content type" in r.json()["error"]


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.get("/v1/predict")
    assert r.status_code == 405 and "error" in r.json()
    r = client.get("/v1/predict", params={"top_k": "x"})
    assert r.status_code == 405


def test_bad_query_parameter(client: TestClient) -> None:
    r = client.post("/v1/predict?top_k=0", json=GOOD)
    assert r.status_code == 422 and "top_k" in r.json()["error"]


OIP_SHAPE = [1, 1, 8, 8]
OIP_CASES = {
    "wrong datatype": (
        {"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "INT32", "data": [0] * 64}]},
        "FP32",
    ),
    "wrong shape": (
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 9], "datatype": "FP32", "data": [0.0] * 72}]},
        "shape",
    ),
    "data length": (
        {"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32", "data": [0.0] * 63}]},
        "values",
    ),
    "out of range": (
        {"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32", "data": [2.0] * 64}]},
        "[0, 1]",
    ),
    "strings": (
        {"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32", "data": ["a"] * 64}]},
        "numbers",
    ),
    "no inputs": ({"outputs": []}, "inputs"),
    "two inputs": ({"inputs": [{}, {}]}, "exactly one"),
    "missing data": ({"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32"}]}, "data"),
    "empty batch": (
        {"inputs": [{"name": "input", "shape": [0, 1, 8, 8], "datatype": "FP32", "data": []}]},
        "empty batch",
    ),
    "too many": (
        {"inputs": [{"name": "input", "shape": [65, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 65 * 64}]},
        "too many",
    ),
    "unknown output": (
        {
            "inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32", "data": [0.0] * 64}],
            "outputs": [{"name": "x"}],
        },
        "unknown output",
    ),
    "id not a string": ({"id": 5, "inputs": []}, "id"),
}


@pytest.mark.parametrize("case", list(OIP_CASES))
def test_oip_bad_input(client: TestClient, case: str) -> None:
    body, words = OIP_CASES[case]
    r = client.post("/v2/models/lgm/infer", json=body)
    assert r.status_code == 422, (case, r.text)
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


def test_oip_nan(client: TestClient) -> None:
    raw = (
        '{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [NaN'
        + ", 0.0" * 63
        + "]}]}"
    )
    r = client.post("/v2/models/lgm/infer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["error"]


def test_oip_unknown_model(client: TestClient) -> None:
    r = client.post("/v2/models/resnet/infer", json={"inputs": []})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


def test_server_survives_bad_input(client: TestClient) -> None:
    """After all of the above the worker still answers."""
    for raw in (b"\x00" * 100, b"{}", b'{"instances": [{"b64": "AAAA"}]}'):
        assert (
            client.post("/v1/predict", content=raw, headers={"content-type": "application/json"}).status_code
            == 422
        )
    r = client.post("/v1/predict", json=GOOD)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


# -- caps --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped(served_artifact: Path, detector) -> TestClient:
    s = settings_for(served_artifact, max_request_bytes=4096, max_images=3, max_image_pixels=400)
    with TestClient(create_app(s, detector=detector)) as c:
        yield c


def test_payload_over_cap_is_413(capped: TestClient) -> None:
    big = {"instances": [{"b64": "A" * 8000}]}
    r = capped.post("/v1/predict", json=big)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(10):
            yield b" " * 1000

    r = capped.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = capped.post("/v1/predict", files=[("files", ("a.png", b"\x00" * 6000, "image/png"))])
    assert r.status_code == 413
    assert 'route="/v1/predict",status="413"' in capped.get("/metrics").text


def test_too_many_images_is_422(capped: TestClient) -> None:
    r = capped.post("/v1/predict", json={"instances": [{"array": [[0.0] * 8] * 8}] * 4})
    assert r.status_code == 422 and "too many images" in r.json()["error"]
    files = [("files", (f"{i}.png", REAL_PNG, "image/png")) for i in range(4)]
    r = capped.post("/v1/predict", files=files)
    assert r.status_code == 422 and "too many images" in r.json()["error"]
    assert capped.post("/v1/predict", files=files[:3]).status_code == 200


def test_pixel_cap(capped: TestClient) -> None:
    r = capped.post(
        "/v1/predict", files=[("files", ("a.png", png_bytes(np.zeros((21, 20), np.uint8)), "image/png"))]
    )
    assert r.status_code == 422 and "420 pixels exceeds the cap of 400" in r.json()["error"]
    r = capped.post(
        "/v1/predict", files=[("files", ("a.png", png_bytes(np.zeros((20, 20), np.uint8)), "image/png"))]
    )
    assert r.status_code == 200


# -- access ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(served_artifact: Path, detector) -> TestClient:
    s = settings_for(served_artifact, api_keys=["k-one", "k-two"])
    with TestClient(create_app(s, detector=detector)) as c:
        yield c


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", "/v1/predict", GOOD),
        ("get", "/v1/model", None),
        ("post", "/v1/perturb", {"instance": GOOD["instances"][0]}),
        ("get", "/v2", None),
        ("get", "/v2/models/lgm", None),
        (
            "post",
            "/v2/models/lgm/infer",
            {"inputs": [{"name": "input", "shape": OIP_SHAPE, "datatype": "FP32", "data": [0.0] * 64}]},
        ),
    ],
)
def test_api_key_enforced(keyed: TestClient, method: str, path: str, body) -> None:
    kw = {"json": body} if body is not None else {}
    call = getattr(keyed, method)
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        r = call(path, headers=headers, **kw)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json() == {"error": "missing or wrong X-API-Key header"}
    for key in ("k-one", "k-two"):
        assert call(path, headers={"X-API-Key": key}, **kw).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/static/app.js",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/lgm/ready",
        "/docs",
    ],
)
def test_open_routes_need_no_key(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_cors_off_by_default_and_on_when_configured(
    client: TestClient, served_artifact: Path, detector
) -> None:
    pre = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/predict", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    assert (
        "access-control-allow-origin"
        not in client.get("/healthz", headers={"Origin": "https://example.org"}).headers
    )
    s = settings_for(served_artifact, cors_origins=["https://example.org"])
    with TestClient(create_app(s, detector=detector)) as c:
        r = c.options("/v1/predict", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://example.org"
        r = c.options("/v1/predict", headers={**pre, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("LGM_API_KEYS", "a, b")
    monkeypatch.setenv("LGM_CORS_ORIGINS", "https://x.org")
    monkeypatch.setenv("LGM_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("LGM_BATCHING", "false")
    s = ServeSettings()
    assert s.api_keys == ["a", "b"] and s.cors_origins == ["https://x.org"]
    assert s.max_batch_size == 7 and s.batching is False
    assert s.torch_threads() >= 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({}, None),  # no cgroup files
    ],
)
def test_cgroup_cpu_limit_reads_v1_and_v2(
    tmp_path: Path, files: dict[str, str], expected: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_automatic_worker_and_thread_counts_follow_the_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod limited to 1.5 CPUs on a node with many cores: 2 workers x 1 thread, not one per node core."""
    monkeypatch.setattr(settings_module, "cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    s = ServeSettings(workers=0, threads=0)
    assert (s.server_workers(), s.torch_threads()) == (2, 1)
    monkeypatch.setattr(settings_module, "cgroup_cpu_limit", lambda: None)
    assert ServeSettings(workers=0, threads=0).server_workers() == 8


# -- lgm serve start-up ------------------------------------------------------------------------------------------
def _serve_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    code = lgm_main(["serve", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("lgm serve: error:"), err
    return err


def test_serve_refuses_missing_artifact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "no such artifact folder" in _serve_error(capsys, str(tmp_path / "nope"))


def test_serve_refuses_uncalibrated(
    served_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    art = tmp_path / "uncal"
    shutil.copytree(served_artifact, art)
    (art / "detector.json").unlink()
    assert "lgm calibrate" in _serve_error(capsys, str(art))


def test_serve_refuses_tampered(served_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    art = tmp_path / "tampered"
    shutil.copytree(served_artifact, art)
    blob = bytearray((art / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (art / "model.safetensors").write_bytes(bytes(blob))
    assert "sha256" in _serve_error(capsys, str(art))


def test_serve_refuses_bad_setting(served_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--max-batch-size: " in _serve_error(
        capsys, str(served_artifact), "--max-batch-size", "0"
    )  # the flag typed


def test_serve_needs_an_artifact(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LGM_ARTIFACT", raising=False)
    assert "no artifact" in _serve_error(capsys)
