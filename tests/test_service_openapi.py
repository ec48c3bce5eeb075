"""The HTTP API does what its own OpenAPI document says: schemathesis (``--checks all``: no 5xx, documented
statuses, content types and response schemas, schema-valid requests accepted and schema-violating ones refused,
authentication enforced where declared) against a real ``lgm serve``, without and with API keys. The document
is derived from the pydantic models of ``service/schemas.py``; ``schemathesis.toml`` loads the hooks that draw
real image files where the document says format ``image``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from test_service_common import free_port, served_artifact_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@contextmanager
def lgm_serve(artifact: Path, *flags: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", str(artifact), "--port", str(port)]
    cmd += ["--log-level", "warning", "--device", "cpu", "--threads", "1"]
    proc = subprocess.Popen([*cmd, *flags], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, "lgm serve did not start"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def schemathesis(url: str, *extra: str) -> str:
    """``schemathesis run URL/openapi.json --checks all`` from the repository root (where schemathesis.toml is)."""
    cmd = [str(SCHEMATHESIS), "run", url + "/openapi.json", "--checks", "all", "--seed", "7"]
    out = subprocess.run(
        [*cmd, "--max-examples", "25", *extra], cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    return text


@pytest.mark.slow
def test_schemathesis_finds_nothing(served_artifact: Path) -> None:
    with lgm_serve(served_artifact, "--max-images", "4") as url:
        spec = httpx.get(url + "/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})  # no keys configured: none declared
        text = schemathesis(url)
    assert " passed" in text and "failure" not in text.lower(), text[-3000:]


@pytest.mark.slow
def test_schemathesis_with_api_keys(served_artifact: Path) -> None:
    with lgm_serve(served_artifact, "--max-images", "2", "--api-key", "k-one") as url:
        spec = httpx.get(url + "/openapi.json").json()
        assert "X-API-Key" in str(spec["components"]["securitySchemes"])
        assert "security" in spec["paths"]["/v1/predict"]["post"]
        assert "security" not in spec["paths"]["/healthz"]["get"]
        # ignored_auth and friends send requests without and with a wrong key: both must be 401
        text = schemathesis(url, "--header", "X-API-Key: k-one", "--phases", "examples,coverage,fuzzing")
    assert " passed" in text and "failure" not in text.lower(), text[-3000:]
