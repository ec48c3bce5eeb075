"""The tables of ``bench/detection/robust.py``, from its ``lgm evaluate`` reports: what the benchmark prints and what the
results pages show are the same functions of the same reports.

``reports`` maps each evaluation's folder name under ``reports/bench_robust/`` to its report.json:
``robust_eps0.3``, ``quick_eps0.3``, ``robust_eps0.2``, ``robust_eps0.1`` (the robust suite) and
``sanity_eps0.4`` .. ``sanity_eps0.6`` (white-box attacks only, against gradient masking). A table skips what a
run did not measure.

detect-or-correct is Tramer et al. (2020)'s accuracy at a fixed clean FPR: the share of attacked inputs still
classified correctly or flagged at the deployed threshold, taken per input over the detector-aware attacks.
"""

from __future__ import annotations

import re
from typing import Any

from detector.harness.baselines import BASELINES

DETECTORS = ("lgm", *BASELINES)  # the report's columns, from the baseline registry
WHITE_BOX = ("pgd", "apgd", "apgd_dlr")
SUITE = ("robust_eps0.3", "quick_eps0.3", "robust_eps0.2", "robust_eps0.1")
TARGET = 0.93  # lgm detect-or-correct at eps 0.3, robust model

Reports = dict[str, dict[str, Any]]


def ci(m: dict[str, Any], key: str) -> str:
    c = m.get(key + "_ci")
    return f"{m[key]:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c else f"{m[key]:.3f}"


def _eps(key: str) -> float:
    return float(re.search(r"eps([\d.]+)$", key).group(1))


def summary_table(reports: Reports) -> str:
    """Per model and eps: clean figures, lgm robust accuracy, every detector's detect-or-correct."""
    lines = [
        "| model, eps | clean acc | lgm clean FPR | lgm robust acc | " + " | ".join(DETECTORS) + " |",
        "|---|---:|---:|---|" + "---|" * len(DETECTORS),
    ]
    for key in (k for k in SUITE if k in reports):
        rep = reports[key]
        worst = rep["per_input_worst"]
        ada = worst.get("adaptive", worst["all"])["detectors"]
        cells = [ci(ada[d], "detect_or_correct") if d in ada else "-" for d in DETECTORS]
        label = f"{key.split('_')[0]}, {_eps(key)} ({rep['n_attacked']} attacked)"
        lines.append(
            f"| {label} | {rep['clean_accuracy']:.3f} | {rep['clean_fpr']['lgm']:.3f} | "
            f"{ci(worst['all']['detectors']['lgm'], 'robust_accuracy')} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def attack_table(rep: dict[str, Any]) -> str:
    """Per attack of one report: success on each network, lgm detect-or-correct and robust accuracy."""
    lines = [
        "| attack | success (lgm / twin) | lgm detect-or-correct | lgm robust accuracy | median Linf |",
        "|---|---|---|---|---:|",
    ]
    for name, a in rep["attacks"].items():
        m, twin = a["detectors"]["lgm"], a["detectors"].get("msp")
        twin_rate = f"{twin['success_rate']:.3f}" if twin else "-"
        lines.append(
            f"| {name} | {a['success_rate']:.3f} / {twin_rate} | {ci(m, 'detect_or_correct')} | "
            f"{ci(m, 'robust_accuracy')} | {a['median_linf'] or 0:.3f} |"
        )
    return "\n".join(lines)


def sanity_table(reports: Reports) -> str:
    """White-box success on the robust model's network and its twin, by eps: should rise to ~100%."""
    rows = sorted(
        (k for k in reports if k.startswith(("robust_eps", "sanity_eps"))),
        key=_eps,
    )
    attacks = [a for a in WHITE_BOX if any(a in reports[k]["attacks"] for k in rows)]
    lines = [
        "| eps | " + " | ".join(f"{a} success (lgm / twin)" for a in attacks) + " |",
        "|---:|" + "---|" * len(attacks),
    ]
    for k in rows:
        cells = []
        for a in attacks:
            v = reports[k]["attacks"].get(a)
            twin = (v or {}).get("detectors", {}).get("msp")
            cells.append(f"{v['success_rate']:.3f} / {twin['success_rate']:.3f}" if v and twin else "-")
        lines.append(f"| {_eps(k):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(reports: Reports) -> str:
    """Gradient masking (Carlini et al. 2019; Tramer et al. 2020) and the benchmark's targets, as bullets."""
    out = []
    r03 = reports.get("robust_eps0.3")
    if r03:
        wb = [r03["attacks"][a]["success_rate"] for a in WHITE_BOX if a in r03["attacks"]]
        if "square" in r03["attacks"] and wb:
            sq = r03["attacks"]["square"]["success_rate"]
            verdict = "gradients look sound" if sq <= max(wb) + 0.02 else "SQUARE BEATS THE GRADIENT ATTACKS"
            out.append(
                f"- gradient-free vs white-box at 0.3: Square {sq:.3f}, best white-box {max(wb):.3f}: {verdict}"
            )
    high = [
        reports[k]["attacks"][a]["success_rate"]
        for k in reports
        if k.startswith("sanity_eps") and _eps(k) >= 0.5
        for a in WHITE_BOX
        if a in reports[k]["attacks"]
    ]
    if high:
        out.append(
            f"- white-box success at eps 0.5-0.6: {max(high):.3f} "
            + ("(reaches ~100%)" if max(high) >= 0.98 else "(BELOW 98%)")
        )
    if r03:
        worst = r03["per_input_worst"]
        doc = worst.get("adaptive", worst["all"])["detectors"]["lgm"]["detect_or_correct"]
        out.append(
            f"- targets: lgm detect-or-correct at 0.3 >= {TARGET}: {doc:.3f} "
            f"({'met' if doc >= TARGET else 'MISSED'}); clean accuracy >= 0.98: {r03['clean_accuracy']:.3f}; "
            f"clean FPR <= 0.05: {r03['clean_fpr']['lgm']:.3f}"
        )
    return "\n".join(out) or "- nothing to check in these reports"
