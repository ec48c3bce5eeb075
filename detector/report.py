"""report.json and report.md: one table, attacks as rows, detectors side by side; budgets; the exact command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifacts import atomic_write_bytes, atomic_write_json

DETECTORS = ("lgm", "msp", "mahalanobis")  # the report's columns, in order


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _budget(b: dict[str, Any]) -> str:
    parts = [f"{b['norm']}"]
    if b.get("eps") is not None:
        parts.append(f"eps {b['eps']:.4g}")
    for k in ("steps", "restarts", "c", "search_rounds", "queries", "overshoot"):
        if k in b:
            parts.append(f"{k} {b[k]}")
    return " ".join(parts)


def _cell(m: dict[str, Any]) -> str:
    return f"{_f(m['auroc'])} / {_f(m['tpr_at_5fpr'])} / {_f(m['fooled_and_undetected'])}"


def table(report: dict[str, Any]) -> str:
    """The Markdown table: per attack, success rate, then AUROC / TPR@5%FPR / fooled-and-undetected per detector."""
    head = ["attack", "seen", "success (lgm / twin)"] + [f"{d} AUROC / TPR@5 / undet." for d in DETECTORS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in report["attacks"].items():
        dets = a["detectors"]
        row = [name, "yes" if a["seen_in_calibration"] else "no",
               f"{a['success_rate']:.3f} / {dets['msp']['success_rate']:.3f}"]  # fmt: skip
        row += [_cell(dets[d]) for d in DETECTORS]
        lines.append("| " + " | ".join(row) + " |")
    wc = report["worst_case"]["all"]
    row = ["**worst case**", "", ""]
    row += [_cell(wc[d]) if wc.get(d) else "-" for d in DETECTORS]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    thr = report["thresholds"]["lgm"]
    out = [
        f"# Detection report: {report['dataset']}",
        "",
        f"Test split: {report['n_clean']} clean inputs, L-GM accuracy {report['clean_accuracy']:.4f}, softmax twin "
        f"{report['twin_clean_accuracy']:.4f}; {report['n_attacked']} classified correctly by both were attacked. "
        "Positives are successful adversarials against each detector's own network (lgm: the L-GM model; msp, "
        "mahalanobis: the softmax twin). Cells: AUROC / TPR at 5% FPR / fooled-and-undetected rate "
        "(misclassified and not flagged at the deployed threshold, over attacked inputs).",
        "",
        table(report),
        "",
        f"Deployed thresholds: lgm {thr['kind']} ({thr['mode']} mode, rule {thr['rule']}, target FPR {thr['target_fpr']}); "
        f"baselines global at the same target FPR on clean calibration inputs. Clean test FPR: "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["clean_fpr"].items())
        + f". Attacks seen in calibration: {', '.join(report['calibration_attacks']) or 'none'}.",
        "",
        "## Budgets ([0, 1] pixel space)",
        "",
        "| attack | budget | median L2 | median Linf |",
        "|---|---|---|---|",
    ]
    for name, a in report["attacks"].items():
        out.append(
            f"| {name} | {_budget(a['budget'])} | {_f(a['median_l2'], 2)} | {_f(a['median_linf'], 3)} |"
        )
    out += ["", "## Command", "", "```", report["command"], "```", ""]
    if report.get("figures"):
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in report["figures"]] + [""]
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(report).encode())
