"""The results records of the benchmarks other than bench/detection/detect.py and bench/detection/robust.py: each renders a tiny
synthetic record with the benchmark's own table functions, and the chunked and saved-run paths produce records
through their real report steps (no attack is run here)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from bench import provenance
from bench.records import results

ROOT = Path(__file__).resolve().parents[1]


def _record(name: str, report: dict, tmp_path: Path, command: str = "bench (test)") -> dict:
    """A report written the way a benchmark writes it, collected the way `bench/records/results.py collect` does."""
    src = tmp_path / f"src_{name}"
    src.mkdir()
    (src / "report.json").write_text(json.dumps(report))
    provenance.write(src, command, 3.0)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    results.collect(name, src, data)
    return results.load_records(data)[name]


def _render(block: str, rec: dict) -> str:
    text = results.RENDERERS[block](rec)
    assert text.strip() and "<!--" not in text, block
    return text


def test_every_collected_record_has_a_stamp_and_a_block():
    for name in results.COLLECT:
        assert f"{name}.stamp" in results.RENDERERS, name
        assert any(k.startswith(f"{name}.") and k != f"{name}.stamp" for k in results.RENDERERS), name


# ---- bench/detection/autoattack.py and bench/detection/detector_suite.py: records from the chunk caches --------
def _artifact(tmp_path: Path) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    card = {"name": "mnist", "class_names": [str(i) for i in range(10)], "sizes": {"test": 10000}}
    model = {"dataset": card, "weights_sha256": "0" * 64}
    (art / "model.json").write_text(json.dumps(model))
    return art


def test_autoattack_record_from_chunks(tmp_path):
    from bench.detection import autoattack

    art = _artifact(tmp_path)
    args = argparse.Namespace(
        artifact=str(art),
        n=1000,
        seed=0,
        eps=0.3,
        steps=100,
        queries=5000,
        cache=tmp_path / "c",
        out=tmp_path / "o",
    )
    chunk = autoattack.cache_dir(args) / "chunk-00000-00004.json"
    chunk.parent.mkdir(parents=True)
    chunk.write_text(
        json.dumps(
            {
                "start": 0,
                "clean": [True, True, True, False],
                "robust": [True, False, True, False],
                "broken_by": [None, "apgd-t", None, None],
                "seconds": {"apgd-ce": 1.0, "apgd-t": 2.0, "fab-t": 3.0, "square": 4.0},
                "wall_seconds": 10.0,
                "code": {"commit": "a" * 40, "dirty": False},
            }
        )
    )
    out = autoattack.report(args)
    assert (out["n"], out["n_clean"], out["n_robust"]) == (4, 3, 2)
    assert out["robust_after"] == {"apgd-ce": 3, "apgd-t": 2, "fab-t": 2, "square": 2}
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert prov["extra"]["chunk_commits"] == ["a" * 40] and prov["wall_seconds"] == 10.0
    results.collect("autoattack", tmp_path / "o", tmp_path / "data")
    rec = results.load_records(tmp_path / "data")["autoattack"]
    table = _render("autoattack.table", rec)
    assert "4 digits (the first 4 of numpy default_rng(0).permutation(10000))" in table
    assert f"| this project: {art} | 75.00% [" in table and "| apgd-t | 50.00% [" in table
    target = _render("autoattack.target", rec)
    assert target.splitlines()[0] == "| target | figure | verdict |"
    assert "50.00% [" in target and "first 4 digits" in target
    stamp = _render("autoattack.stamp", rec)
    assert stamp.startswith("Merged from cached chunks") and f"`{'a' * 10}`" in stamp


def test_mnist_detector_record_from_chunks(tmp_path):
    from bench.detection import detector_suite

    art = _artifact(tmp_path)
    args = argparse.Namespace(
        artifact=str(art), seed=0, threads=1, cache=tmp_path / "c", out=str(tmp_path / "o")
    )
    base = detector_suite.cache(args)
    detector_suite.write_json(base / "clean.json", {"n": 200, "correct": 199, "flagged": 9, "seconds": 1.0})
    chunk = {
        "start": 0,
        "eps": 0.3,
        "test_indices": [5, 6, 7, 8],
        "attacked": [True, True, True, False],
        "clean_flagged": [False, False, False, True],
    }
    # per attacked input: (misclassified, flagged); input 2 is fooled unflagged by one attack only
    for name, succ, flag in (
        ("adaptive", [True, False, False], [True, False, False]),
        ("adaptive_multitarget", [False, False, True], [False, False, False]),
        ("adaptive_orthogonal", [False, False, False], [False, False, False]),
    ):
        chunk[name] = {"success": succ, "flagged": flag, "seconds": 2.0}
    detector_suite.write_json(base / "adaptive-eps0.3" / "chunk-00000-00004.json", chunk)
    detector_suite.write_json(
        base / "sanity.json", {"n_attacked": 3, "rows": [{"eps": 0.3, "pgd": 0.1, "square": 0.0}]}
    )
    out = detector_suite.report(args)
    a = out["adaptive_eps0.3"]
    assert (a["inputs"], a["attacked"], a["detect_or_correct_count"], a["robust_count"]) == (4, 3, 2, 1)
    assert a["per_attack_detect_or_correct_count"] == {
        "adaptive": 3,
        "adaptive_multitarget": 2,
        "adaptive_orthogonal": 3,
    }
    results.collect("mnist_detector", Path(args.out), tmp_path / "data")
    rec = results.load_records(tmp_path / "data")["mnist_detector"]
    table = _render("mnist_detector.table", rec)
    assert "| 200 | 99.50% [" in table and "| 0.3 | 4 (3) | 100.00% [" in table
    assert "| 66.67% [" in table and "| 0.3 | 0.100 | 0.000 |" in table
    targets = _render("mnist_detector.targets", rec).splitlines()
    assert targets[0] == "| target | figure | verdict |" and len(targets) == 5
    assert "3 attacked of the first 4 digits" in targets[-1] and targets[-1].endswith("| missed |")


# ---- bench/query/attacks.py: a saved run rebuilt into a record -------------------------------------------------
def test_query_record_rebuilt_from_a_saved_run(tmp_path):
    from bench.query import report as query_report

    runs = [
        {"success": None, "flag": 9, "queries": 50},
        {"success": 30, "flag": None, "queries": 30},
        {"success": 40, "flag": 12, "queries": 40},
    ]
    saved = {
        "args": {"artifact": "artifacts/mnist5k", "scenarios": "attacks,benign,sweep", "n": 3, "eps": 0.3},
        "attacks": [query_report.summarise("Square, probabilities", runs, 100)],
        "sybil": [
            {"attack": "Square", "keys": 1, "n": 3, "success_under_block": 1, "all_keys_flagged_at": [9, 12]}
        ],
        "benign": [{"scenario": "digits", "clients": 2, "queries": 10, "flagged": [4]}],
        "sweep": [
            {
                "levels": 5,
                "patch": 4,
                "T": 15,
                "M": 3,
                "attacks": 3,
                "flagged_before": 2,
                "median_flag": 10.5,
                "blinded": 0,
                "blinded_before": 0,
                "benign": 2,
                "benign_flagged": 1,
            }  # fmt: skip
        ],
        "seconds": 12.0,
    }
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    query_report.rebuild(path, tmp_path / "o")
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert prov["date"].startswith("2023-11-14T22:13") and prov["commit"] is None
    assert prov["command"] == (
        ".venv/bin/python bench/query/attacks.py --artifact artifacts/mnist5k --scenarios attacks,benign,sweep --n 3"
    )
    results.collect("query_attacks", tmp_path / "o", tmp_path / "data")
    rec = results.load_records(tmp_path / "data")["query_attacks"]
    attacks = _render("query_attacks.attacks", rec).splitlines()
    # success: the 2nd (30) and 3rd (40); flagged before success: the 1st (never succeeded) and the 3rd (flag 12);
    # under `block` only the 2nd, never flagged, succeeds
    assert (
        attacks[2]
        == "| Square, probabilities | 3 | 100 | 67% (21-94) | 35 | 67% (21-94) | 10.5 | 33% (6-79) |"
    )
    curve = _render("query_attacks.curve", rec).splitlines()
    assert curve[0].startswith("| attack | <= 10 | <= 20 | <= 50 | <= 100 |") and curve[2].endswith(
        "| 0% | 0% | 67% | 67% |"
    )
    assert "| Square | 1 | 33% (6-79) | 10 |" in _render("query_attacks.sybil", rec)
    assert "| digits | 2 | 10 | 1 | 4 |" in _render("query_attacks.benign", rec)
    assert "| 5 | 4 | 15 | 3 | 67% (21-94) | 10.5 | - | 1 |" in _render("query_attacks.sweep", rec)
    stamp = _render("query_attacks.stamp", rec)
    assert "at commit `unknown`" in stamp and "Rebuilt from the run's saved JSON" in stamp
    assert "(this run measured no `sybil`" in results.RENDERERS["query_adaptive.sybil"]({"report": {}})
    with pytest.raises(SystemExit, match="not a bench/query/attacks.py report"):
        (tmp_path / "bad.json").write_text("{}")
        query_report.rebuild(tmp_path / "bad.json", tmp_path / "o2")


# ---- bench/serving/serve.py: load, soak, --protocols -----------------------------------------------------------
_MODEL = {"dataset": "mnist5k", "backbone": "mnist_cnn", "shape": "1x28x28"}


def _cell(**kw) -> dict:
    return {"p50": 12.04, "p99": 129.71, "server_cpu": 1.91, "client_cpu": 0.06, "errors": 0, **kw}


def test_serve_load_record_renders_the_printed_table(tmp_path):
    rep = {
        "benchmark": "serve",
        "mode": "load",
        "model": _MODEL,
        "cores": 2,
        "max_batch_size": 64,
        "default_layout": {"workers": 2, "threads": 1},
        "ceiling": {"median": 5417.0, "all": [5118.0, 5417.0, 5585.0], "one_thread": 3162.0},
        "repeats": 3,
        "duration": 3,
        "warmup": 1,
        "rows": [
            {
                "layout": "2x1",
                "concurrency": 32,
                "policy": None,
                "rps": 2513.2,
                "range": [2398.0, 2609.0],
                **_cell(),
            },
            {
                "layout": "default",
                "concurrency": 32,
                "policy": "flag",
                "rps": 180.0,
                "range": [156.0, 228.0],
                **_cell(),
            },  # fmt: skip
        ],
    }
    rec = _record("serve", rep, tmp_path)
    lines = _render("serve.table", rec).splitlines()
    # the row docs/results/serving.md quotes from the benchmark's printed table, character for character
    assert "| 2x1 | 32 | 2513 | 2398-2609 | 46% | 12.04 | 129.71 | 1.91 | 0.06 | 0 |" in lines
    assert any(
        ln.startswith("| 2x1 (default), query_policy=flag | 32 | 180 | 156-228 | 3% |") for ln in lines
    )
    assert "**5417 images/s** (median of 3 measurements spread over the run, 5118-5585)" in lines[2]
    soak = {
        "mode": "soak", "seconds": 600, "concurrency": 64, "layout": "default", "requests": 1434922,
        "rps": 2391.4, "errors": 0, "status": 0, "timeout": 0, "socket": 0, "p50": 24.4, "p99": 182.4,
        "rss": [[0.0, 1284.5], [5.0, 1300.0], [435.0, 1339.0], [600.0, 1332.8]],
        "store": {"queries": 10, "clients": 2, "hashes": 500, "bytes": 2 * 2**20},
    }  # fmt: skip
    text = _render("serve_soak.soak", _record("serve_soak", soak, tmp_path))
    assert text.startswith(
        "Soak: 600 s at concurrency 64, server layout default: 1434922 requests (2391/s), 0 errors"
    )
    assert "start 1284.5, peak 1339.0 (at 435 s), end 1332.8" in text and "2.0 MiB on disk" in text


def test_median_interval_is_the_sign_test_interval():
    from bench.serving import report as serve_report

    xs = [1.13, 0.628, 0.755, 0.824, 0.841, 0.846, 0.908, 0.957, 1.039]
    # n = 9: (x_(2), x_(8)) covers the median with 1 - 2 * 10/512 = 96.1%; (x_(3), x_(7)) only 82%
    assert serve_report.median_interval(xs) == (0.755, 1.039)
    assert serve_report.median_interval(xs[:5]) is None  # 1 - 2/32 = 93.75% < 95%: no interval
    assert serve_report.median_interval(xs[:6]) == (0.628, 1.13)


def test_serve_paired_ratio_rows_carry_the_medians_interval(tmp_path):
    base = {
        "benchmark": "serve", "mode": "load", "model": _MODEL, "cores": 2, "max_batch_size": 64,
        "default_layout": {"workers": 2, "threads": 1}, "repeats": 9, "duration": 4, "warmup": 1,
        "ceiling": {"median": 2380.0, "all": [2223.0, 2537.0], "one_thread": 1617.0},
    }  # fmt: skip
    pairs = [0.628, 0.755, 0.824, 0.841, 0.846, 0.908, 0.957, 1.039, 1.13]
    flag = {"layout": "default", "concurrency": 32, "policy": "flag", "rps": 937.3, "range": [652.0, 990.0]}
    flag["pair_ratio"] = [0.846, 0.628, 1.13, "off"]
    off = {"layout": "default", "concurrency": 32, "policy": "off", "rps": 1048.1, "range": [831.0, 1177.0]}
    with_pairs = {**base, "rows": [{**off, **_cell()}, {**flag, "pair_ratios": pairs, **_cell()}]}
    lines = _render("serve_query.table", _record("serve_query", with_pairs, tmp_path)).splitlines()
    assert "| default | 32 | flag / off | 9 | 0.846 | 0.755-1.039 | 0.628-1.130 |" in lines
    older = {**base, "rows": [{**off, **_cell()}, {**flag, **_cell()}]}  # a run that kept only the median
    (tmp_path / "o").mkdir()
    lines = _render("serve_query.table", _record("serve_query", older, tmp_path / "o")).splitlines()
    assert "| default | 32 | flag / off | - | 0.846 | - | 0.628-1.130 |" in lines


def test_serve_protocols_record_renders_table_and_targets(tmp_path):
    rows = [
        {
            "server": "lgm",
            "format": "v1",
            "concurrency": 32,
            "rps": 1006.0,
            "range": [1006.0, 1006.0],
            **_cell(),
        },
        {
            "server": "litserve",
            "format": "v1",
            "concurrency": 32,
            "rps": 811.0,
            "range": [800.0, 811.0],
            **_cell(),
        },
        {
            "server": "lgm",
            "format": "v2 binary",
            "concurrency": 1,
            "rps": 253.0,
            "range": [253.0, 253.0],
            **_cell(p50=3.75),
        },  # fmt: skip
    ]
    rep = {
        "mode": "protocols", "model": _MODEL, "cores": 2, "max_batch_size": 64, "max_wait_ms": 1.0,
        "peer_workers": 2, "default_layout": {"workers": 2, "threads": 1},
        "ceiling": {"median": 2685.0, "all": [2411.0, 3144.0]}, "repeats": 1, "duration": 3, "warmup": 1,
        "rows": rows,
    }  # fmt: skip
    rec = _record("serve_protocols", rep, tmp_path)
    table = _render("serve_protocols.table", rec)
    assert "| lgm | v1 | 32 | 1006 | 1006-1006 | 37% | 12.04 | 129.71 | 1.91 | 0.06 | 0 |" in table
    targets = _render("serve_protocols.targets", rec).splitlines()
    assert targets[0] == "- c=32, v1: lgm 1006 req/s = 1.24x the best peer (litserve, 811); target 1.5x"
    assert "- lgm v2 binary, c=1: p50 3.75 ms; target < 2 ms" in targets
    assert targets[-1] == "- errors over every cell: 0; target 0"


# ---- bench/training/train.py, bench/training/robust_train.py, bench/detection/detect_scores.py -----------------
def test_train_records_render_the_printed_tables(tmp_path):
    summary = {
        "lgm": {"test_accuracy": 0.99, "calibration_accuracy": 0.992, "seconds_per_epoch": 4.71},
        "softmax": {"test_accuracy": 0.99, "calibration_accuracy": 0.984, "seconds_per_epoch": 4.67},
    }
    rep = {
        "summary": summary,
        "epochs": 10,
        "seeds": [0],
        "timing_rounds": 3,
        "device": "CPU AMD EPYC, 2 torch threads",
    }
    table = _render("train.table", _record("train", rep, tmp_path)).splitlines()
    assert (
        table[0]
        == "mnist5k (3,500 train / 500 calibration / 1,000 test), 10 epochs, seed 0; CPU AMD EPYC, 2 torch threads"
    )
    assert "| L-GM | 99.00% | 99.20% | 4.71 |" in table
    assert "| L-GM / softmax | +0.00 pts | +0.80 pts | 1.01x |" in table
    assert table[-3:] == [
        "- L-GM test accuracy >= 98.5%: met",
        "- L-GM test accuracy >= softmax: met",
        "- L-GM epoch time <= 1.15x softmax: met",
    ]
    cifar = {
        "lgm": {"seconds_per_epoch": 2.0, "images_per_second": 25000.0},
        "softmax": {"seconds_per_epoch": 1.6, "images_per_second": 31250.0},
        "cifar_n": 50000, "batch_size": 128, "cifar_epochs": 3, "device": "NVIDIA H200 (CUDA)",
    }  # fmt: skip
    text = _render("train_cifar.table", _record("train_cifar", cifar, tmp_path))
    assert (
        "CIFAR ResNet-20 on 50,000 synthetic 32x32 images" in text and "| L-GM / softmax | 1.25x | |" in text
    )


def test_robust_train_and_detect_scores_records(tmp_path):
    row = {
        "name": "mnist5k-robust: pgd 10 steps, push, 40 epochs, 8.3 min", "train_steps": 10, "seconds": 197.2,
        "clean": [493, 500], "clean_fpr": [28, 493], "pgd_train": [471, 500], "pgd40": [470, 500],
        "pgd100": [467, 500], "robust": [467, 500], "detect_or_correct": [497, 500],
    }  # fmt: skip
    rep = {"eps": 0.3, "limit": 500, "seed": 0, "threads": 2, "restarts": 3, "rows": [row]}
    table = _render("robust_train.table", _record("robust_train", rep, tmp_path)).splitlines()
    assert table[0] == "L-inf eps 0.3, 500 random test inputs (seed 0), CPU, 2 threads"
    assert table[-1] == (
        "| mnist5k-robust: pgd 10 steps, push, 40 epochs, 8.3 min | 98.6% [97.1, 99.3] | 5.7% [4.0, 8.1] | "
        "k=10: 94.2% [91.8, 95.9] | 94.0% [91.6, 95.8] | 93.4% [90.9, 95.3] | 93.4% [90.9, 95.3] | "
        "99.4% [98.3, 99.8] | 197 |"
    )
    cells = {
        "cw": {"auroc": 0.93791, "ci": [0.919, 0.955], "seen": False},
        "fgsm": {"auroc": 1.0, "ci": [1.0, 1.0], "seen": True},
    }
    scores = {
        "report": "reports/bench_detect", "n_attacked": 493, "attacks": ["cw", "fgsm"],
        "rows": [{"variant": "roc mode, fitted on fgsm + pgd", "clean_fpr": 0.047, "cells": cells}],
    }  # fmt: skip
    text = _render("detect_scores.table", _record("detect_scores", scores, tmp_path)).splitlines()
    assert "(493 attacked test inputs;" in text[0] and text[2] == "| variant | clean test FPR | cw | fgsm |"
    assert (
        text[-1]
        == "| roc mode, fitted on fgsm + pgd | 0.047 | 0.9379 [0.919, 0.955] | 1.0000 [1.000, 1.000] (seen) |"
    )


def test_stability_and_fingerprints_records(tmp_path):
    rep = {
        "setting": "diagonal + paper + learned priors, lam 1.0, var floor 0.001, var lr x0.1", "epochs": 30,
        "final_loss": -2.18934, "min_loss": -2.20141, "test_accuracy": 0.993, "variance": [0.84731, 0.85532, 0.91994],
        "finite": True, "non_finite": [],
    }  # fmt: skip
    row = _render("stability.table", _record("stability", rep, tmp_path)).splitlines()[-1]
    assert row == (
        "| diagonal + paper + learned priors, lam 1.0, var floor 0.001, var lr x0.1 | 30 | -2.1893 | -2.2014 | "
        "0.9930 | 0.8473 / 0.8553 / 0.9199 | yes |"
    )
    fp = {
        "n": 600, "changed": 200, "changes": ["Square step 5x5", "1-pixel shift"],
        "rows": [{"layout": "4x4 patches", "levels": 5, "max": 11, "p999": 7.2, "cells": [[42.0, 34.4], [50.0, 49.0]]}],
    }  # fmt: skip
    text = _render("fingerprints.table", _record("fingerprints", fp, tmp_path)).splitlines()
    assert text[0].startswith("600 random mnist5k digits (179700 distinct pairs); changes applied to 200")
    assert text[2] == (
        "| layout | levels | distinct pairs: max | 99.9th pct | Square step 5x5: median (5th pct) | "
        "1-pixel shift: median (5th pct) |"
    )
    assert text[-1] == "| 4x4 patches | 5 | 11 | 7 | 42 (34) | 50 (49) |"
