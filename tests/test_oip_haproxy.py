"""gRPC through the project's HAProxy configuration (docker/haproxy/, the host-network backend): two real
replicas (uvicorn + gRPC on loopback) behind HAProxy's h2 frontend, called by tritonclient's gRPC client. Calls
on one client connection are balanced over both replicas, and a replica whose /readyz fails drops out."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
from test_service_common import (  # noqa: F401
    ServerThread,
    detector_fixture,
    digit_images,
    free_port,
    served_artifact_fixture,
    settings_for,
)

from service.app import create_app

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_DIR = ROOT / "docker" / "haproxy"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def _image_env() -> dict[str, str]:
    """The ENV defaults of the load balancer's image (docker/haproxy/Dockerfile)."""
    text = (HAPROXY_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line[4:]))
    return env


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)")
def test_grpc_calls_are_balanced_over_replicas_through_haproxy(
    served_artifact: Path, detector, tmp_path
) -> None:
    replicas = []
    for _ in range(2):
        gp = free_port()
        srv = ServerThread(
            create_app(settings_for(served_artifact, grpc_port=gp), detector=detector)
        ).__enter__()
        replicas.append((srv, gp))
    grpc_port, port, stats = free_port(), free_port(), free_port()
    env = {
        **_image_env(),
        "PATH": os.environ["PATH"],
        "LGM_LB_BIND": f"127.0.0.1:{port}",
        "LGM_LB_GRPC_BIND": f"127.0.0.1:{grpc_port}",
        "LGM_LB_STATS_BIND": f"127.0.0.1:{stats}",
        "LGM_BIND_HOST": "127.0.0.1",
        "LGM_API_PORT": str(replicas[0][0].port),
        "LGM_API_2_PORT": str(replicas[1][0].port),
        "LGM_API_GRPC_PORT": str(replicas[0][1]),
        "LGM_API_2_GRPC_PORT": str(replicas[1][1]),
    }
    cfg = ["-f", str(HAPROXY_DIR / "haproxy.cfg"), "-f", str(HAPROXY_DIR / "backend-hostnet.cfg")]
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen([HAPROXY, "-W", "-db", *cfg], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        x = (digit_images(detector, 2) * 255).round().to(torch.uint8).numpy()
        want = detector.score(torch.from_numpy(x).float() / 255).pred.tolist()
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.time() + 20
        while True:  # until HAProxy's checks have seen both replicas up
            try:
                if client.is_server_ready():
                    break
            except tgrpc.InferenceServerException:
                pass
            assert time.time() < deadline, (tmp_path / "haproxy.log").read_text()
            time.sleep(0.2)
        time.sleep(2.5)  # rise 2 at fastinter 500 ms: the second replica joins too
        before = [r[0].app.state.lgm.metrics.images._value.get() for r in replicas]
        inp = tgrpc.InferInput("input", list(x.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(x))
        for _ in range(8):
            assert client.infer("lgm", [inp]).as_numpy("class").tolist() == want
        served = [
            r[0].app.state.lgm.metrics.images._value.get() - b for r, b in zip(replicas, before, strict=True)
        ]
        assert sum(served) == 16 and all(n > 0 for n in served), served  # one connection, both replicas
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for srv, _ in replicas:
            srv.__exit__(None, None, None)
