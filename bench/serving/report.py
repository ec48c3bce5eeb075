"""The tables of ``bench/serving/serve.py`` (load test, soak) and ``bench/serving/serve.py --protocols``, as functions of the
report.json each run writes: what the benchmark prints and what the results pages show are the same text.

A load report holds the model, the cores, the in-process ceilings measured through the run and one row per cell
(layout, concurrency, query policy: the median run by throughput, the range over the runs); a soak report the
wrk totals, the resident-memory samples and the query store's size; a protocols report one row per server,
format and concurrency. With ``--engines`` the rows carry their scoring engine (an engine column), the ceiling
is measured per engine, and a table gives, per cell, each engine's throughput and p50 as ratios to the first
engine's (median over the pairs of interleaved runs).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

Report = dict[str, Any]


def model_facts(det) -> dict[str, str]:
    """The served model as every serving report names it (dataset, backbone, input shape)."""
    return {
        "dataset": det.meta["dataset"]["name"],
        "backbone": det.meta["arch"]["backbone"],
        "shape": "x".join(map(str, det.input_shape)),
    }


def median_interval(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The distribution-free interval for a median from order statistics (the sign-test interval; e.g. Hollander
    & Wolfe, "Nonparametric Statistical Methods", 1999, section 3.6): the widest-inside pair (x_(k), x_(n+1-k))
    whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least ``level``; None when n is too small for any."""
    xs, n = sorted(xs), len(xs)
    best = None
    for k in range(1, n // 2 + 1):
        if 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n < level:
            break
        best = (xs[k - 1], xs[n - k])
    return best


def _ceiling_of(rep: Report, row: dict) -> float:
    """The in-process ceiling a row is compared with: its engine's when the run measured several."""
    per = rep["ceiling"].get("engines")
    return per[row["engine"]]["median"] if per and row.get("engine") in per else rep["ceiling"]["median"]


def engine_ceiling_lines(rep: Report) -> list[str]:
    """``--engines``: each engine's in-process ceiling, its ratio to the first engine's by round, and one image."""
    per = rep["ceiling"]["engines"]
    first = next(iter(per))
    parts = [
        f"{e} **{c['median']:.0f} images/s** ({min(c['all']):.0f}-{max(c['all']):.0f}; {c['one_thread']:.0f} at "
        f"1 thread; one image {c['one_image_ms']:.2f} ms at 1 thread)"
        for e, c in per.items()
    ]
    ratios = [
        f"{e} / {first} {statistics.median(c['ratios']):.2f}x ({min(c['ratios']):.2f}-{max(c['ratios']):.2f})"
        for e, c in per.items()
        if e != first
    ]
    n = len(per[first]["all"])
    return [
        f"In-process ceiling per engine (batch {rep['max_batch_size']}, {rep['cores']} threads; median of {n} "
        f"rounds spread over the run, each engine in every round): {'; '.join(parts)}."
        + (f" Ratio within each round: {'; '.join(ratios)}." if ratios else "")
    ]


def engine_ratio_table(rep: Report, cell: str) -> list[str]:
    """Per cell, each engine against the first one's run just before it: throughput and p50 ratios (median over
    the pairs, 95% distribution-free interval, range). ``cell``: the row field naming the cell beside the
    concurrency (``layout`` or ``format``)."""
    paired = [r for r in rep["rows"] if r.get("engine") and r.get("pair_ratio")]
    if not paired:
        return []
    lines = [
        "",
        "Engines, cell by cell: each run paired with the first engine's run just before it (the servers are up at "
        "once and their runs alternate, so the machine's drift hits both alike). Throughput ratio above 1 and p50 "
        "ratio below 1 favour the engine; median over the pairs, its 95% distribution-free interval ('-' with too "
        "few pairs) and the range.",
        "",
        f"| {cell} | concurrency | engines | pairs | throughput ratio | 95% interval | range | p50 ratio "
        "| 95% interval | range |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in paired:
        cols = []
        for key in ("pair", "p50_pair"):
            med, lo, hi, base = r[f"{key}_ratio"]
            ci = median_interval(r.get(f"{key}_ratios") or [])
            cols.append(f"{med:.3f} | {f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'} | {lo:.3f}-{hi:.3f}")
        base = r["pair_ratio"][3]
        lines.append(
            f"| {r[cell]} | {r['concurrency']} | {r['engine']} / {base} | {len(r.get('pair_ratios') or [])} | "
            f"{cols[0]} | {cols[1]} |"
        )
    return lines


def load_table(rep: Report) -> str:
    """The load test: model and ceiling, how a cell is measured, one row per layout, concurrency and policy."""
    m, d, c = rep["model"], rep["default_layout"], rep["ceiling"]
    ceil = c["median"]
    lines = [
        f"Model: {m['dataset']} {m['backbone']} (input {m['shape']}), CPU ({rep['cores']} cores); max_batch_size "
        f"{rep['max_batch_size']}; one real test digit per request (POST /v1/predict, JSON base64 PNG); client: "
        f"wrk on the same machine. lgm serve's default layout here: {d['workers']} worker(s) x {d['threads']} "
        "torch thread(s).",
        "",
        *(
            engine_ceiling_lines(rep)
            if c.get("engines")
            else [
                f"In-process ceiling (Detector.score, batch {rep['max_batch_size']}, {rep['cores']} torch threads): "
                f"**{ceil:.0f} images/s** (median of {len(c['all'])} measurements spread over the run, "
                f"{min(c['all']):.0f}-{max(c['all']):.0f}); {c['one_thread']:.0f} images/s at 1 thread."
            ]
        ),
        "",
        f"Each cell: {rep['repeats']} runs of {rep['duration']} s after {rep['warmup']} s of warm-up; the median "
        "run by throughput (its latencies and CPU) and the range of throughput over the runs. CPU: CPU-seconds "
        "per second (1.00 = one core busy).",
        "",
    ]
    by_engine = any(r.get("engine") for r in rep["rows"])
    engine_col = ("| engine ", "|---") if by_engine else ("", "")
    lines += [
        f"| workers x threads {engine_col[0]}| concurrency | throughput (req/s) | range | % of ceiling | p50 (ms) "
        "| p99 (ms) | server CPU | client CPU | errors |",
        f"|---{engine_col[1]}|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        lo, hi = r["range"]
        name = r["layout"]
        label = (name if name != "default" else f"{d['workers']}x{d['threads']} (default)") + (
            f", query_policy={r['policy']}" if r.get("policy") else ""
        )
        label += f" | {r.get('engine') or '-'}" if by_engine else ""
        lines.append(
            f"| {label} | {r['concurrency']} | {r['rps']:.0f} | {lo:.0f}-{hi:.0f} | "
            f"{100 * r['rps'] / _ceiling_of(rep, r):.0f}% | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['server_cpu']:.2f} | {r['client_cpu']:.2f} | {r['errors']} |"
        )
    lines += engine_ratio_table(rep, "layout")
    paired = [r for r in rep["rows"] if r.get("pair_ratio") and not r.get("engine")]
    if paired:
        lines += [
            "",
            "Throughput as a ratio to the other server's run just before it (the two are up at once and their runs "
            "alternate, so the machine's drift hits both alike): median over the pairs, its 95% distribution-free "
            "interval (order statistics; '-' where the run kept no pairs or had too few), and the range.",
            "",
            "| workers x threads | concurrency | query_policy | pairs | ratio (median) | 95% interval | range |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in paired:
            med, lo, hi, base = r["pair_ratio"]
            pairs = r.get("pair_ratios") or []
            ci = median_interval(pairs) if pairs else None
            lines.append(
                f"| {r['layout']} | {r['concurrency']} | {r['policy']} / {base} | {len(pairs) or '-'} | {med:.3f} "
                f"| {f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'} | {lo:.3f}-{hi:.3f} |"
            )
    return "\n".join(lines)


def soak_text(rep: Report) -> str:
    """The soak: requests, errors, latency, resident memory over time, and the query store at the end."""
    rss = [mib for _, mib in rep["rss"]]
    peak_t, peak = max(rep["rss"], key=lambda s: s[1])
    tenth = max(1, len(rss) // 10)
    lines = [
        f"Soak: {rep['seconds']} s at concurrency {rep['concurrency']}, server layout {rep['layout']}: "
        f"{rep['requests']} requests ({rep['rps']:.0f}/s), {rep['errors']} errors (status {rep['status']}, "
        f"timeouts {rep['timeout']}, socket {rep['socket']}); p50 {rep['p50']:.1f} ms, p99 {rep['p99']:.1f} ms.",
        f"Server resident memory (all processes, MiB), sampled every 5 s: start {rss[0]:.1f}, peak {peak:.1f} (at "
        f"{peak_t:.0f} s), end {rss[-1]:.1f}; mean of the first tenth {statistics.mean(rss[:tenth]):.1f}, of the "
        f"last tenth {statistics.mean(rss[-tenth:]):.1f}.",
    ]
    s = rep.get("store")
    if s:
        lines.append(
            f"Query history at the end (SQLite, the server's default store): {s['queries']} queries of "
            f"{s['clients']} client(s), {s['hashes']} fingerprint hashes, {s['bytes'] / 2**20:.1f} MiB on disk "
            "(database + write-ahead log)."
        )
    return "\n".join(lines)


def protocols_table(rep: Report) -> str:
    """``--protocols``: the set-up, the ceiling and one row per server, format and concurrency."""
    m, d, c = rep["model"], rep["default_layout"], rep["ceiling"]
    ceil = c["median"]
    lines = [
        f"Model: {m['dataset']} {m['backbone']} (input {m['shape']}), CPU ({rep['cores']} cores); one real test "
        f"digit per request; max batch {rep['max_batch_size']}, max wait {rep['max_wait_ms']} ms for every server. "
        f"lgm serve: its default layout here, {d['workers']} worker(s) x {d['threads']} torch thread(s); LitServe: "
        f"{rep['peer_workers']} workers x 1 thread; MLServer: its own process, 1 torch thread.",
        *(
            engine_ceiling_lines(rep)
            if c.get("engines")
            else [
                f"In-process ceiling (Detector.score, batch {rep['max_batch_size']}, {rep['cores']} torch threads): "
                f"**{ceil:.0f} images/s** (median of {len(c['all'])} measurements spread over the run, "
                f"{min(c['all']):.0f}-{max(c['all']):.0f})."
            ]
        ),
        f"Each cell: {rep['repeats']} run(s) of {rep['duration']} s after {rep['warmup']} s of warm-up; the median "
        "run by throughput and the range over the runs. CPU: CPU-seconds per second (1.00 = one core busy).",
        "",
    ]
    by_engine = any(r.get("engine") for r in rep["rows"])
    engine_col = ("| engine ", "|---") if by_engine else ("", "")
    lines += [
        f"| server {engine_col[0]}| format | concurrency | req/s | range | % of ceiling | p50 (ms) | p99 (ms) "
        "| server CPU | client CPU | errors |",
        f"|---{engine_col[1]}|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        lo, hi = r["range"]
        server = r["server"] + (f" | {r.get('engine') or '-'}" if by_engine else "")
        lines.append(
            f"| {server} | {r['format']} | {r['concurrency']} | {r['rps']:.0f} | {lo:.0f}-{hi:.0f} | "
            f"{100 * r['rps'] / _ceiling_of(rep, r):.0f}% | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['server_cpu']:.2f} | {r['client_cpu']:.2f} | {r['errors']} |"
        )
    lines += engine_ratio_table(rep, "format")
    return "\n".join(lines)


def protocols_targets(rep: Report) -> str:
    """``--protocols``' targets: 1.5x the best peer at concurrency 32, 75% of the ceiling, p50 < 2 ms, 0 errors."""
    rows = rep["rows"]

    def name(r: dict) -> str:  # lgm, or lgm (onnxruntime) with --engines
        return r["server"] + (f" ({r['engine']})" if r.get("engine") else "")

    cell = {(name(r), r["format"], r["concurrency"]): r for r in rows}
    ours_names = list(dict.fromkeys(name(r) for r in rows if r["server"] == "lgm"))
    out = []
    for fmt in ("v1", "v2 json", "grpc"):
        peers = [cell[k] for k in cell if k[1] == fmt and k[2] == 32 and not k[0].startswith("lgm")]
        for lgm in ours_names:
            ours = cell.get((lgm, fmt, 32))
            if ours and peers:
                best = max(peers, key=lambda r: r["rps"])
                out.append(
                    f"- c=32, {fmt}: {lgm} {ours['rps']:.0f} req/s = {ours['rps'] / best['rps']:.2f}x the best "
                    f"peer ({best['server']}, {best['rps']:.0f}); target 1.5x"
                )
    for lgm in ours_names:
        for fmt in ("v2 binary", "grpc"):
            at = [r for r in rows if name(r) == lgm and r["format"] == fmt]
            if at:
                top = max(at, key=lambda r: r["rps"])
                out.append(
                    f"- {lgm} {fmt}: best {top['rps']:.0f} req/s (c={top['concurrency']}) = "
                    f"{100 * top['rps'] / _ceiling_of(rep, top):.0f}% of the ceiling; target 75%"
                )
        one = cell.get((lgm, "v2 binary", 1))
        if one:
            out.append(f"- {lgm} v2 binary, c=1: p50 {one['p50']:.2f} ms; target < 2 ms")
    out.append(f"- errors over every cell: {sum(r['errors'] for r in rows)}; target 0")
    return "\n".join(out)
