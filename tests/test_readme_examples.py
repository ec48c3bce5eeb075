"""The README's "Python API" examples run as printed (with the test's tiny calibrated model in place of the
default artifact), so that what users copy works."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_two_python_api_examples():
    blocks = _examples()
    assert len(blocks) == 2
    assert "from training import LGMHead, lgm_loss" in blocks[0]
    assert "Detector.load(" in blocks[1]


def test_head_and_loss_example_runs(capsys):
    exec(compile(_examples()[0], "README:python-api-1", "exec"), {})
    assert "first predictions" in capsys.readouterr().out


def test_detector_example_runs(tiny_artifact, tmp_path, capsys):
    from detector.calibration import calibrate

    art = tmp_path / "digits"
    shutil.copytree(tiny_artifact, art)
    calibrate(art, device="cpu", progress=False)
    code = _examples()[1]
    assert '"artifacts/mnist5k"' in code
    exec(compile(code.replace('"artifacts/mnist5k"', repr(str(art))), "README:python-api-2", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all("log-likelihood" in line for line in lines)


def test_examples_import_only_the_public_surface():
    import detector
    import training

    for block in _examples():
        for pkg, names in re.findall(r"from (training|detector) import ([\w, ]+)", block):
            public = (training if pkg == "training" else detector).__all__
            for name in (n.strip() for n in names.split(",")):
                assert name in public, f"{pkg}.{name} is used by the README but not in {pkg}.__all__"
