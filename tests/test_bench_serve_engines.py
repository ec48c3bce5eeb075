"""bench/serving/serve.py --engines: the servers it starts run the engines asked for (real ``lgm serve`` command
lines), each run is paired with the first engine's run of the same round, the in-process scorers are the two
engines of the same detector, and the report shows an engine column and the ratios per cell."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_service_common import detector_fixture, served_artifact_fixture  # noqa: F401

from bench.serving import paired
from bench.serving import report as serve_report

_MODEL = {"dataset": "mnist", "backbone": "mnist_cnn", "shape": "1x28x28"}


def test_interleave_alternates_the_servers_and_warms_each_first():
    calls = []
    runs = paired.interleave(
        ["torch", "onnxruntime"],
        lambda k: calls.append(("run", k)) or {"rps": 1.0, "p50": 1.0, "errors": 0},
        repeats=3,
        warm=lambda k: calls.append(("warm", k)),
    )
    assert calls == [
        ("warm", "torch"),
        ("warm", "onnxruntime"),
        *[("run", "torch"), ("run", "onnxruntime")] * 3,
    ]
    assert {k: len(v) for k, v in runs.items()} == {"torch": 3, "onnxruntime": 3}


def test_rows_pair_each_run_with_the_base_run_of_its_round():
    def run(rps: float, p50: float) -> dict:
        return {"rps": rps, "p50": p50, "errors": 0}

    runs = {
        "torch": [run(100, 4.0), run(50, 8.0), run(80, 5.0)],  # the machine slowed in round 2
        "onnxruntime": [run(150, 2.0), run(75, 4.0), run(160, 2.0)],
    }
    (t_key, t_row), (o_key, o_row) = paired.rows(runs, "torch", str)
    assert (t_key, o_key) == ("torch", "onnxruntime") and "pair_ratio" not in t_row
    assert o_row["pair_ratios"] == [1.5, 1.5, 2.0] and o_row["pair_ratio"] == (1.5, 1.5, 2.0, "torch")
    assert o_row["p50_pair_ratios"] == [0.4, 0.5, 0.5] and o_row["p50_pair_ratio"][0] == 0.5
    assert o_row["rps"] == 150 and o_row["range"] == (75, 160)  # the median run, and the range
    assert all("pair_ratio" not in row for _, row in paired.rows(runs, None, str))


def test_engine_names_are_checked():
    from bench.serving.common import engine_list

    assert engine_list("") is None and engine_list("torch, onnxruntime") == ["torch", "onnxruntime"]
    for bad in ("torch,tensorrt", "torch,torch"):
        with pytest.raises(SystemExit, match="--engines"):
            engine_list(bad)


def _started_command(monkeypatch: pytest.MonkeyPatch, start) -> list[str]:  # noqa: ANN001
    """The command line a benchmark's server start runs (no process started: Popen and readiness stubbed)."""
    import subprocess

    import httpx

    seen = []

    class Proc:
        pid, returncode = 1, None

        def __init__(self, cmd, **kw):  # noqa: ANN001, ANN003
            seen.append(cmd)

        def poll(self) -> None:
            return None

    monkeypatch.setattr(subprocess, "Popen", Proc)
    monkeypatch.setattr(httpx, "get", lambda *a, **k: httpx.Response(200))
    start()
    return seen[0]


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", None])
def test_each_server_is_a_real_lgm_serve_command_with_its_engine(engine, monkeypatch, tmp_path):
    from bench.serving import protocols
    from bench.serving.serve import start_server
    from service.cli import build_parser

    args = argparse.Namespace(max_batch_size=64, max_wait_ms=1.0, peer_workers=2)
    starts = [
        lambda: start_server(tmp_path, 9, None, argparse.Namespace(**vars(args)), None, engine),
        lambda: protocols.start("lgm", tmp_path, args, engine),
    ]
    for start in starts:
        cmd = _started_command(monkeypatch, start)
        assert cmd[1:3] == ["-m", "service"]  # python -m service: the `lgm` command
        parsed = build_parser().parse_args(cmd[3:])
        assert parsed.command == "serve" and ("--engine" in cmd) == (engine is not None)
        if engine is not None:
            assert parsed.engine == engine


def test_the_scorers_are_the_same_detector_under_both_engines(detector):
    pytest.importorskip("onnxruntime")
    from bench.serving.engines import scorer

    x = torch.rand(16, *detector.input_shape, generator=torch.Generator().manual_seed(0))
    ref = detector.score(x)
    got = scorer(detector, "onnxruntime", 1)(x)  # the outputs of detector/onnx_graph.py, in order
    assert (got[0] == ref.pred.numpy()).all()
    assert scorer(detector, "torch", 1)(x).pred.equal(ref.pred)
    with pytest.raises(ValueError, match="engine"):
        scorer(detector, "tensorrt", 1)


def _engine_ceiling() -> dict:
    one = {"one_thread": 1800.0, "one_image_ms": 2.1}
    return {
        "median": 900.0,
        "all": [850.0, 950.0],
        "one_thread": 1800.0,
        "engines": {
            "torch": {"median": 900.0, "all": [850.0, 950.0], "ratios": [1.0, 1.0], **one},
            "onnxruntime": {
                "median": 1700.0,
                "all": [1600.0, 1800.0],
                "ratios": [1.8, 2.0],
                "one_thread": 2500.0,
                "one_image_ms": 0.5,
            },
        },
    }


def _row(engine: str, rps: float, p50: float, **kw) -> dict:
    return {
        "engine": engine, "concurrency": 32, "rps": rps, "range": [rps, rps], "p50": p50, "p99": 90.0,
        "server_cpu": 1.5, "client_cpu": 0.05, "errors": 0, **kw,
    }  # fmt: skip


PAIRED = {
    "pair_ratio": [1.5, 1.4, 1.7, "torch"],
    "pair_ratios": [1.4, 1.45, 1.5, 1.55, 1.6, 1.65, 1.7],
    "p50_pair_ratio": [0.6, 0.5, 0.7, "torch"],
    "p50_pair_ratios": [0.5, 0.55, 0.6, 0.6, 0.62, 0.65, 0.7],
}


def test_load_report_has_an_engine_column_and_the_ratios_per_cell():
    rep = {
        "benchmark": "serve", "mode": "load", "model": _MODEL, "cores": 2, "max_batch_size": 64,
        "default_layout": {"workers": 2, "threads": 1}, "ceiling": _engine_ceiling(),
        "engines": ["torch", "onnxruntime"], "repeats": 7, "duration": 4, "warmup": 1,
        "rows": [
            {"layout": "default", "policy": None, **_row("torch", 800.0, 36.0)},
            {"layout": "default", "policy": None, **_row("onnxruntime", 1200.0, 21.6, **PAIRED)},
        ],
    }  # fmt: skip
    lines = serve_report.load_table(rep).splitlines()
    assert "| workers x threads | engine | concurrency |" in "\n".join(lines)
    # each row against its own engine's ceiling: 800 / 900, 1200 / 1700
    assert "| 2x1 (default) | torch | 32 | 800 | 800-800 | 89% | 36.00 |" in "\n".join(lines)
    assert "| 2x1 (default) | onnxruntime | 32 | 1200 | 1200-1200 | 71% | 21.60 |" in "\n".join(lines)
    assert (
        "| default | 32 | onnxruntime / torch | 7 | 1.500 | 1.400-1.700 | 1.400-1.700 | 0.600 | 0.500-0.700 "
        "| 0.500-0.700 |" in lines
    )
    assert "onnxruntime / torch 1.90x (1.80-2.00)" in lines[2] and "one image 0.50 ms" in lines[2]
    assert "query_policy" not in "\n".join(lines[lines.index("") + 1 :])  # no policy table for engine pairs


def test_protocols_report_names_the_engine_of_each_lgm_row():
    rep = {
        "mode": "protocols", "model": _MODEL, "cores": 2, "max_batch_size": 64, "max_wait_ms": 1.0,
        "peer_workers": 2, "default_layout": {"workers": 2, "threads": 1}, "ceiling": _engine_ceiling(),
        "repeats": 7, "duration": 3, "warmup": 1,
        "rows": [
            {"server": "lgm", "format": "v2 binary", **_row("torch", 800.0, 3.3, concurrency=1)},
            {"server": "lgm", "format": "v2 binary", **_row("onnxruntime", 1500.0, 1.4, concurrency=1, **PAIRED)},
        ],
    }  # fmt: skip
    table = serve_report.protocols_table(rep)
    assert "| lgm | onnxruntime | v2 binary | 1 | 1500 | 1500-1500 | 88% | 1.40 |" in table
    assert "| v2 binary | 1 | onnxruntime / torch | 7 | 1.500 |" in table
    targets = serve_report.protocols_targets(rep).splitlines()
    assert "- lgm (torch) v2 binary, c=1: p50 3.30 ms; target < 2 ms" in targets
    assert "- lgm (onnxruntime) v2 binary, c=1: p50 1.40 ms; target < 2 ms" in targets


def test_without_engines_the_ceiling_is_that_of_the_engine_lgm_serve_defaults_to(detector, monkeypatch):
    """The servers' default engine is ``auto``; the ceiling measures the engine it resolves to on the CPU."""
    from bench.serving.common import Ceilings
    from service.onnx_engine import ENGINES
    from service.settings import ServeSettings

    x = torch.rand(8, *detector.input_shape, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr("bench.serving.common.engine_ceilings", lambda *a: dict.fromkeys(a[4], 1.0))
    c = Ceilings(detector, x, 4, 1, None)
    assert c.engines == [ServeSettings(device="cpu").resolved_engine()] and c.engines[0] in ENGINES
