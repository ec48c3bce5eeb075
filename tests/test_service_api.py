"""Every endpoint's success path through HTTP (FastAPI TestClient), the response fields and the OIP v2 shapes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_service_common import (  # noqa: F401
    as_png,
    client_fixture,
    detector_fixture,
    digit_images,
    png_bytes,
    served_artifact_fixture,
    settings_for,
)

from service.app import create_app
from service.schemas import OIPInferResponse, PerturbResponse, PredictResponse

FIELDS = {
    "class_index",
    "label",
    "confidence",
    "top_k",
    "log_likelihood",
    "abnormality_score",
    "is_adversarial",
    "threshold",
}


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def _check_against_detector(preds: list[dict], x: torch.Tensor, detector) -> None:
    s = detector.score(x)
    assert [p["class_index"] for p in preds] == s.pred.tolist()
    torch.testing.assert_close(
        torch.tensor([p["log_likelihood"] for p in preds]), s.log_likelihood, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor([p["abnormality_score"] for p in preds]), s.abnormality, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(torch.tensor([p["threshold"] for p in preds]), s.threshold)
    assert [p["is_adversarial"] for p in preds] == s.is_adversarial.tolist()
    conf = s.probs.gather(1, s.pred[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor([p["confidence"] for p in preds]), conf, rtol=1e-5, atol=1e-6)


def test_predict_multipart_matches_detector(client: TestClient, detector) -> None:
    x = digit_images(detector, 3)  # (3, 1, 8, 8)
    files = [("files", (f"d{i}.png", as_png(x[i]), "image/png")) for i in range(3)]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    PredictResponse.model_validate(body)
    assert set(body) == {"model", "model_version", "predictions", "client_flagged"}
    assert body["client_flagged"] is False
    assert body["model"] == "lgm" and body["model_version"] == detector.meta["weights_sha256"][:12]
    preds = body["predictions"]
    assert len(preds) == 3 and all(set(p) == FIELDS for p in preds)
    for p in preds:
        assert p["label"] == detector.class_names[p["class_index"]]
        assert 0.0 <= p["abnormality_score"] <= 1.0
        assert p["top_k"][0]["label"] == p["label"] and len(p["top_k"]) == 3
        probs = [t["probability"] for t in p["top_k"]]
        assert probs == sorted(probs, reverse=True)
    _check_against_detector(preds, x, detector)


def test_predict_json_b64_and_array_agree(client: TestClient, detector) -> None:
    x = digit_images(detector, 2)
    b64 = base64.b64encode(as_png(x[0])).decode()
    body = {
        "instances": [
            {"b64": b64},
            {"b64": "data:image/png;base64," + b64},
            {"array": x[1].tolist()},
            {"array": x[1][0].tolist()},
        ]
    }
    r = client.post("/v1/predict?top_k=5", json=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 4 and len(preds[0]["top_k"]) == 5
    assert preds[0] == preds[1] and preds[2] == preds[3]
    _check_against_detector([preds[0], preds[2]], x, detector)


def test_predict_converts_size_and_colour(client: TestClient) -> None:
    """An RGBA 40x30 image is converted (alpha onto black, luma, bilinear resize) and scored."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(30, 40, 4), dtype=np.uint8)
    jpeg_like = rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    files = [
        ("files", ("a.png", png_bytes(rgba, "RGBA"), "image/png")),
        ("files", ("b.png", png_bytes(jpeg_like), "image/png")),
    ]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_conversion_rule_transparency_onto_black() -> None:
    from service.images import decode_image

    fully_transparent_white = np.full((16, 16, 4), 255, dtype=np.uint8)
    fully_transparent_white[..., 3] = 0
    out = decode_image(png_bytes(fully_transparent_white, "RGBA"), (1, 8, 8), 10**6)
    assert out.shape == (1, 8, 8) and float(out.max()) == 0.0
    grey = decode_image(png_bytes(np.full((8, 8), 51, dtype=np.uint8)), (3, 8, 8), 10**6)
    assert grey.shape == (3, 8, 8)
    np.testing.assert_allclose(grey, 0.2, atol=1e-6)


def test_model_info(client: TestClient, detector) -> None:
    r = client.get("/v1/model")
    assert r.status_code == 200
    m = r.json()
    assert m["classes"] == detector.class_names
    assert m["input_shape"] == list(detector.input_shape)
    assert m["lgm"] == detector.meta["lgm"]
    det = m["detector"]
    assert set(det["class_thresholds"]) == set(detector.class_names)
    assert det["target_fpr"] == pytest.approx(detector.calibration["target_fpr"])
    assert "calibration" in det


def test_perturb_fgsm(client: TestClient, detector) -> None:
    x = digit_images(detector, 1)
    r = client.post("/v1/perturb", json={"instance": {"array": x[0].tolist()}, "epsilon": 0.3})
    assert r.status_code == 200, r.text
    body = r.json()
    PerturbResponse.model_validate(body)
    adv = torch.from_numpy(np.asarray(_decode_png(body["perturbed_png_b64"]), dtype=np.float32) / 255.0)
    orig = torch.from_numpy(np.asarray(_decode_png(body["original_png_b64"]), dtype=np.float32) / 255.0)
    torch.testing.assert_close(orig, x[0, 0], atol=1 / 255, rtol=0)
    # FGSM moves every pixel by at most eps (plus PNG quantisation), and changes the input.
    assert float((adv - orig).abs().max()) <= 0.3 + 1 / 255
    assert float((adv - orig).abs().max()) > 0.1
    _check_against_detector([body["original"]], x, detector)


def _decode_png(b64: str):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_metrics(client: TestClient) -> None:
    client.post("/v1/predict", json={"instances": [{"array": [[0.0] * 8] * 8}]})
    client.post("/v1/predict", json={"instances": []})
    text = client.get("/metrics").text
    assert 'lgm_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'lgm_requests_total{method="POST",route="/v1/predict",status="422"}' in text
    for name in (
        "lgm_request_duration_seconds_bucket",
        "lgm_batch_size_bucket",
        "lgm_requests_in_flight",
        "lgm_flagged_inputs_total",
        "lgm_images_total",
    ):
        assert name in text


def test_flagged_counter_counts_flags(client: TestClient, detector) -> None:
    def flagged() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("lgm_flagged_inputs_total"):
                return float(line.split()[-1])
        return 0.0

    before = flagged()
    noise = torch.rand(8, *detector.input_shape, generator=torch.Generator().manual_seed(0))
    r = client.post("/v1/predict", json={"instances": [{"array": v.tolist()} for v in noise]})
    n = sum(p["is_adversarial"] for p in r.json()["predictions"])
    assert flagged() - before == n


def test_docs_page_and_static(client: TestClient) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/predict",
        "/v1/model",
        "/healthz",
        "/readyz",
        "/v2/models/{name}/infer",
        "/v2/health/live",
    ):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/json" in body
    assert spec["components"]["schemas"]["PredictRequest"]["examples"]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "text/html" in page.headers["content-type"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


# -- Open Inference Protocol v2 ---------------------------------------------------------------------------------
def test_oip_health_and_metadata(client: TestClient, detector) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/lgm/ready").status_code == 200
    server = client.get("/v2").json()
    assert set(server) == {"name", "version", "extensions"}
    meta = client.get("/v2/models/lgm").json()
    c, h, w = detector.input_shape
    assert meta["name"] == "lgm" and meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}
    ]
    names = {o["name"]: o for o in meta["outputs"]}
    assert set(names) == {
        "class",
        "probabilities",
        "log_likelihood",
        "abnormality_score",
        "is_adversarial",
        "threshold",
    }
    assert names["probabilities"]["shape"] == [-1, len(detector.class_names)]
    version = meta["versions"][0]
    assert client.get(f"/v2/models/lgm/versions/{version}").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/lgm/versions/nope").json()["error"].startswith("unknown version")


@pytest.mark.parametrize("nested", [False, True])
def test_oip_infer_shapes(client: TestClient, detector, nested: bool) -> None:
    x = digit_images(detector, 3)  # (3, C, H, W)
    data = x.tolist() if nested else x.reshape(-1).tolist()
    req = {
        "id": "req-7",
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}],
    }
    r = client.post("/v2/models/lgm/infer", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    OIPInferResponse.model_validate(body)
    assert body["id"] == "req-7" and body["model_name"] == "lgm"
    out = {o["name"]: o for o in body["outputs"]}
    k = len(detector.class_names)
    expect = {
        "class": ([3], "INT64"),
        "probabilities": ([3, k], "FP32"),
        "log_likelihood": ([3], "FP32"),
        "abnormality_score": ([3], "FP32"),
        "is_adversarial": ([3], "BOOL"),
        "threshold": ([3], "FP32"),
    }
    assert {n: (o["shape"], o["datatype"]) for n, o in out.items()} == expect
    assert len(out["probabilities"]["data"]) == 3 * k
    s = detector.score(x)
    assert out["class"]["data"] == s.pred.tolist()
    assert out["is_adversarial"]["data"] == s.is_adversarial.tolist()
    torch.testing.assert_close(
        torch.tensor(out["probabilities"]["data"]).view(3, k), s.probs, rtol=1e-4, atol=1e-5
    )


def test_oip_requested_outputs_and_version_route(client: TestClient, detector) -> None:
    c, h, w = detector.input_shape
    version = client.get("/v2/models/lgm").json()["versions"][0]
    req = {
        "inputs": [{"name": "input", "shape": [1, c, h, w], "datatype": "FP32", "data": [0.5] * (c * h * w)}],
        "outputs": [{"name": "abnormality_score"}, {"name": "class"}],
    }
    r = client.post(f"/v2/models/lgm/versions/{version}/infer", json=req)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["abnormality_score", "class"]
    assert "id" not in r.json()


def test_before_load_not_ready(served_artifact, detector) -> None:
    """Without the lifespan having run (model not loaded), readiness is false and inference refuses with 503."""
    c = TestClient(create_app(settings_for(served_artifact), detector=detector))  # no `with`: no lifespan
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and "error" in r.json()
    assert c.get("/v2/health/ready").status_code == 400
    assert c.get("/v2/models/lgm/ready").status_code == 400
    assert c.get("/v2/health/live").status_code == 200
    r = c.post("/v1/predict", json={"instances": [{"array": [[0.0] * 8] * 8}]})
    assert r.status_code == 503 and "not loaded" in r.json()["error"]
