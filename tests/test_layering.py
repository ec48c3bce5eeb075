"""The package layering holds: import-linter's contracts (pyproject.toml), and at run time a server process
loads none of the evaluation harness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the dev extras (import-linter)")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_server_loads_no_attack_baseline_or_evaluation_module():
    """``service.app`` (what every uvicorn worker imports) beyond what ``import torch`` itself loads: no module
    of the harness, no attack library, nothing of torch.distributed or tqdm that torch did not load already."""
    torch_only = _loaded_after("import torch")
    served = _loaded_after("import service.app") - torch_only
    assert "service.app" in served and "detector.scoring" in served
    banned = ("detector.harness", "detector.cli", "torchattacks", "torch.distributed", "tqdm")
    bad = sorted(m for m in served if m.startswith(banned))
    assert bad == [], f"service.app loads {bad}"


def test_the_server_loads_no_onnx_package_until_asked_for():
    """``import service.app`` (``--engine torch``, the default) loads neither onnx nor onnxruntime: only
    ``lgm serve --engine onnxruntime`` calls the exporter's functions that import them (``service/onnx_engine.py``)."""
    served = _loaded_after("import service.app")
    bad = sorted(m for m in served if m.split(".")[0] in ("onnx", "onnxruntime"))
    assert bad == [], f"service.app loads {bad}"


def test_the_harness_is_loaded_when_asked_for():
    """The check above can fail: importing the evaluation does load the harness and its attack registry."""
    loaded = _loaded_after("import detector.harness.evaluation")
    assert "detector.harness.attacks" in loaded and "detector.harness.baselines" in loaded


def test_every_served_module_is_under_the_contract():
    """A new module in detector/ (outside harness/) is served code: the contract must list it, or it could
    import the harness unchecked."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [served] = [
        c
        for c in contracts
        if "detector.harness" in c.get("forbidden_modules", []) and "service" in c["source_modules"]
    ]
    modules = {
        f"detector.{p.stem}" for p in (ROOT / "detector").glob("*.py") if p.stem not in ("__init__", "cli")
    }
    assert modules <= set(served["source_modules"]), sorted(modules - set(served["source_modules"]))


def test_every_package_is_under_the_no_circles_contract():
    """import-linter's ``acyclic_siblings`` contract covers all three packages: a circle among the modules (or
    subpackages) of training, detector or service fails ``make lint`` and ``test_import_contracts_are_kept``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    acyclic = [c for c in contracts if c["type"] == "acyclic_siblings"]
    covered = {a for c in acyclic for a in c["ancestors"]}
    assert {"training", "detector", "service"} <= covered, covered
    assert all(c.get("depth", 10) >= 3 and not c.get("ignore_imports") for c in acyclic)
