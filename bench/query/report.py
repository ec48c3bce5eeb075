"""Tables of bench/query/attacks.py: per-attack summaries (success and flags against queries, Wilson intervals),
the K-keys replay, and the offline sweep of fingerprints and thresholds over recorded queries."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np

from bench.query.oracle import HistorySim
from detector.harness.metrics import wilson as harness_wilson
from service.settings import ServeSettings
from service.stateful.fingerprint import FingerprintConfig, Fingerprinter

CHECKPOINTS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k / n (detector/harness/metrics.py; (0, 1) when n is 0)."""
    return tuple(harness_wilson(k, n) or (0.0, 1.0))  # type: ignore[return-value]


def pct(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / max(1, n):.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"


def med(v: list[int]) -> str:
    return f"{statistics.median(v):.0f}" if v else "-"


def summarise(name: str, runs: list[dict], budget: int) -> dict:
    n = len(runs)
    succ = [r["success"] for r in runs if r["success"] is not None]
    flags = [r["flag"] for r in runs if r["flag"] is not None]
    before = sum(
        1 for r in runs if r["flag"] is not None and (r["success"] is None or r["flag"] <= r["success"])
    )
    block_succ = sum(
        1 for r in runs if r["success"] is not None and (r["flag"] is None or r["success"] < r["flag"])
    )
    curve = {q: sum(1 for s in succ if s <= q) / n for q in CHECKPOINTS if q <= budget}
    return {
        "attack": name,
        "n": n,
        "budget": budget,
        "success": len(succ),
        "median_queries_to_success": statistics.median(succ) if succ else None,
        "flagged": len(flags),
        "flagged_before_success": before,
        "median_queries_to_flag": statistics.median(flags) if flags else None,
        "success_under_block": block_succ,
        "curve": curve,
        "queries_mean": statistics.mean(r["queries"] for r in runs),
    }


def _q(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def attack_table(rows: list[dict]) -> str:
    """Per attack: success without the defence, flags, and success under ``block`` (Wilson intervals)."""
    lines = [
        "| attack | digits | budget | success, no defence | median queries to success | flagged before success "
        "| median queries to flag | success under `block` |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['n']} | {r['budget']} | {pct(r['success'], r['n'])} | "
            f"{_q(r['median_queries_to_success'])} | {pct(r['flagged_before_success'], r['n'])} | "
            f"{_q(r['median_queries_to_flag'])} | {pct(r['success_under_block'], r['n'])} |"
        )
    return "\n".join(lines)


def curve_table(rows: list[dict]) -> str:
    """Per attack: the share of digits broken within each number of queries (no defence); '-' past a budget."""
    qs = sorted({int(q) for r in rows for q in r["curve"]})
    lines = ["| attack | " + " | ".join(f"<= {q}" for q in qs) + " |", "|---|" + "---:|" * len(qs)]
    for r in rows:
        curve = {int(q): v for q, v in r["curve"].items()}  # JSON keys are strings
        cells = [f"{100 * curve[q]:.0f}%" if q in curve else "-" for q in qs]
        lines.append(f"| {r['attack']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_attack_table(rows: list[dict]) -> None:
    print(attack_table(rows))
    print()
    print("Success rate (no defence) against queries:")
    print()
    print(curve_table(rows))
    print()


def sybil_table(rows: list[dict]) -> str:
    """The K-keys replay: success under ``block`` and the queries until every key is flagged."""
    lines = [
        "| attack | keys | success under `block` | median queries until every key is flagged |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['keys']} | {pct(r['success_under_block'], r['n'])} | "
            f"{med(r['all_keys_flagged_at'])} |"
        )
    return "\n".join(lines)


def benign_table(rows: list[dict]) -> str:
    """Benign clients: how many were flagged, and at which query."""
    lines = [
        "| benign traffic | clients | queries | clients flagged | flagged at query |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        at = ", ".join(map(str, r["flagged"][:10])) or "-"
        lines.append(f"| {r['scenario']} | {r['clients']} | {r['queries']} | {len(r['flagged'])} | {at} |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    """The offline fingerprint and threshold sweep (``sweep``'s rows)."""
    if not rows:
        return "No sweep in this report."
    r0 = rows[0]
    lines = [
        "Fingerprint and threshold sweep (offline replay of the recorded queries; "
        f"{r0['attacks']} attack runs, {r0['blinded']} blinded runs, {r0['benign']} benign clients):",
        "",
        "| levels | patch | shared hashes T | near-duplicates M | attacks flagged before success | median queries "
        "to flag | blinded attacks flagged before success | benign clients flagged |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        blinded = pct(r["blinded_before"], r["blinded"]) if r["blinded"] else "-"
        lines.append(
            f"| {r['levels']} | {r['patch']} | {r['T']} | {r['M']} | {pct(r['flagged_before'], r['attacks'])} | "
            f"{_q(r['median_flag'])} | {blinded} | {r['benign_flagged']} |"
        )
    return "\n".join(lines)


def sybil_rows(name: str, runs: list[dict], sim_args: tuple, ks=(1, 10, 100)) -> list[dict]:
    """Queries spread round robin over K keys, replayed with the defence's rule: success under ``block`` when
    the successful query's key was not yet flagged."""
    out = []
    for k in ks:
        won, flagged_all = 0, []
        for r in runs:
            sim = HistorySim(*sim_args)
            blocked: set[int] = set()
            ok = False
            for q, x in enumerate(r["sent"], start=1):
                key = q % k
                if key in blocked:
                    continue
                if sim.add(f"k{key}", x):
                    blocked.add(key)
                    if len(blocked) == k:
                        flagged_all.append(q)
                    continue
                if r["success"] == q:
                    ok = True
                    break
            won += ok
        out.append(
            {
                "attack": name,
                "keys": k,
                "n": len(runs),
                "success_under_block": won,
                "all_keys_flagged_at": flagged_all,
            }
        )
    return out


def HistorySimFirstFlag(sim_args: tuple, sent: list[np.ndarray]) -> int | None:  # noqa: N802
    sim = HistorySim(*sim_args)
    for q, x in enumerate(sent, start=1):
        if sim.add("c", x):
            return q
    return None


def max_shared(fp: Fingerprinter, sent: list[np.ndarray]) -> np.ndarray:
    """Per query: the most hashes it shares with one earlier query of the stream (-1 for an exact repeat)."""
    if not sent:
        return np.zeros(0, dtype=int)
    hashes = fp(np.stack(sent))
    index: dict[int, list[int]] = {}
    seen: set[bytes] = set()
    out = np.zeros(len(sent), dtype=int)
    n = 0
    for q, (x, hs) in enumerate(zip(sent, hashes, strict=True)):
        key = x.tobytes()
        if key in seen:
            out[q] = -1
            continue
        seen.add(key)
        hits = [k for h in hs.tolist() for k in index.get(h, ())]
        out[q] = int(np.bincount(hits).max()) if hits else 0
        for h in hs.tolist():
            index.setdefault(h, []).append(n)
        n += 1
    return out


def first_flag(ms: np.ndarray, t: int, m: int) -> int | None:
    """1-based query at which the m-th near-duplicate (>= t shared hashes) arrives."""
    dup = np.flatnonzero(ms >= t)
    return int(dup[m - 1]) + 1 if len(dup) >= m else None


SWEEP_CONFIGS = ((5, 4), (3, 4), (4, 4), (5, 3), (3, 5))  # (levels, patch)


def sweep(settings: ServeSettings, all_runs: dict[str, list[dict]], ben: list[dict]) -> list[dict]:
    """Offline replay of other fingerprints and thresholds on the recorded queries: attacked digits flagged
    before success (non-adaptive attacks; blinded ones apart) and benign digit-stream clients flagged. The
    attackers ignore the flags (the server ran the ``flag`` policy), so the replay is exact for them; OARS
    adapted to the deployed fingerprint and is left out."""
    plain = [
        r for name, runs in all_runs.items() if "blinded" not in name and "OARS" not in name for r in runs
    ]
    blinded = [r for name, runs in all_runs.items() if "blinded" in name for r in runs]
    benign_streams = [b for b in ben if b["scenario"].startswith("digits")]
    rows = []
    for levels, patch in SWEEP_CONFIGS:
        fp = Fingerprinter(
            FingerprintConfig(levels, patch, settings.query_fingerprint_hashes, settings.query_hash_key)
        )
        ms_plain = [max_shared(fp, r["sent"]) for r in plain]
        ms_blind = [max_shared(fp, r["sent"]) for r in blinded]
        ms_ben = [max_shared(fp, b["sent"]) for b in benign_streams]
        for t in (10, 15, 20, 25):
            for m in (1, 3, 5):

                def before(runs, seqs, t=t, m=m):
                    k = 0
                    for r, ms in zip(runs, seqs, strict=True):
                        f = first_flag(ms, t, m)
                        k += f is not None and (r["success"] is None or f <= r["success"])
                    return k

                flags = [f for ms in ms_plain if (f := first_flag(ms, t, m)) is not None]
                nb = sum(first_flag(ms, t, m) is not None for ms in ms_ben)
                bp, bb = before(plain, ms_plain), before(blinded, ms_blind)
                rows.append(
                    {
                        "levels": levels,
                        "patch": patch,
                        "T": t,
                        "M": m,
                        "attacks": len(plain),
                        "flagged_before": bp,
                        "median_flag": statistics.median(flags) if flags else None,
                        "blinded": len(blinded),
                        "blinded_before": bb,
                        "benign": len(ms_ben),
                        "benign_flagged": nb,
                    }
                )
    print(sweep_table(rows))
    print()
    return rows


def command_of(args: dict) -> str:
    """The ``bench/query/attacks.py`` line that a report's saved ``args`` stand for (defaults left out)."""
    defaults = {"scenarios": "attacks,adaptive,benign,sweep", "n": 100, "n_adaptive": 50, "square_budget": 1000,
                "hsj_budget": 2000, "eps": 0.3, "parallel": 4, "workers": 2, "seed": 0, "seconds_per_attack": 0,
                "out": None}  # fmt: skip
    parts = [".venv/bin/python", "bench/query/attacks.py", "--artifact", str(args["artifact"])]
    for k, v in args.items():
        if k in defaults and k != "out" and v != defaults[k]:
            parts += [f"--{k.replace('_', '-')}", f"{v:g}" if isinstance(v, float) else str(v)]
    return " ".join(parts)


def rebuild(saved: Path, out: Path) -> Path:
    """Publish a run saved before ``bench/query/attacks.py`` wrote provenance: copy its JSON (the per-attack
    summaries, no query) to ``out/report.json`` and stamp it with the saved file's time and this machine,
    saying that the commit was not recorded. Nothing is re-attacked."""
    import datetime as dt
    import json

    from bench import provenance
    from training.artifacts import atomic_write_json

    report = json.loads(saved.read_text())
    if not isinstance(report, dict) or "attacks" not in report or "args" not in report:
        raise SystemExit(f"{saved}: not a bench/query/attacks.py report (no 'attacks' and 'args')")
    stamp = provenance.stamp(
        command_of(report["args"]),
        report.get("seconds"),
        {
            "note": "Rebuilt from the run's saved JSON (written before the benchmark stamped its runs): the date"
            " is that file's time (the run ended no later), the commit was not recorded, the machine is the one that rebuilt it (the"
            " same 2-core machine ran the attacks)."
        },
        {"commit": None, "dirty": None},
    )
    mtime = dt.datetime.fromtimestamp(saved.stat().st_mtime, dt.timezone.utc).replace(microsecond=0)
    stamp["date"] = mtime.isoformat()
    atomic_write_json(out / "report.json", report)
    atomic_write_json(out / provenance.FILE, stamp)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(
        description="Tables of bench/query/attacks.py; `rebuild` publishes a saved run"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "rebuild", help="a saved report JSON of an earlier run -> DIR/report.json + provenance"
    )
    r.add_argument("saved", type=Path)
    r.add_argument("out", type=Path)
    a = ap.parse_args()
    print(f"wrote {rebuild(a.saved, a.out)}/report.json", file=sys.stderr)
