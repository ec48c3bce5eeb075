"""``lgm serve --engine onnxruntime`` (``service/onnx_engine.py``): the same routes, answers and batching as the
torch engine, scored by ONNX Runtime over the detector exported in memory at start-up; FGSM stays in PyTorch;
``/v1/model``, ``/v2/models/{name}`` and ``/metrics`` name the engine; misuse and an artifact that cannot be
exported are one line naming the engine."""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_front_door import README, _bash_lines, _check_answers
from test_service_batching import _post
from test_service_common import (  # noqa: F401
    ServerThread,
    as_png,
    detector_fixture,
    digit_images,
    free_port,
    served_artifact_fixture,
    settings_for,
)

from detector.scoring import Detector
from service.app import create_app
from service.cli import main
from service.engine import Engine
from service.onnx_engine import OnnxEngine, export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "mnist-robust"
SCORE_ATOL = 2e-2  # the combined score's float32 rounding (detector/export.py's SCORE_ATOL), seen through
# abnormality_score; every other number agrees to float32 rounding of the network


def _same_predictions(got: list[dict], want: list[dict]) -> None:
    """Same form, classes, labels and flags; numbers equal up to float rounding."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        assert (g["class_index"], g["label"], g["is_adversarial"]) == (
            w["class_index"],
            w["label"],
            w["is_adversarial"],
        )
        assert [t["label"] for t in g["top_k"][:1]] == [t["label"] for t in w["top_k"][:1]]
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-4)
        assert g["log_likelihood"] == pytest.approx(w["log_likelihood"], rel=1e-4, abs=1e-3)
        assert g["threshold"] == pytest.approx(w["threshold"], abs=1e-5)
        assert g["abnormality_score"] == pytest.approx(w["abnormality_score"], abs=SCORE_ATOL)


@pytest.fixture(scope="module", name="clients")
def clients_fixture(served_artifact: Path, detector: Detector) -> Iterator[dict[str, TestClient]]:
    """One app per engine on the tiny model (the onnxruntime one exports in its lifespan), no gRPC."""
    with (
        TestClient(
            create_app(settings_for(served_artifact, grpc_port=0, engine="torch"), detector=detector)
        ) as torch_c,
        TestClient(
            create_app(settings_for(served_artifact, grpc_port=0, engine="onnxruntime"), detector=detector)
        ) as ort_c,
    ):
        yield {"torch": torch_c, "onnxruntime": ort_c}


def test_the_engine_is_named_where_the_model_is_described(clients) -> None:
    for name, c in clients.items():
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/model").json()["engine"] == name
        metrics = c.get("/metrics").text
        assert f'lgm_engine_info{{engine="{name}"}} 1.0' in metrics
    platforms = {name: c.get("/v2/models/lgm").json()["platform"] for name, c in clients.items()}
    assert platforms == {"torch": "pytorch", "onnxruntime": "onnxruntime_onnx"}
    engine = clients["onnxruntime"].app.state.lgm.engine
    assert isinstance(engine, OnnxEngine) and type(clients["torch"].app.state.lgm.engine) is Engine


def test_v1_predict_answers_as_the_torch_engine(clients, detector) -> None:
    x = digit_images(detector, 8)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    files = [("files", (f"{i}.png", as_png(img), "image/png")) for i, img in enumerate(torch.cat([x, noisy]))]
    answers = {}
    for name, c in clients.items():
        r = c.post("/v1/predict", files=files)
        assert r.status_code == 200, r.text
        answers[name] = r.json()
    assert answers["onnxruntime"].keys() == answers["torch"].keys()
    _same_predictions(answers["onnxruntime"]["predictions"], answers["torch"]["predictions"])
    engine = clients["onnxruntime"].app.state.lgm.engine
    assert engine.forwards >= 1  # scored by the ONNX Runtime engine, through the batcher


def test_oip_json_answers_as_the_torch_engine(clients, detector) -> None:
    x = digit_images(detector, 4)
    body = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}
        ]
    }
    outs = {}
    for name, c in clients.items():
        r = c.post("/v2/models/lgm/infer", json=body)
        assert r.status_code == 200, r.text
        outs[name] = {o["name"]: o for o in r.json()["outputs"]}
    got, want = outs["onnxruntime"], outs["torch"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in got.values()] == [
        (o["name"], o["datatype"], o["shape"]) for o in want.values()
    ]
    for k in ("class", "is_adversarial", "threshold"):
        assert got[k]["data"] == want[k]["data"], k
    np.testing.assert_allclose(got["probabilities"]["data"], want["probabilities"]["data"], atol=1e-4)


def test_perturb_runs_fgsm_in_torch_and_scores_with_onnxruntime(clients, detector) -> None:
    png = base64.b64encode(as_png(digit_images(detector, 1)[0])).decode()
    answers = {}
    for name, c in clients.items():
        r = c.post("/v1/perturb", json={"instance": {"b64": png}, "epsilon": 0.1})
        assert r.status_code == 200, r.text
        answers[name] = r.json()
    got, want = answers["onnxruntime"], answers["torch"]
    assert got.keys() == want.keys() and got["perturbed_png_b64"] == want["perturbed_png_b64"]
    _same_predictions([got["original"], got["perturbed"]], [want["original"], want["perturbed"]])


@pytest.mark.parametrize("model", ["mnist-robust", "cifar10"])
def test_readme_request_gets_the_same_classes_and_flags(model: str) -> None:
    """Each of the README's curls (a genuine and an attacked image) against the shipped model it is written for
    (models/mnist-robust; models/cifar10 for the CIFAR-10 pair) under both engines; the onnxruntime app is handed
    its export as ``lgm serve`` hands it over."""
    lines = [c for c in _bash_lines(README.read_text()) if c.startswith("curl ") and "/v1/predict" in c]
    [line] = [c for c in lines if ("examples/cifar10_" in c) == (model == "cifar10")]
    artifact = ROOT / "models" / model
    paths = re.findall(r"examples/[\w.-]+\.png", line)
    files = [("files", (Path(p).name, (ROOT / p).read_bytes(), "image/png")) for p in paths]
    det = Detector.load(artifact, "cpu")
    answers = {}
    for engine, onnx_model in (("torch", None), ("onnxruntime", export(det))):
        settings = settings_for(artifact, grpc_port=0, engine=engine)
        with TestClient(create_app(settings, detector=det, onnx_model=onnx_model)) as c:
            r = c.post("/v1/predict", files=files)
            assert r.status_code == 200, r.text
            answers[engine] = r.json()
            _check_answers(paths, answers[engine])
    _same_predictions(answers["onnxruntime"]["predictions"], answers["torch"]["predictions"])


def _no_torch_scoring(*args, **kwargs):
    raise AssertionError("Detector.score called under --engine onnxruntime")


def test_no_answer_path_scores_in_torch_under_onnxruntime(clients, detector, monkeypatch) -> None:
    """With the torch detector's ``score`` broken after start-up, every route of the onnxruntime app answers."""
    monkeypatch.setattr(detector, "score", _no_torch_scoring)
    c = clients["onnxruntime"]
    x = digit_images(detector, 2)
    png = base64.b64encode(as_png(x[0])).decode()
    oip = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}
        ]
    }
    assert c.post("/v1/predict", files=[("files", ("a.png", as_png(x[1]), "image/png"))]).status_code == 200
    assert c.post("/v1/predict", json={"instances": [{"b64": png}]}).status_code == 200
    assert c.post("/v2/models/lgm/infer", json=oip).status_code == 200
    assert c.post("/v1/perturb", json={"instance": {"b64": png}, "epsilon": 0.1}).status_code == 200
    with pytest.raises(AssertionError):  # the torch engine does score through it
        clients["torch"].post("/v1/predict", json={"instances": [{"b64": png}]})


def test_concurrent_requests_are_coalesced_as_under_torch(served_artifact: Path, detector: Detector) -> None:
    """The same micro-batcher: 24 concurrent one-image requests to a real server take far fewer ONNX Runtime
    runs, and each request gets its own rows back."""
    settings = settings_for(served_artifact, grpc_port=0, engine="onnxruntime", max_wait_ms=20.0)
    app = create_app(settings, detector=detector)
    x = digit_images(detector, 24)
    with ServerThread(app) as srv, ThreadPoolExecutor(24) as pool:
        engine = app.state.lgm.engine
        assert isinstance(engine, OnnxEngine) and engine.forwards == 0
        results = list(
            pool.map(lambda v: _post(srv.port, "/v1/predict", {"instances": [{"array": v.tolist()}]}), x)
        )
    assert all(code == 200 for code, _ in results)
    assert sum(engine.batch_sizes) == 24 and engine.forwards < 12, list(engine.batch_sizes)
    assert [body["predictions"][0]["class_index"] for _, body in results] == detector.score(x).pred.tolist()


def test_binary_oip_and_grpc_answer_as_the_torch_engine(
    served_artifact: Path, detector: Detector, monkeypatch
) -> None:
    """Triton's stock clients, HTTP with the binary tensor extension and gRPC, on a few real test digits (the
    onnxruntime server with the torch detector's ``score`` broken once started)."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    x = digit_images(detector, 6).numpy().astype(np.float32)
    got: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for engine in ("torch", "onnxruntime"):
        gp = free_port()
        app = create_app(settings_for(served_artifact, grpc_port=gp, engine=engine), detector=detector)
        with ServerThread(app) as srv, monkeypatch.context() as patch:
            if engine == "onnxruntime":
                patch.setattr(detector, "score", _no_torch_scoring)
            for proto, mod, addr in (
                ("http", thttp, f"127.0.0.1:{srv.port}"),
                ("grpc", tgrpc, f"127.0.0.1:{gp}"),
            ):
                c = mod.InferenceServerClient(addr)
                inp = mod.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                r = c.infer("lgm", [inp])
                resp = r.get_response()
                names = (
                    [o.name for o in resp.outputs]
                    if proto == "grpc"
                    else [o["name"] for o in resp["outputs"]]
                )
                got[engine, proto] = {n: r.as_numpy(n) for n in names}
    for proto in ("http", "grpc"):
        a, b = got["onnxruntime", proto], got["torch", proto]
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (proto, k)
        for k in ("class", "is_adversarial", "threshold"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{proto} {k}")
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-4)
        np.testing.assert_allclose(a["abnormality_score"], b["abnormality_score"], atol=SCORE_ATOL)


# -- misuse: one line each ---------------------------------------------------------------------------------------
def test_a_bad_engine_name_is_one_line(served_artifact: Path, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(served_artifact), "--engine", "tensorrt"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--engine" in err and "tensorrt" in err and err.count("\n") == 1, err
    monkeypatch.setenv("LGM_ENGINE", "tensorrt")
    assert main(["serve", str(served_artifact), "--grpc-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lgm serve: error: --engine:") and err.count("\n") == 1, err
    monkeypatch.delenv("LGM_ENGINE")
    assert main(["serve", str(served_artifact), "--engine", "onnxruntime", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--engine" in err and "CPU" in err and err.count("\n") == 1, err


def test_an_artifact_that_cannot_be_exported_stops_start_up_naming_the_engine(
    tiny_config_factory, tmp_path, capsys
) -> None:
    from training.trainer import train

    softmax = tmp_path / "softmax"
    train(tiny_config_factory(head="softmax", epochs=1), softmax)
    assert main(["serve", str(softmax), "--engine", "onnxruntime", "--grpc-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lgm serve: error: --engine onnxruntime")
    assert "softmax head" in err and err.count("\n") == 1, err


def test_a_missing_extra_is_one_line_naming_the_engine(detector, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ValueError) as exc:
        export(detector)
    msg = str(exc.value)
    assert msg.startswith("--engine onnxruntime needs onnx and onnxruntime") and "lgm-detect[onnx]" in msg


def test_every_worker_gets_the_engine(served_artifact: Path, monkeypatch) -> None:
    """With several workers, the settings travel as LGM_* variables (``settings_env``): the engine with them, and
    ``--device auto`` loads the torch detector on the CPU under onnxruntime."""
    from service.serve_cli import settings_env
    from service.settings import ServeSettings

    env = settings_env(ServeSettings(artifact=served_artifact, engine="onnxruntime"))
    assert env["LGM_ENGINE"] == "onnxruntime" and env["LGM_DEVICE"] == "auto"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = ServeSettings()
    assert worker.engine == "onnxruntime" and worker.detector_device() == "cpu"
    assert ServeSettings(engine="torch").detector_device() == "auto"  # torch keeps choosing CUDA when present


def test_auto_is_onnxruntime_on_the_cpu_with_the_extra_and_torch_otherwise(monkeypatch) -> None:
    """The default engine, ``auto``, is what the served benchmark favoured (bench/serving/serve.py --engines):
    onnxruntime on the CPU when onnx and onnxruntime are installed; torch on CUDA or without the extra."""
    import importlib.util

    from service.settings import ServeSettings

    assert ServeSettings().engine == "auto"
    assert ServeSettings(device="cpu").resolved_engine() == "onnxruntime"
    assert ServeSettings(device="cuda").resolved_engine() == "torch"
    assert ServeSettings(device="cpu", engine="torch").resolved_engine() == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ServeSettings().resolved_engine() == "torch" and ServeSettings().detector_device() == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ServeSettings().resolved_engine() == "onnxruntime" and ServeSettings().detector_device() == "cpu"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real(m, *a)
    )
    assert ServeSettings(device="cpu").resolved_engine() == "torch"


def test_auto_falls_back_to_torch_when_the_export_fails_and_explicit_onnxruntime_does_not(
    detector: Detector, monkeypatch, caplog
) -> None:
    from service import onnx_engine

    def broken(_det):
        raise ValueError("--engine onnxruntime cannot export this artifact: no")

    monkeypatch.setattr(onnx_engine, "export", broken)
    with caplog.at_level("WARNING", logger="lgm.engine"):
        assert onnx_engine.prepare("auto", "onnxruntime", detector) == ("torch", None)
    assert "scoring with torch" in caplog.text and "cannot export" in caplog.text
    with pytest.raises(ValueError, match="cannot export"):
        onnx_engine.prepare("onnxruntime", "onnxruntime", detector)
    assert onnx_engine.prepare("auto", "torch", detector) == ("torch", None)


def test_workers_get_time_to_start_before_uvicorn_calls_them_hung(served_artifact: Path, monkeypatch) -> None:
    """With several workers, uvicorn's supervisor kills a worker that misses its ping for timeout_worker_healthcheck
    seconds (default 5): shorter than importing torch and onnxruntime and exporting on a busy machine, which had
    the compose stack's workers killed and restarted in a loop. ``lgm serve`` gives them a minute."""
    import uvicorn

    from service.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr(os, "environ", dict(os.environ))  # settings_env writes the workers' settings here
    argv = ["serve", str(served_artifact), "--workers", "2", "--grpc-port", "0", "--port", "0"]
    assert main(argv) == 0
    (call,) = calls
    assert call["workers"] == 2 and call["factory"] is True
    assert call["timeout_worker_healthcheck"] >= 30
