"""report.md's "exact command" is the command as typed, however ``lgm`` was started."""

from __future__ import annotations

import sys

import pytest

import detector.harness.evaluation as ev
from service.cli import main


@pytest.mark.parametrize("argv0", ["/usr/bin/lgm", "/src/service/__main__.py"])
def test_evaluate_records_every_flag(monkeypatch, tmp_path, argv0: str) -> None:
    seen = {}
    monkeypatch.setattr(ev, "evaluate", lambda cfg: seen.setdefault("cfg", cfg) and None)
    flags = ["evaluate", str(tmp_path), "--out", str(tmp_path / "r"), "--attacks", "fgsm,pgd", "--steps", "3"]
    monkeypatch.setattr(
        sys, "argv", [argv0, *flags, "--limit", "40"]
    )  # `lgm ...` and `python -m service ...`
    assert main() == 0
    cmd = seen["cfg"].command
    assert cmd == f"lgm evaluate {tmp_path} --out {tmp_path / 'r'} --attacks fgsm,pgd --steps 3 --limit 40"
    seen.clear()
    assert main([*flags, "--seed", "1"]) == 0  # called from Python with its own argv
    assert seen["cfg"].command.endswith("--steps 3 --seed 1")
