"""bench/detection/detector_suite.py on a tiny calibrated model: clean figures, chunked adaptive runs that merge, and the
adaptive attacks really defeat an undefended tiny network's detector on most inputs at a large eps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.detection import detector_suite


def test_clean_and_adaptive_chunks(tiny_artifact: Path, tmp_path: Path) -> None:
    from detector.calibration import calibrate

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    calibrate(art)
    common = [str(art), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--threads", "1"]
    detector_suite.main([*common, "clean"])
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["clean"]["n"] == 360 and 0 < rep["clean"]["correct"] <= 360
    fast = ["--adaptive-steps", "20", "--adaptive-restarts", "1", "--eps", "0.3"]
    detector_suite.main([*common, "adaptive", *fast, "--start", "0", "--limit", "6"])
    detector_suite.main([*common, "adaptive", *fast, "--start", "6", "--limit", "6"])
    a = json.loads((tmp_path / "o" / "report.json").read_text())["adaptive_eps0.3"]
    assert a["inputs"] == 12 and 0 < a["attacked"] <= 12
    per = a["per_attack_detect_or_correct"]
    assert a["detect_or_correct"] <= min(per.values())  # the worst per input is at most each attack's figure
    assert a["detect_or_correct"] < 0.5  # a 3-epoch digits model: its detector does not stop these attacks


def _report(targets_key: str | None, with_key: bool = True) -> dict:
    out = {
        "artifact": "a",
        "split": "the test split",
        "threads": 1,
        "items": "images",
        "clean": {"n": 1000, "correct": 800, "flagged": 40},
    }
    if with_key:
        out["targets"] = detector_suite.TARGETS.get(targets_key or "")
    return out


def test_targets_follow_the_dataset() -> None:
    """MNIST's targets for MNIST (and for reports written before targets were stored), CIFAR-10's for CIFAR-10,
    none for other datasets."""
    cifar = detector_suite.format_report(_report("cifar10"))
    assert "clean accuracy >= 75.0%: met" in cifar and "adversarially trained CIFAR-10" in cifar
    assert "clean accuracy >= 99.0%: missed" in detector_suite.format_report(_report(None, with_key=False))
    other = detector_suite.format_report(_report(None))
    assert "Target" not in other and "80.00%" in other
    assert detector_suite.target_rows(_report(None)) == ""


def test_report_folder_follows_the_published_rows_key() -> None:
    """An image-folder copy of CIFAR-10 reports under ``reports/cifar10_detector``, MNIST under its record's name,
    any other dataset under its card's name."""
    from bench.detection.autoattack_rows import CIFAR10_CLASSES

    folder = {"name": "folder", "class_names": CIFAR10_CLASSES}
    assert detector_suite.default_out(folder, [3, 32, 32]) == Path("reports/cifar10_detector")
    assert detector_suite.default_out({"name": "mnist"}, [1, 28, 28]) == Path("reports/mnist_detector")
    assert detector_suite.default_out({"name": "folder", "class_names": ["a", "b"]}) == Path(
        "reports/folder_detector"
    )


def test_sanity_runs_pgd_at_the_scales_asked(tiny_artifact: Path, tmp_path: Path) -> None:
    """``--scales`` sets the multiples of the budget PGD runs at (Square at the budget alone); success on an
    undefended tiny network does not fall as eps grows; scales that do not start at 1 and rise are refused."""
    from detector.calibration import calibrate

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    calibrate(art)
    common = [str(art), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--threads", "1"]
    detector_suite.main([*common, "sanity", "--limit", "8", "--eps", "0.1", "--scales", "1,3"])
    rows = json.loads((tmp_path / "o" / "report.json").read_text())["sanity"]["rows"]
    assert [r["eps"] for r in rows] == [0.1, 0.3]
    assert "square" in rows[0] and "square" not in rows[1]  # Square at the budget only
    assert rows[1]["pgd"] >= rows[0]["pgd"] and rows[1]["pgd"] > 0.5
    for bad in ("2,3", "1,3,2", "1,x"):
        with pytest.raises(SystemExit):
            detector_suite.main([*common, "sanity", "--scales", bad])
