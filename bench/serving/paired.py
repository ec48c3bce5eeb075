"""Servers up at once, their runs interleaved: what ``bench/serving/serve.py`` uses to compare two settings of
``lgm serve`` (query policies, scoring engines) on a machine whose speed drifts (2x over minutes on a shared
2-core host). Every server runs one cell in turn, A B A B ..., so that the drift hits them alike; each run is
then paired with the base server's run just before it, and a cell reports the median run, the range over runs,
and the ratios to the base within each pair (throughput, and median latency).

    runs = interleave(["torch", "onnxruntime"], cell, repeats=5)
    row = {**summarize(runs["onnxruntime"]), **pair_ratios(runs["onnxruntime"], runs["torch"], "torch")}
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Sequence


def interleave(
    keys: Sequence[Hashable],
    cell: Callable[[Hashable], dict],
    repeats: int,
    warm: Callable[[Hashable], object] | None = None,
) -> dict[Hashable, list[dict]]:
    """``repeats`` rounds of ``cell(key)`` for every key in order (one run each per round); ``warm(key)`` once
    per key before the first round. Each run is a dict with at least ``rps`` and ``p50``."""
    if warm is not None:
        for key in keys:
            warm(key)
    runs: dict[Hashable, list[dict]] = {key: [] for key in keys}
    for _ in range(max(1, repeats)):
        for key in keys:
            runs[key].append(cell(key))
    return runs


def summarize(runs: list[dict]) -> dict:
    """The median run by throughput (its latencies and CPU), the range of throughput, the errors of every run."""
    rs = sorted(runs, key=lambda r: r["rps"])
    med = dict(rs[len(rs) // 2])
    med["range"] = (rs[0]["rps"], rs[-1]["rps"])
    med["errors"] = sum(r["errors"] for r in rs)
    return med


def pair_ratios(runs: list[dict], base: list[dict], base_name: str | None) -> dict:
    """Each run against the base server's run of the same round: throughput ``pair_ratio`` (median, lowest,
    highest, base name) with every pair in ``pair_ratios``, and the same for the median latency
    (``p50_pair_ratio``, ``p50_pair_ratios``: below 1 is faster than the base)."""
    rps = sorted(a["rps"] / b["rps"] for a, b in zip(runs, base, strict=True))
    p50 = sorted(a["p50"] / b["p50"] for a, b in zip(runs, base, strict=True))
    return {
        "pair_ratio": (statistics.median(rps), rps[0], rps[-1], base_name),
        "pair_ratios": rps,  # every pair, for the median's interval (bench/serving/report.py)
        "p50_pair_ratio": (statistics.median(p50), p50[0], p50[-1], base_name),
        "p50_pair_ratios": p50,
    }


def rows(
    runs: dict[Hashable, list[dict]], base: Hashable | None, name: Callable[[Hashable], str | None]
) -> list:
    """One summarized row per key in order, each but the base's paired with the base's runs (no pairs when
    ``base`` is None)."""
    out = []
    for key, rs in runs.items():
        row = summarize(rs)
        if base is not None and key != base:
            row.update(pair_ratios(rs, runs[base], name(base)))
        out.append((key, row))
    return out
