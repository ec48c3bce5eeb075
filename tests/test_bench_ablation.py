"""bench/detection/ablation.py on a tiny model: it attacks calibration inputs only, reports every statistic of
every calibration given, and reuses its cached adversarial sets."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from bench.detection import ablation
from detector.calibration import calibrate


@pytest.fixture(scope="module")
def two_calibrations(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    arts = []
    for name, stats in (("plain", None), ("stable", ["likelihood", "boundary", "layers", "stability"])):
        art = tmp_path_factory.mktemp(name)
        for f in ("model.safetensors", "model.json"):
            shutil.copy(tiny_artifact / f, art / f)
        calibrate(art, progress=False, device="cpu", **({"statistics": stats} if stats else {}))
        arts.append(art)
    return arts


def run(monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["ablation.py", *argv])
    return ablation.main()


def test_reports_each_statistic_of_each_calibration(two_calibrations, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "abl"
    argv = [*map(str, two_calibrations), "--n", "24", "--attacks", "fgsm@40,deepfool", "--threads", "1"]
    assert run(monkeypatch, [*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    plain, stable = (report[str(a)] for a in two_calibrations)
    assert "stability" in stable["attacks"]["deepfool"] and "stability" not in plain["attacks"]["deepfool"]
    for res in (plain, stable):
        assert 0.0 <= res["clean_flagged"]["share"] <= 1.0
        for spec in ("fgsm@40", "deepfool"):
            row = res["attacks"][spec]
            assert row["attacked"] == 24 and row["successes"] > 0  # it really attacks
            assert 0.0 <= row["score"]["auroc"] <= 1.0 and 0.0 <= row["flagged"]["share"] <= 1.0
    # DeepFool stops just across a boundary: the boundary statistic sees it
    assert plain["attacks"]["deepfool"]["boundary"]["auroc"] > 0.8
    assert (out / "provenance.json").is_file() and "| stability |" in (out / "report.md").read_text()
    for ood in ablation.OOD:  # garbage inputs: every one counted, scored by every statistic
        row = plain["attacks"][ood]
        assert row["successes"] == row["attacked"] == 24 and 0.0 <= row["score"]["auroc"] <= 1.0
    capsys.readouterr()
    assert run(monkeypatch, [*argv, "--out", str(out)]) == 0  # again: the cached sets, no attack runs
    assert " s\n" not in capsys.readouterr().out


def test_refuses_artifacts_of_different_weights(two_calibrations, tiny_config_factory, tmp_path, monkeypatch):
    from training.trainer import train

    other = tmp_path / "other"
    train(tiny_config_factory(epochs=1, seed=5), other)
    calibrate(other, progress=False, device="cpu")
    with pytest.raises(SystemExit, match="share their weights"):
        run(monkeypatch, [str(two_calibrations[0]), str(other), "--out", str(tmp_path / "x")])
