"""The stock Open Inference Protocol clients against a real server (uvicorn + gRPC on loopback), with their
defaults: Triton's ``tritonclient.http`` / ``tritonclient.grpc`` in this process, KServe's ``InferenceRESTClient``
/ ``InferenceGRPCClient`` in a child process (``oip_kserve_client.py``: the two clients register clashing
``inference.*`` protobuf messages, so they cannot share a process). Each infers a real test digit and must get the
class and abnormality score that ``/v1/predict`` gives for the same digit as a PNG."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_service_common import (  # noqa: F401
    ServerThread,
    as_png,
    detector_fixture,
    digit_images,
    free_port,
    served_artifact_fixture,
    settings_for,
)
from tritonclient.utils import InferenceServerException

from service.app import create_app

KSERVE_CLIENT = Path(__file__).with_name("oip_kserve_client.py")
KEY = "k-grpc"


class Served:
    """A server thread with its HTTP and gRPC addresses."""

    def __init__(self, srv: ServerThread, grpc_port: int) -> None:
        self.srv, self.http, self.grpc = srv, f"127.0.0.1:{srv.port}", f"127.0.0.1:{grpc_port}"


def _serve(artifact: Path, detector, **overrides) -> Iterator[Served]:
    gp = free_port()
    with ServerThread(
        create_app(settings_for(artifact, grpc_port=gp, **overrides), detector=detector)
    ) as srv:
        yield Served(srv, gp)


@pytest.fixture(scope="module")
def served(served_artifact: Path, detector) -> Iterator[Served]:
    yield from _serve(served_artifact, detector, max_images=8, max_request_bytes=64 * 1024)


@pytest.fixture(scope="module")
def keyed(served_artifact: Path, detector) -> Iterator[Served]:
    yield from _serve(served_artifact, detector, api_keys=[KEY])


@pytest.fixture(scope="module")
def reference(served: Served, detector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 digits (N, C, H, W), /v1/predict's classes, its abnormality scores) for three real test digits."""
    x = digit_images(detector, 3)
    body = {"instances": [{"b64": base64.b64encode(as_png(img)).decode()} for img in x]}
    preds = httpx.post(f"http://{served.http}/v1/predict", json=body, timeout=30).json()["predictions"]
    u8 = (x * 255).round().to(torch.uint8).numpy()
    return u8, np.array([p["class_index"] for p in preds]), np.array([p["abnormality_score"] for p in preds])


def _tensor(u8: np.ndarray, datatype: str) -> np.ndarray:
    return u8 if datatype == "UINT8" else u8.astype(np.float32) / np.float32(255.0)


def _same_as_v1(cls: np.ndarray, abn: np.ndarray, reference) -> None:
    _, want_cls, want_abn = reference
    assert cls.tolist() == want_cls.tolist()
    np.testing.assert_allclose(abn, want_abn, rtol=1e-5, atol=1e-6)


# -- tritonclient.http ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_defaults(served: Served, reference, datatype: str, binary: bool) -> None:
    """set_data_from_numpy's default is binary; without outputs the client asks for every output in binary."""
    c = thttp.InferenceServerClient(served.http)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("lgm")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    arr = _tensor(reference[0], datatype)
    inp = thttp.InferInput("input", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    r = c.infer("lgm", [inp], request_id="req-1")
    resp = r.get_response()
    assert resp["id"] == "req-1" and resp["model_name"] == "lgm"
    assert len(resp["outputs"]) == 6 and all("binary_data_size" in o["parameters"] for o in resp["outputs"])
    _same_as_v1(r.as_numpy("class"), r.as_numpy("abnormality_score"), reference)
    assert r.as_numpy("probabilities").shape == (3, 10)
    assert r.as_numpy("is_adversarial").dtype == np.bool_


def test_tritonclient_http_asked_outputs_only(served: Served, reference) -> None:
    c = thttp.InferenceServerClient(served.http)
    arr = _tensor(reference[0], "FP32")
    inp = thttp.InferInput("input", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    outs = [
        thttp.InferRequestedOutput("abnormality_score", binary_data=False),
        thttp.InferRequestedOutput("class", binary_data=True),
    ]
    r = c.infer("lgm", [inp], outputs=outs)
    resp = r.get_response()
    assert [o["name"] for o in resp["outputs"]] == ["abnormality_score", "class"]
    assert "data" in resp["outputs"][0] and "binary_data_size" in resp["outputs"][1]["parameters"]
    assert r.as_numpy("probabilities") is None
    _same_as_v1(r.as_numpy("class"), r.as_numpy("abnormality_score"), reference)


# -- tritonclient.grpc ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_tritonclient_grpc_defaults(served: Served, reference, datatype: str) -> None:
    c = tgrpc.InferenceServerClient(served.grpc)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("lgm")
    meta = c.get_model_metadata("lgm")
    assert meta.name == "lgm" and [o.name for o in meta.outputs][:2] == ["class", "probabilities"]
    arr = _tensor(reference[0], datatype)
    inp = tgrpc.InferInput("input", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    r = c.infer("lgm", [inp], request_id="g-1")
    assert r.get_response().id == "g-1" and len(r.get_response().outputs) == 6
    _same_as_v1(r.as_numpy("class"), r.as_numpy("abnormality_score"), reference)


def test_tritonclient_grpc_asked_outputs_only(served: Served, reference) -> None:
    c = tgrpc.InferenceServerClient(served.grpc)
    arr = _tensor(reference[0], "UINT8")
    inp = tgrpc.InferInput("input", list(arr.shape), "UINT8")
    inp.set_data_from_numpy(arr)
    r = c.infer("lgm", [inp], outputs=[tgrpc.InferRequestedOutput("class")])
    assert [o.name for o in r.get_response().outputs] == ["class"]
    assert r.as_numpy("class").tolist() == reference[1].tolist()


def _grpc_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        call()
    return exc.value


@pytest.mark.parametrize(
    "shape, datatype, fill, code, words",
    [
        ([1, 1, 8, 9], "FP32", 0.5, "INVALID_ARGUMENT", "shape"),
        ([1, 1, 8, 8], "FP32", np.nan, "INVALID_ARGUMENT", "finite"),
        ([1, 1, 8, 8], "FP32", 2.0, "INVALID_ARGUMENT", "[0, 1]"),
        ([1, 1, 8, 8], "INT32", 1, "INVALID_ARGUMENT", "UINT8"),
        ([9, 1, 8, 8], "FP32", 0.5, "INVALID_ARGUMENT", "too many images"),
        ([1000, 1, 8, 8], "FP32", 0.5, "RESOURCE_EXHAUSTED", ""),  # 256 kB > max_request_bytes
    ],
)
def test_grpc_bad_input_is_a_status(served: Served, shape, datatype, fill, code: str, words: str) -> None:
    c = tgrpc.InferenceServerClient(served.grpc)
    dtype = {"FP32": np.float32, "INT32": np.int32}[datatype]
    inp = tgrpc.InferInput("input", shape, datatype)
    inp.set_data_from_numpy(np.full(shape, fill, dtype=dtype))
    err = _grpc_error(lambda: c.infer("lgm", [inp]))
    assert err.status() == f"StatusCode.{code}" and words in err.message(), err


def test_grpc_unknown_model_and_health(served: Served) -> None:
    c = tgrpc.InferenceServerClient(served.grpc)
    assert _grpc_error(lambda: c.get_model_metadata("resnet")).status() == "StatusCode.NOT_FOUND"
    with grpc.insecure_channel(served.grpc) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "inference.GRPCInferenceService"):
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_api_key_metadata(keyed: Served, reference) -> None:
    c = tgrpc.InferenceServerClient(keyed.grpc)
    assert c.is_server_ready()  # readiness needs no key, as over HTTP
    arr = _tensor(reference[0], "UINT8")
    inp = tgrpc.InferInput("input", list(arr.shape), "UINT8")
    inp.set_data_from_numpy(arr)
    for headers in (None, {"x-api-key": "wrong"}):
        err = _grpc_error(lambda h=headers: c.infer("lgm", [inp], headers=h))
        assert err.status() == "StatusCode.UNAUTHENTICATED" and "x-api-key" in err.message()
    assert _grpc_error(lambda: c.get_model_metadata("lgm")).status() == "StatusCode.UNAUTHENTICATED"
    r = c.infer("lgm", [inp], headers={"x-api-key": KEY})
    assert r.as_numpy("class").tolist() == reference[1].tolist()


# -- KServe's clients (child process) ----------------------------------------------------------------------------
def test_kserve_clients(served: Served, keyed: Served, reference, tmp_path: Path) -> None:
    """InferenceRESTClient (binary and JSON inputs) and InferenceGRPCClient, the latter also with a key."""
    np.save(tmp_path / "x.npy", _tensor(reference[0], "FP32"))
    out = subprocess.run(
        [
            sys.executable,
            str(KSERVE_CLIENT),
            served.http,
            served.grpc,
            keyed.grpc,
            KEY,
            str(tmp_path / "x.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == {"rest binary", "rest json", "grpc", "grpc keyed", "rest outputs"}
    for name in ("rest binary", "rest json", "grpc", "grpc keyed"):
        r = results[name]
        _same_as_v1(np.array(r["class"]), np.array(r["abnormality_score"]), reference)
    assert results["rest outputs"] == ["class"]


# -- bad binary bodies ---------------------------------------------------------------------------------------------
def _input(size: int | str, datatype: str = "FP32", shape=(1, 1, 8, 8)) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": size},
            }
        ]
    }


GOOD_RAW = np.full((1, 1, 8, 8), 0.5, np.float32).tobytes()
BAD_BINARY = {
    "header length past the body": (_input(256), GOOD_RAW, "100000", 400, "body has"),
    "header length not a number": (_input(256), GOOD_RAW, "ten", 400, "byte count"),
    "truncated data": (_input(256), GOOD_RAW[:100], None, 400, "follow the header"),
    "bytes left over": (_input(256), GOOD_RAW + b"\0" * 8, None, 400, "belong to no input"),
    "size disagrees with shape": (_input(128), GOOD_RAW[:128], None, 422, "needs 256"),
    "size not a count": (_input("256"), GOOD_RAW, None, 422, "binary_data_size"),
    "NaN": (_input(256), np.full((1, 1, 8, 8), np.nan, np.float32).tobytes(), None, 422, "finite"),
    "out of range": (_input(256), np.full((1, 1, 8, 8), 3.0, np.float32).tobytes(), None, 422, "[0, 1]"),
    "UINT8 size": (_input(256, "UINT8"), GOOD_RAW, None, 422, "needs 64"),
    "header not JSON": ({"x": 1}, b"", "3", 422, "malformed JSON"),
    "both data and size": (
        {"inputs": [{**_input(256)["inputs"][0], "data": [0.0] * 64}]},
        GOOD_RAW,
        None,
        422,
        "both",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BINARY))
def test_bad_binary_bodies_are_4xx(served: Served, case: str) -> None:
    header, raw, length, status, words = BAD_BINARY[case]
    head = json.dumps(header).encode()
    hdr = {"Inference-Header-Content-Length": length if length is not None else str(len(head))}
    r = httpx.post(f"http://{served.http}/v2/models/lgm/infer", content=head + raw, headers=hdr, timeout=30)
    assert r.status_code == status, (case, r.text)
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


def test_binary_request_with_json_response_and_any_content_type(served: Served, reference) -> None:
    """Binary input, no binary output asked: a plain JSON answer; a JSON body under text/plain is still JSON."""
    u8 = reference[0]
    head = json.dumps(_input(u8.nbytes, "UINT8", u8.shape) | {"id": "b-1"}).encode()
    r = httpx.post(
        f"http://{served.http}/v2/models/lgm/infer",
        content=head + u8.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    body = r.json()
    assert body["id"] == "b-1"
    out = {o["name"]: o["data"] for o in body["outputs"]}
    _same_as_v1(np.array(out["class"]), np.array(out["abnormality_score"]), reference)
    doc = {
        "inputs": [
            {"name": "input", "shape": list(u8.shape), "datatype": "UINT8", "data": u8.reshape(-1).tolist()}
        ]
    }
    r = httpx.post(
        f"http://{served.http}/v2/models/lgm/infer",
        content=json.dumps(doc),
        headers={"Content-Type": "text/plain"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]}["class"] == reference[1].tolist()


# -- several workers share the gRPC port -------------------------------------------------------------------------
def _listeners(port: int) -> set[str]:
    """Inodes of the sockets listening on TCP ``port``, from /proc/net/tcp and tcp6 (gRPC binds 127.0.0.1 as a
    v4-mapped IPv6 socket)."""
    out = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else ():
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                out.add(f[9])
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")
def test_every_worker_serves_grpc_on_the_shared_port(served_artifact: Path, reference) -> None:
    """`lgm serve --workers 2`: each worker process listens on the gRPC port itself (SO_REUSEPORT), and calls on
    fresh connections succeed."""
    import time

    port, gport = free_port(), free_port()
    cmd = [sys.executable, "-m", "service", "serve", str(served_artifact), "--port", str(port)]
    cmd += ["--grpc-port", str(gport), "--workers", "2", "--threads", "1", "--device", "cpu"]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"])
    try:
        deadline = time.time() + 90
        workers: list[int] = []
        while time.time() < deadline:
            assert proc.poll() is None, "lgm serve exited"
            children = [
                c
                for t in Path(f"/proc/{proc.pid}/task").iterdir()
                for c in (t / "children").read_text().split()
            ]
            listening = _listeners(gport)
            workers = [int(c) for c in children if _socket_inodes(int(c)) & listening]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, "both workers should listen on the gRPC port"
        arr = _tensor(reference[0], "UINT8")
        for _ in range(6):  # fresh channels: the kernel may hand each to either worker
            c = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
            while not c.is_server_ready():
                time.sleep(0.1)
            inp = tgrpc.InferInput("input", list(arr.shape), "UINT8")
            inp.set_data_from_numpy(arr)
            assert c.infer("lgm", [inp]).as_numpy("class").tolist() == reference[1].tolist()
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_lgm_serve_refuses_a_grpc_port_in_use(served_artifact: Path) -> None:
    """SO_REUSEPORT would let a second server share the port silently: lgm serve checks first, one line."""
    import socket

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cmd = [sys.executable, "-m", "service", "serve", str(served_artifact), "--port", str(free_port())]
        out = subprocess.run(
            [*cmd, "--grpc-port", str(port), "--device", "cpu"], capture_output=True, text=True, timeout=120
        )
    assert out.returncode != 0
    assert f"gRPC port 127.0.0.1:{port} is in use" in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- the query-attack defence on the gRPC path -------------------------------------------------------------------
def test_grpc_queries_go_through_the_query_attack_defence(
    served_artifact: Path, detector, reference, tmp_path
):
    """gRPC calls are screened like HTTP ones: near-duplicates from one client (the peer address here) set
    ``client_flagged`` in the response's parameters, and under ``query_policy=block`` the client is then refused (RESOURCE_EXHAUSTED)."""
    base = _tensor(reference[0][:1], "UINT8")
    for policy in ("flag", "block"):
        store = f"sqlite:///{tmp_path / policy}.sqlite3"
        overrides = dict(query_policy=policy, query_store=store, query_flag_after=2)
        for served in _serve(served_artifact, detector, **overrides):
            c = tgrpc.InferenceServerClient(served.grpc)
            flags = []
            for i in range(
                4
            ):  # an attack's steps: one pixel changed each time (exact repeats are not counted)
                arr = base.copy()
                arr.reshape(-1)[i] ^= 1
                inp = tgrpc.InferInput("input", list(arr.shape), "UINT8")
                inp.set_data_from_numpy(arr)
                try:
                    r = c.infer("lgm", [inp])
                except InferenceServerException as exc:
                    assert (
                        exc.status() == "StatusCode.RESOURCE_EXHAUSTED" and "near-duplicate" in exc.message()
                    )
                    flags.append("refused")
                    continue
                flags.append(r.get_response().parameters["client_flagged"].bool_param)
            assert flags[0] is False and ("refused" if policy == "block" else True) in flags[1:], flags
