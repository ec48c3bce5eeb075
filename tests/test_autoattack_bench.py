"""bench/detection/autoattack.py really attacks: on a tiny model its ensemble lowers accuracy, each attack only on the
inputs the earlier ones failed on, and the chunked runs merge into one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.detection import autoattack as aa

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("torchattacks")


def test_fab_runs_on_the_l_gm_network(tiny_artifact: Path) -> None:
    """FAB-T gets the float32 network (torchattacks' FAB fails on float64 logits) and returns valid images."""
    from training.artifacts import load_artifact
    from training.data import load_dataset

    model, _ = load_artifact(tiny_artifact)
    test = load_dataset("digits", seed=0).test
    x, y = test.float()[:8], test.y[:8]
    x_adv = aa.make_attacks(model, 0.3, 10, 0, 3, 10)["fab-t"](x, y)
    assert x_adv.shape == x.shape and float((x_adv - x).abs().amax()) <= 0.3 + 1e-5


def test_autoattack_lowers_a_tiny_models_accuracy(tiny_artifact: Path) -> None:
    from training.artifacts import load_artifact
    from training.data import load_dataset

    torch.set_num_threads(1)
    model, _ = load_artifact(tiny_artifact)
    test = load_dataset("digits", seed=0).test
    x, y = test.float()[:40], test.y[:40]
    res = aa.run_autoattack(model, x, y, eps=0.3, steps=5, queries=30, batch=20)
    clean, robust = sum(res["clean"]), sum(res["robust"])
    assert clean >= 15  # the tiny model (3 epochs) gets most clean digits right
    assert robust < clean // 2  # and the ensemble breaks most of them at eps 0.3
    after = [res["robust_after"][a] for a in aa.ATTACKS]
    assert after == sorted(after, reverse=True) and after[-1] == robust  # cumulative, each on the survivors
    assert all(res["robust"][i] <= res["clean"][i] for i in range(len(y)))
    assert {b for b in res["broken_by"] if b} <= set(aa.ATTACKS)


def test_chunks_merge_into_one_report(tiny_artifact: Path, tmp_path: Path) -> None:
    common = [str(tiny_artifact), "--n", "24", "--steps", "3", "--queries", "20", "--threads", "1"]
    common += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    aa.main([*common, "--start", "0", "--limit", "10"])
    first = json.loads((tmp_path / "out" / "report.json").read_text())
    assert first["n"] == 10 and first["first_n_contiguous"]
    aa.main([*common, "--start", "10"])  # the rest of the 24
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["n"] == 24 and rep["robust_accuracy"] <= rep["clean_accuracy"]
    lo, hi = rep["robust_interval"]
    assert lo <= rep["robust_accuracy"] <= hi
    with pytest.raises(SystemExit):
        aa.main([*common, "--start", "30"])
