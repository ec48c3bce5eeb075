"""report.md of ``lgm evaluate`` from its report.json: attacks as rows, detectors side by side, 95% intervals, the
budgets, what each detector saw in fitting, and the exact command. ``markdown(report)`` is a pure function of
the report.json dict; ``detector/harness/assemble.py`` builds that dict from the evaluation's stages."""

from __future__ import annotations

from typing import Any


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(m: dict[str, Any] | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "-"
    ci = m.get(key + "_ci")
    return f"{m[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{m[key]:.3f}"


def _budget(b: dict[str, Any]) -> str:
    parts = [f"{b['norm']}"]
    if b.get("eps") is not None:
        parts.append(f"eps {b['eps']:.4g}")
    for k in ("steps", "restarts", "c", "search_rounds", "queries", "overshoot", "loss", "targets"):
        if k in b:
            parts.append(f"{k} {b[k]}")
    return " ".join(parts)


def detectors_in(report: dict[str, Any]) -> list[str]:
    """The report's columns: lgm, then the baselines in their registry's order (as report.json lists them)."""
    return list(report["detectors"])


def has_baselines(report: dict[str, Any]) -> bool:
    """Whether any baseline ran (``lgm evaluate --baselines none``: no; reports before that option: yes)."""
    return len(detectors_in(report)) > 1


def baselines_note(report: dict[str, Any]) -> str:
    """What ``--baselines`` left out, in words ("" when every baseline was asked for)."""
    option = report.get("baselines_option", "all")
    if not has_baselines(report):
        return (
            "Baselines were not run (`--baselines none`): no softmax twin was trained or loaded, the attacked "
            "inputs are those the L-GM network classifies correctly, and only the L-GM detector is reported."
        )
    if option.split(",") == ["all"] or "all" in option.split(","):
        return ""
    return f"Baselines run: {', '.join(detectors_in(report)[1:])} (`--baselines {option}`); the others were not run."


NOT_ADAPTIVE = "*"  # marks a cell of an adaptive attack that did not aim at that detector


def _known_to_adaptive(report: dict[str, Any]) -> list[str]:
    """Detectors whose deployed score the adaptive attacks optimise."""
    return list(report.get("adaptive_aims_at", ["lgm"]))


def _is_adaptive(report: dict[str, Any], name: str) -> bool:
    return bool(report["attacks"][name].get("adaptive"))


def _mark(report: dict[str, Any], name: str, det: str) -> str:
    return NOT_ADAPTIVE if _is_adaptive(report, name) and det not in _known_to_adaptive(report) else ""


def footnote(report: dict[str, Any]) -> str:
    """The tables' notes: which baselines ran (when ``--baselines`` chose), and the cells marked
    ``NOT_ADAPTIVE``."""
    notes = [baselines_note(report)]
    known = _known_to_adaptive(report)
    if any(_is_adaptive(report, a) for a in report["attacks"]) and set(detectors_in(report)) - set(known):
        followed = ", ".join(d for d in known if d != "lgm") or "the twin's classification"
        notes.append(
            f"{NOT_ADAPTIVE} not an adaptive result: the adaptive attacks on the twin optimise {followed} only, "
            "so these cells show how the detector fares against an attack aimed at others."
        )
    return " ".join(n for n in notes if n)


def table(report: dict[str, Any], key: str = "auroc") -> str:
    """Markdown table of one figure with its interval (``auroc`` or ``tpr_at_5fpr``) per attack and detector."""
    dets = detectors_in(report)
    twins = has_baselines(report)
    head = ["attack", "success (lgm / twin)" if twins else "success (lgm)", "literature"] + dets
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in report["attacks"].items():
        d = a["detectors"]
        twin = next((d[x]["success_rate"] for x in dets if x != "lgm" and x in d), None)  # every baseline's
        success = f"{a['success_rate']:.3f}" + (f" / {_f(twin)}" if twins else "")
        row = [name, success, a.get("literature") or "-"]
        lines.append(
            "| " + " | ".join(row + [_ci(d.get(x), key) + _mark(report, name, x) for x in dets]) + " |"
        )
    wc = report["worst_case"]["all"]
    lines.append("| " + " | ".join(["**worst case**", "", ""] + [_ci(wc.get(x), key) for x in dets]) + " |")
    return "\n".join(lines)


def deployed_table(report: dict[str, Any]) -> str:
    """At the deployed thresholds: detect-or-correct / fooled-and-undetected / robust accuracy."""
    dets = detectors_in(report)
    lines = ["| attack | " + " | ".join(dets) + " |", "|" + "---|" * (len(dets) + 1)]
    for name, a in report["attacks"].items():
        cells = [
            f"{_f(a['detectors'][x]['detect_or_correct'])} / {_f(a['detectors'][x]['fooled_and_undetected'])} / "
            f"{_f(a['detectors'][x]['robust_accuracy'])}{_mark(report, name, x)}"
            for x in dets
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for group, label in (
        ("adaptive", "**any adaptive attack, per input**"),
        ("all", "**any attack, per input**"),
    ):
        c = report.get("per_input_worst", {}).get(group)
        if c:
            cells = [
                f"{_f(c['detectors'][x]['detect_or_correct'])} / - / {_f(c['detectors'][x]['robust_accuracy'])}"
                + ("" if x in _known_to_adaptive(report) else NOT_ADAPTIVE)
                for x in dets
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def masking_line(report: dict[str, Any]) -> str:
    m = report.get("gradient_masking_check")
    if not m:
        return ""
    parts = [
        f"{net}: Square {v['square']:.3f}, best white-box ({v['best_white_box']}) {v['best_white_box_success']:.3f}"
        + (" - SQUARE IS AHEAD: gradients may be masked" if v["masked_gradients_suspected"] else "")
        for net, v in m.items()
    ]
    return (
        "Gradient-masking check (success of the gradient-free attack next to the best white-box one): "
        + "; ".join(parts)
        + "."
    )


def markdown(report: dict[str, Any]) -> str:
    thr = report["detectors"]["lgm"]
    if has_baselines(report):
        inputs = (
            f"softmax twin {report['twin_clean_accuracy']:.4f}; {report['n_attacked']} classified correctly by "
            "both were attacked. Positives are successful adversarials against each detector's own network (lgm: "
            "the L-GM model; the baselines: the softmax twin)."
        )
        baselines = (
            f"; attacks the regression baselines were fitted on: {', '.join(report['baseline_fit_attacks']) or 'none'} "
            f"(calibration split). Adaptive attacks on the twin know: {report['adaptive_objectives']['twin']}."
        )
    else:
        inputs = (
            f"no baselines run; {report['n_attacked']} classified correctly by the L-GM network were attacked. "
            "Positives are successful adversarials against the L-GM model."
        )
        baselines = ". Baselines: not run (`--baselines none`)."
    data = report["dataset"]
    if report.get("data_root"):  # a folder dataset: say which files, by the card's digest
        digest = report.get("data_digest")
        data += f" `{report['data_root']}`" + (f" (sha256 {digest[:12]})" if digest else "")
    out = [
        f"# Detection report: {data}",
        "",
        f"Test split: {report['n_clean']} clean inputs, L-GM accuracy {report['clean_accuracy']:.4f}, {inputs} "
        "Brackets: 95% bootstrap intervals.",
        "",
        "## AUROC",
        "",
        table(report, "auroc"),
        "",
        "## TPR at 5% FPR",
        "",
        table(report, "tpr_at_5fpr"),
        "",
        "## At the deployed thresholds: detect-or-correct / fooled-and-undetected / robust accuracy",
        "",
        deployed_table(report),
        "",
        footnote(report),
        "",
        masking_line(report),
        "",
        f"lgm: {thr['mode']} mode, {thr['kind']} thresholds at target FPR {thr['target_fpr']}, score {thr['combine']} "
        f"over {', '.join(thr['score'])}. Clean test FPR: "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["clean_fpr"].items())
        + f". Attacks lgm saw in calibration: {', '.join(report['calibration_attacks']) or 'none'}"
        + baselines,
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
