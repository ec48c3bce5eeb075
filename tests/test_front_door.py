"""The README works verbatim on a fresh clone: its commands, its request files, its Python example.

The model ``make run`` serves (shipped calibrated in ``models/mnist-robust``: nothing is trained here); a real
``lgm serve`` serves it on a free loopback port, and the README's ``curl`` lines run
against it (with ``curl`` when it is installed, else the same form posted by httpx) and their answers are
checked: the shipped genuine digits get their labels and are not flagged, the shipped adversarial digit is read
as another class and is flagged. The examples under ``examples/`` run as files, as a user runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
FIRST_SCREEN = 40  # lines


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bash_lines(text: str) -> list[str]:
    """Command lines of the ```bash blocks, comments dropped, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The model ``make run`` serves: the one shipped in the repository (``LGM_TEST_DEFAULT_MODEL=DIR`` names
    another)."""
    return Path(os.environ.get("LGM_TEST_DEFAULT_MODEL") or ROOT / "models" / "mnist-robust").resolve()


@pytest.fixture(scope="module")
def server(default_model):
    """``lgm serve`` on the default model, as ``make run`` starts it; yields its port."""
    yield from _serve(default_model)


@pytest.fixture(scope="module")
def cifar_server():
    """``lgm serve`` on the shipped CIFAR-10 model, as ``make run-cifar10`` starts it; yields its port."""
    yield from _serve(ROOT / "models" / "cifar10")


def _serve(model: Path):
    port = _free_port()
    cmd = [str(BIN / "lgm"), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "1", "--threads", "1"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                pytest.fail(f"lgm serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("lgm serve was not ready within 120 s")
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _curl(line: str, port: int) -> tuple[list[str], dict]:
    """Run one documented curl line against the test server: (the example images it posts, in order; the JSON
    answer). Verbatim through bash when curl is installed (CI installs it); else a multipart form posted by
    httpx, the one form that needs no shell."""
    line = line.replace("localhost:8000", f"127.0.0.1:{port}")
    files = re.findall(r"examples/[\w.-]+\.png", line)
    for f in files:
        assert (ROOT / f).is_file(), f"the docs post {f}, which the repository does not ship"
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return files, json.loads(done.stdout)
    args = shlex.split(line)
    if any(a in ("-d", "--data") for a in args):
        pytest.skip("curl is not installed: a JSON body built by the shell needs it (apt-get install curl)")
    url = next(a for a in args if a.startswith("127.0.0.1:"))
    parts = [("files", (Path(f).name, (ROOT / f).read_bytes(), "image/png")) for f in files]
    return files, httpx.post(f"http://{url}", files=parts, timeout=60).json()


def _check_answers(files: list[str], body: dict) -> None:
    preds = body["predictions"]
    assert len(preds) == len(files), body
    for f, p in zip(files, preds, strict=True):
        name = Path(f).stem
        if name.startswith("cifar10_"):  # cifar10_<class>.png and cifar10_<class>_adversarial.png
            label = name.removeprefix("cifar10_").removesuffix("_adversarial")
            if name.endswith("_adversarial"):
                assert p["label"] != label and p["is_adversarial"], (f, p)
            else:
                assert p["label"] == label and not p["is_adversarial"], (f, p)
            continue
        kind, label = name.rsplit("_", 1)
        if kind == "digit":
            assert p["label"] == label and not p["is_adversarial"], (f, p)
        else:
            assert kind == "adversarial", f
            assert p["label"] != label and p["is_adversarial"], (f, p)


# -- the README ------------------------------------------------------------------------------------------------
def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"
    first = "\n".join(lines[:FIRST_SCREEN])
    assert "make run" in first and "make test" in first
    assert re.search(r"^curl .*files=@examples/", first, flags=re.M), "the first screen shows one curl"


def test_readme_links_and_paths_exist():
    text = README.read_text()
    for target in re.findall(r"\]\(((?!https?://|#)[^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    for path in set(re.findall(r"\b((?:examples|docs|bench)/[\w./-]+\.\w+)", text)):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w[\w-]*)", "\n".join(_bash_lines(text)), flags=re.M)):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"make {target}: no such target"


DOCUMENTED = (
    "README.md",
    "docs/getting-started.md",
    "docs/service.md",
)  # pages whose curl lines hit `lgm serve`


@pytest.mark.slow
@pytest.mark.parametrize("page", DOCUMENTED)
def test_documented_curl_commands_answer_as_documented(server, page, request):
    """Each line against the model it is written for: the CIFAR-10 examples against models/cifar10
    (``make run-cifar10``), every other against the default model."""
    lines = [
        c for c in _bash_lines((ROOT / page).read_text()) if c.startswith("curl ") and "/v1/predict" in c
    ]
    assert lines, f"{page} shows no curl to /v1/predict"
    for line in lines:
        port = request.getfixturevalue("cifar_server") if "examples/cifar10_" in line else server
        files, body = _curl(line, port)
        assert files, f"{line}: posts no example image"
        _check_answers(files, body)


@pytest.mark.slow
def test_shipped_oip_request_answers(server):
    body = json.loads((EXAMPLES / "oip_request.json").read_text())
    r = httpx.post(f"http://127.0.0.1:{server}/v2/models/lgm/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["class"] == [7] and out["is_adversarial"] == [False]


# -- the examples ----------------------------------------------------------------------------------------------
def test_readme_python_example_is_an_example_file():
    blocks = _python_blocks(README.read_text())
    assert len(blocks) == 1, "the README shows one Python example"
    sources = {p.name: p.read_text() for p in EXAMPLES.glob("*.py")}
    assert any(blocks[0] in s for s in sources.values()), "the README's Python example is not in examples/"


def test_head_and_loss_example_runs():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "head_and_loss.py")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"loss -?\d+\.\d{3}, first predictions \[(\d, ){4}\d\]\n", done.stdout)


@pytest.mark.slow
def test_score_images_example_runs_verbatim(default_model, tmp_path):
    """From a folder laid out like the repository after ``make run``."""
    done = _run_in_layout([sys.executable, "examples/score_images.py"], default_model, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("examples/digit_7.png 7 log-likelihood ") and "FLAGGED" not in lines[0]
    assert lines[1].startswith("examples/adversarial_7.png ") and lines[1].endswith("FLAGGED")
    assert not lines[1].startswith("examples/adversarial_7.png 7 ")


def _run_in_layout(args: list[str], default_model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``args`` run as a user runs them, from a folder laid out like the repository (``_repo_layout``)."""
    return subprocess.run(
        args,
        cwd=_repo_layout(default_model, tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _repo_layout(default_model: Path, tmp_path: Path) -> Path:
    """A folder laid out like the repository: models/mnist-robust (the model named) and examples/."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mnist-robust").symlink_to(default_model)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    return tmp_path


@pytest.mark.slow
def test_lgm_score_on_the_examples_as_documented(default_model, tmp_path):
    page = (ROOT / "docs" / "getting-started.md").read_text()
    cmd = "lgm score models/mnist-robust examples/*_?.png"
    assert f"`{cmd}`" in page
    done = _run_in_layout(["bash", "-c", f"{BIN}/{cmd}"], default_model, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    digits = [p for p in EXAMPLES.glob("*.png") if not p.name.startswith("cifar10_")]
    assert sorted(r["file"] for r in rows) == sorted(f"examples/{p.name}" for p in digits)
    for r in rows:
        kind, label = Path(r["file"]).stem.rsplit("_", 1)
        assert (r["label"] == label) == (kind == "digit") and r["is_adversarial"] == (
            kind == "adversarial"
        ), r


def test_examples_import_only_the_public_surface():
    import detector
    import training

    for path in EXAMPLES.glob("*.py"):
        if path.name == "make_digits.py":  # a maintainer's script, not an example of the API
            continue
        for pkg, names in re.findall(r"from (training|detector) import ([\w, ]+)", path.read_text()):
            public = (training if pkg == "training" else detector).__all__
            for name in (n.strip() for n in names.split(",")):
                assert name in public, f"{path.name} uses {pkg}.{name}, which is not in {pkg}.__all__"


@pytest.mark.slow
def test_make_digits_remakes_the_shipped_images(default_model, tmp_path):
    """The genuine digits and the OIP request depend on the data only: byte for byte what is committed. The
    adversarial digit depends on the model; the script itself refuses to write one that is not flagged."""
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "make_digits.py"),
            "--artifact",
            str(default_model),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("digit_0.png", "digit_2.png", "digit_7.png", "oip_request.json"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
    assert (tmp_path / "adversarial_7.png").is_file()
    assert "flagged True" in done.stdout
