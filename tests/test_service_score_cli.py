"""``lgm score``: offline screening prints what /v1/predict answers, one JSON line per image, and names the
files it could not read while still scoring the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_service_common import as_png, detector_fixture, digit_images, served_artifact_fixture  # noqa: F401

from service.engine import BatchResult
from service.payloads import prediction_dicts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lgm(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [str(BIN / "lgm"), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def test_score_prints_the_predict_fields_and_skips_bad_files(served_artifact, detector, tmp_path):
    x = digit_images(detector, 3)
    (tmp_path / "sub").mkdir()
    for i in range(3):
        (tmp_path / "sub" / f"d{i}.png").write_bytes(as_png(x[i]))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    r = _lgm("score", str(served_artifact), str(tmp_path), str(tmp_path / "missing.png"), "--quiet")
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(p["file"]).name for p in lines] == ["d0.png", "d1.png", "d2.png"]
    expected = prediction_dicts(BatchResult.from_scores(detector.score(x)), detector.class_names, 3)
    for got, want in zip(lines, expected, strict=True):
        assert {k: v for k, v in got.items() if k != "file"}.keys() == want.keys()
        assert got["class_index"] == want["class_index"] and got["is_adversarial"] == want["is_adversarial"]
        torch.testing.assert_close(got["log_likelihood"], want["log_likelihood"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["abnormality_score"], want["abnormality_score"], rtol=1e-4, atol=1e-4)
    err = r.stderr.splitlines()
    assert any("broken.png" in line and "not an image" in line for line in err)
    assert any("missing.png" in line for line in err)
    assert "Traceback" not in r.stderr


def test_score_all_good_exits_0_and_bad_artifact_is_one_line(served_artifact, detector, tmp_path):
    (tmp_path / "a.png").write_bytes(as_png(digit_images(detector, 1)[0]))
    ok = _lgm("score", str(served_artifact), str(tmp_path / "a.png"))
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 1, ok.stderr
    bad = _lgm("score", str(tmp_path / "nope"), str(tmp_path / "a.png"))
    assert (
        bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no such artifact" in bad.stderr
    )
