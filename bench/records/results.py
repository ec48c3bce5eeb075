"""The results pages and the README's headline table, generated from the benchmarks' committed reports.

A benchmark writes ``report.json`` (and ``provenance.json``: date, commit, machine, command; see
``bench/provenance.py``) into its ``reports/`` folder, which git ignores. Publishing a measurement is two steps,
both commands, never a hand edit:

    .venv/bin/python bench/records/results.py collect detect reports/bench_detect   # -> docs/results/data/detect.json
    .venv/bin/python bench/records/results.py build                                  # = make results

``collect NAME DIR`` copies ``DIR/report.json`` with its provenance into ``docs/results/data/NAME.json`` (the
committed record) and then builds. ``build`` rewrites every generated block in ``docs/**/*.md`` and
``README.md`` from those records; ``build --check`` only says which files are out of date (exit 1 if any). A
block is the text between ``<!-- results:NAME.BLOCK -->`` and ``<!-- /results:NAME.BLOCK -->``: everything
outside the markers is prose that the command never touches, and a block whose record does not exist yet is
left as it is (a hand-kept table that says when it was measured).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.detection import robust_report  # bench/detection/robust.py's tables
from bench.records import (
    results_detect_scores,  # bench/detection/detect_scores.py
    results_query,  # bench/query/attacks.py, bench/query/fingerprints.py
    results_robust_eval,  # bench/detection/autoattack.py, bench/detection/detector_suite.py
    results_serve,  # bench/serving/serve.py
    results_train,  # bench/training/train.py, bench/training/stability.py, bench/training/robust_train.py
)

ROOT = Path(__file__).resolve().parents[2]

FAMILIES = (
    results_detect_scores,
    results_robust_eval,
    results_query,
    results_serve,
    results_train,
)  # modules with their own REPORTS and RENDERERS

DATA = ROOT / "docs" / "results" / "data"
RECORD_VERSION = 1
# Each record and the folder it is collected from (its benchmark's --out); the families add theirs.
REPORTS = {
    "detect": "reports/bench_detect",
    # the same suite on the shipped full-MNIST model, L-GM only (its softmax twin would need the hour of
    # adversarial training again): bench/detection/detect.py --artifact models/mnist-robust --baselines none
    "detect_mnist": "reports/bench_detect_mnist",
    "robust": "reports/bench_robust",
}
for _family in FAMILIES:
    REPORTS.update(_family.REPORTS)
# How a record is published again after its benchmark ran (the benchmark's own command is in the provenance).
COLLECT = {
    name: f".venv/bin/python bench/records/results.py collect {name} {folder}"
    for name, folder in REPORTS.items()
}
BLOCK = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)

Record = dict[str, Any]
Renderer = Callable[[Record], str]


class ResultsError(Exception):
    """A one-line reason why a record cannot be collected or rendered."""


# ---- the record: one benchmark's report.json and where it was measured -------------------------------------
def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: unreadable ({exc})") from None


def collect(name: str, report_dir: Path, data_dir: Path = DATA) -> Path:
    """Copy ``report_dir/report.json`` (or, for a benchmark that runs several evaluations, every
    ``report_dir/*/report.json``, keyed by folder name) and its ``provenance.json`` into ``data_dir/NAME.json``."""
    from bench.provenance import FILE
    from training.artifacts import atomic_write_json

    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ResultsError(f"{name!r}: a record name is lower-case letters, digits, '-' and '_'")
    prov_path = report_dir / FILE
    if not prov_path.is_file():
        raise ResultsError(f"{prov_path}: missing (written by the benchmark when it finishes)")
    record: Record = {"record_version": RECORD_VERSION, "name": name, "provenance": _read(prov_path)}
    if (report_dir / "report.json").is_file():
        record["report"] = _read(report_dir / "report.json")
    else:
        subs = sorted(report_dir.glob("*/report.json"))
        if not subs:
            raise ResultsError(f"{report_dir}: no report.json in it or in its folders")
        record["reports"] = {p.parent.name: _read(p) for p in subs}
    out = data_dir / f"{name}.json"
    atomic_write_json(out, record)
    out.chmod(0o644)  # a committed file, readable like the rest of the checkout
    return out


def load_records(data_dir: Path = DATA) -> dict[str, Record]:
    records = {}
    for p in sorted(data_dir.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{p}: not JSON ({exc})") from None
        if rec.get("record_version") != RECORD_VERSION:
            raise ResultsError(
                f"{p}: record_version {rec.get('record_version')!r}, expected {RECORD_VERSION}"
            )
        records[p.stem] = _fill_attack_facts(rec)
    return records


def _fill_attack_facts(rec: Record) -> Record:
    """Reports written before each attack entry carried its own ``adaptive`` flag and ``literature`` figure get
    them from the attack registry (``detector.harness.attacks.SPECS``: one source for both), so an old record
    renders as it did when it was measured."""
    from detector.harness.attacks import SPECS, literature_of

    reports = [rec["report"]] if "report" in rec else list(rec.get("reports", {}).values())
    for report in reports:
        if not isinstance(report, dict) or not isinstance(report.get("attacks"), dict):
            continue
        for name, a in report["attacks"].items():
            if name in SPECS:
                a.setdefault("adaptive", SPECS[name].adaptive)
                a.setdefault("literature", literature_of(name, report.get("dataset", "")))
    return rec


# ---- rendering ----------------------------------------------------------------------------------------------
def stamp(rec: Record) -> str:
    """One paragraph: when, at which commit, on what, by which command; how to measure again."""
    p = rec["provenance"]
    m = p.get("machine") or {}
    commit = (p.get("commit") or "unknown")[:10]
    state = " with local changes" if p.get("dirty") else ""
    accel = m.get("accelerator") or "no GPU"
    mem = f", {m['memory_gib']:g} GiB" if m.get("memory_gib") else ""
    wall = f"; wall time {p['wall_seconds']:.0f} s" if p.get("wall_seconds") is not None else ""
    again = " && ".join(c for c in (p.get("command"), COLLECT.get(rec["name"])) if c)
    chunks = (p.get("extra") or {}).get("chunk_commits")
    verb = "Measured"
    merged = ""
    if chunks:  # a chunked benchmark: the stamp's date and commit are those of the merge, not the attacks'
        verb = "Merged from cached chunks"
        merged = (
            f" The chunks were measured at commit(s) {', '.join(f'`{c[:10]}`' for c in chunks)} (`unrecorded`: "
            "written before chunks recorded their commit); the wall time is the chunks' own."
        )
    note = (p.get("extra") or {}).get("note")
    merged += f" {note}" if note else ""
    return (
        f"{verb} {p['date'][:16].replace('T', ' ')} UTC at commit `{commit}`{state}, on {m.get('cpu', '?')} "
        f"({m.get('cores', '?')} cores{mem}, {accel}; {m.get('os', '?')}, Python {m.get('python', '?')}, torch "
        f"{m.get('torch', '?')}) by `{p.get('command', '?')}`{wall}. Measure again: `{again}` (then commit "
        f"`docs/results/data/{rec['name']}.json` and the pages it rewrites).{merged}"
    )


def _report_tables():
    from detector.harness.report import deployed_table, footnote, table

    return table, deployed_table, footnote


def _has_baselines(rep: dict[str, Any]) -> bool:
    from detector.harness.report import has_baselines

    return has_baselines(rep)


def _ci(m: dict[str, Any], key: str) -> str:
    v, c = m.get(key), m.get(key + "_ci")
    if v is None:
        return "-"
    return f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c else f"{v:.3f}"


def headline(rec: Record) -> str:
    """The README's table: per attack, the deployed detector's AUROC next to the best baseline's (a column left
    out when no baseline ran), and the share of attacked inputs still classified correctly or flagged at the
    deployed threshold."""
    rep = rec["report"]
    with_base = _has_baselines(rep)
    cols = ["attack", "success on the network", "`lgm` AUROC"]
    cols += ["best baseline AUROC"] * with_base + ["`lgm` correct or flagged"]
    lines = ["| " + " | ".join(cols) + " |", "|---|---:|" + "---|" * (len(cols) - 2)]
    for name, a in rep["attacks"].items():
        d = a["detectors"]
        base = {k: v for k, v in d.items() if k != "lgm" and v.get("auroc") is not None}
        best = max(base, key=lambda k: base[k]["auroc"]) if base else None
        best_cell = [f"{_ci(base[best], 'auroc')} ({best})" if best else "-"] * with_base
        cells = [name, f"{a['success_rate']:.1%}", _ci(d["lgm"], "auroc"), *best_cell]
        lines.append("| " + " | ".join([*cells, _ci(d["lgm"], "detect_or_correct")]) + " |")
    worst = rep.get("per_input_worst", {}).get("all")
    if worst:
        blank = "| " * (len(cols) - 2)
        lines.append(
            f"| **any attack, per input** | {blank}{_ci(worst['detectors']['lgm'], 'detect_or_correct')} |"
        )
    p = rec["provenance"]
    lines += [
        "",
        f"{rep['dataset']}, {rep['n_attacked']} attacked test inputs (of {rep['n_clean']}), clean test FPR "
        f"{rep['clean_fpr']['lgm']:.1%} at the deployed thresholds"
        + ("" if with_base else "; baselines not run")
        + "; brackets: 95% bootstrap intervals. "
        f"`{p.get('command', '?')}`, {p['date'][:10]}, commit `{(p.get('commit') or '?')[:10]}`.",
    ]
    return "\n".join(lines)


def detect_auroc(rec: Record) -> str:
    table, _, _ = _report_tables()
    return table(rec["report"], "auroc")


def detect_tpr(rec: Record) -> str:
    table, _, _ = _report_tables()
    return table(rec["report"], "tpr_at_5fpr")


def detect_deployed(rec: Record) -> str:
    _, deployed_table, footnote = _report_tables()
    note = footnote(rec["report"])
    return deployed_table(rec["report"]) + (f"\n\n{note}" if note else "")


def detect_summary(rec: Record) -> str:
    """Clean figures, budgets, timing, the targets of ``bench/detection/detect.py``, and the stamp."""
    from bench.detection.detect import check_targets

    rep = rec["report"]
    lgm = rep["detectors"]["lgm"]
    budgets = "; ".join(
        f"{name}: {a['budget']['norm']}"
        + (f" {a['budget']['eps']:.4g}" if a["budget"].get("eps") is not None else "")
        + (f", median L2 {a['median_l2']:.2f}" if a.get("median_l2") is not None else "")
        for name, a in rep["attacks"].items()
    )
    t = rep.get("timing", {})
    attack_s = ", ".join(f"{k} {v:.0f} s" for k, v in (t.get("attack_seconds") or {}).items())
    prov = rec["provenance"]
    wall, evaluate_s = prov.get("wall_seconds"), (prov.get("extra") or {}).get("evaluate_seconds")
    misses = check_targets(rep, evaluate_s) if evaluate_s is not None else None
    if _has_baselines(rep):
        by, twin = "both networks", f", softmax twin {rep['twin_clean_accuracy']:.1%}"
        fitted = (
            "- Baselines fitted on attacks made on the calibration split: "
            f"{', '.join(rep.get('baseline_fit_attacks') or []) or 'none'}."
        )
    else:
        by, twin = "the L-GM network", " (no softmax twin: baselines not run)"
        fitted = "- Baselines: not run (`--baselines none`)."
    lines = [
        f"- Inputs: the first {rep['n_clean']} of a fixed random permutation of the {rep['dataset']} test split; "
        f"{rep['n_attacked']} classified correctly by {by} were attacked. Clean accuracy: L-GM "
        f"{rep['clean_accuracy']:.1%}{twin}.",
        f"- `lgm`: {lgm['mode']} mode, {lgm['kind']} thresholds at target FPR {lgm['target_fpr']}, score "
        f"{lgm['combine']} over {', '.join(lgm['score'])}. Clean test FPR at the deployed thresholds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in rep["clean_fpr"].items())
        + ".",
        fitted,
        f"- Budgets ([0, 1] pixels): {budgets}.",
        "- Time: "
        + (attack_s or "-")
        + (f"; `lgm evaluate` {evaluate_s:.0f} s" if evaluate_s is not None else "")
        + (f"; the whole benchmark {wall:.0f} s" if wall else "")
        + ".",
    ]
    if misses is not None:
        lines.append(
            "- Targets of `bench/detection/detect.py`: "
            + ("all met." if not misses else "missed: " + "; ".join(misses) + ".")
        )
    return "\n".join(lines) + "\n\n" + stamp(rec)


def _robust(fn: Callable[[dict[str, Any]], str]) -> Renderer:
    return lambda rec: fn(rec["reports"])


def _robust_attacks(rec: Record) -> str:
    return robust_report.attack_table(rec["reports"]["robust_eps0.3"])


RENDERERS: dict[str, Renderer] = {
    "detect.headline": headline,
    "detect.auroc": detect_auroc,
    "detect.tpr": detect_tpr,
    "detect.deployed": detect_deployed,
    "detect.summary": detect_summary,
    "detect.stamp": stamp,
    **{
        f"detect_mnist.{k}": f
        for k, f in (("headline", headline), ("auroc", detect_auroc), ("tpr", detect_tpr))
    },
    **{f"detect_mnist.{k}": f for k, f in (("deployed", detect_deployed), ("summary", detect_summary))},
    "detect_mnist.stamp": stamp,
    "robust.summary": _robust(robust_report.summary_table),
    "robust.attacks": _robust_attacks,
    "robust.sanity": _robust(robust_report.sanity_table),
    "robust.checks": _robust(robust_report.checks),
    "robust.stamp": stamp,
}
for _family in FAMILIES:
    RENDERERS.update(_family.RENDERERS)
    RENDERERS.update({f"{name}.stamp": stamp for name in _family.REPORTS})


def render_text(text: str, records: dict[str, Record], where: str = "") -> tuple[str, list[str], list[str]]:
    """Rewrite every block of ``text`` whose record exists: (new text, blocks rendered, blocks kept)."""
    rendered: list[str] = []
    kept: list[str] = []

    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in RENDERERS:
            raise ResultsError(f"{where}: unknown results block {name!r}; known: {', '.join(RENDERERS)}")
        rec = records.get(name.split(".", 1)[0])
        if rec is None:
            kept.append(name)
            return m.group(0)
        rendered.append(name)
        return m.group(1) + RENDERERS[name](rec).rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(one, text), rendered, kept


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def build(root: Path = ROOT, data_dir: Path | None = None, check: bool = False) -> list[Path]:
    """Render every page; returns the files that changed (or, with ``check``, that would)."""
    from training.artifacts import atomic_write_bytes

    records = load_records(data_dir or root / "docs" / "results" / "data")
    changed = []
    for page in pages(root):
        if not page.is_file():
            continue
        old = page.read_text()
        new, rendered, kept = render_text(old, records, str(page.relative_to(root)))
        if rendered or kept:
            print(
                f"{page.relative_to(root)}: "
                + (f"generated {', '.join(rendered)}" if rendered else "")
                + ("; " if rendered and kept else "")
                + (f"kept (no record yet) {', '.join(kept)}" if kept else "")
            )
        if new != old:
            changed.append(page)
            if not check:
                mode = page.stat().st_mode & 0o777
                atomic_write_bytes(page, new.encode())
                page.chmod(mode)  # a rewritten page keeps its permissions
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "collect", help="copy a benchmark's report.json + provenance.json into docs/results/data"
    )
    c.add_argument("name", help="record name, e.g. detect")
    c.add_argument("report_dir", type=Path, help="the benchmark's output folder (holds report.json)")
    b = sub.add_parser("build", help="rewrite the generated blocks of README.md and docs/ from the records")
    b.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "collect":
            print(f"wrote {collect(args.name, args.report_dir).relative_to(ROOT)}")
            build()
            return 0
        changed = build(check=args.check)
    except ResultsError as exc:
        print(f"bench/records/results.py: {exc}", file=sys.stderr)
        return 2
    if args.check and changed:
        print("out of date (run make results): " + ", ".join(str(p.relative_to(ROOT)) for p in changed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
