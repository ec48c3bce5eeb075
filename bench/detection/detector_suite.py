"""Benchmark: the deployed detector of a calibrated artifact on its dataset's full test split, against attackers
who know it. What it needs about the data it reads from the artifact's card (model.json: the dataset's name, its
class names); the attack budget defaults to the dataset's (``detector/harness/budgets.py``: L-inf 0.3 for grey
digits, 8/255 for colour images).

- ``clean``: accuracy and clean false-positive rate (share of clean test inputs the deployed thresholds flag) on
  the whole test split.
- ``adaptive``: the project's detector-aware white-box suite (``detector/harness/attacks/adaptive.py``:
  ``adaptive``, ``adaptive_multitarget``, ``adaptive_orthogonal``, 200 steps, 5 runs per target, the deployed
  detector's own score and thresholds as the objective; Carlini & Wagner 2017, Tramer et al. 2020, Bryniarski et
  al. 2022) at an L-inf eps, on the test inputs at positions [start, start + limit) of the same fixed order as
  ``bench/detection/autoattack.py`` (``numpy.random.default_rng(seed).permutation(test size)``). Per input the
  worst of the three is kept: an input is defeated when any attack makes it misclassified and unflagged.
  Detect-or-correct (Tramer et al. 2020's accuracy at a fixed clean FPR) is over the attacked inputs, the clean
  inputs the network classifies correctly, as ``lgm evaluate`` counts it (``detector/harness/metrics.py``).
- ``sanity``: against gradient masking, white-box PGD (100 steps, 1 restart, cross-entropy) on the network
  at growing eps (from the budget to twice it; ``--scales`` sets the multiples) must reach ~100% success, and
  Square (gradient-free) must not beat it at the budget. A robust CIFAR-10 network still resists a share of
  PGD at twice 8/255 (a fifth of the shipped model's inputs, and 3% at four times), so its check runs on to eight
  times the budget (``--scales 1,2,3,4,8``).

It does not run ``lgm evaluate``, whose baselines need a softmax twin trained the same way (another hour of
adversarial training): this script measures the L-GM detector alone. Chunks are cached as JSON (``--cache``), so
locked runs stay short; the table covers every input any chunk has done. Report: ``reports/KEY_detector``, KEY
``mnist`` (the record ``mnist_detector``), ``cifar10`` for any copy of CIFAR-10, else the card's dataset name;
chunks in its ``chunks/``.

    .venv/bin/python bench/detection/detector_suite.py models/mnist-robust clean
    .venv/bin/python bench/detection/detector_suite.py models/mnist-robust adaptive --eps 0.3 --start 0 --limit 40
    .venv/bin/python bench/detection/detector_suite.py models/mnist-robust sanity --limit 100
    .venv/bin/python bench/detection/detector_suite.py models/mnist-robust report

Targets (the project's, by dataset: ``TARGETS``): for MNIST clean accuracy >= 99.0%, clean FPR <= 5%,
detect-or-correct >= 98% under the worst adaptive attack per input; for an adversarially trained CIFAR-10 model
75%, 5% and 60%; none for other datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from bench.detection.autoattack import TARGET_HEADER, default_eps, order, pct, wilson
from bench.detection.autoattack_rows import items, literature, title

ADAPTIVE = ("adaptive", "adaptive_multitarget", "adaptive_orthogonal")
# The project's targets by dataset (autoattack_rows.literature's keys): MNIST's for the shipped robust MNIST model,
# CIFAR-10's for an adversarially trained CIFAR-10 model (a network without adversarial training misses them).
TARGETS = {
    "mnist": {"clean_accuracy": 0.99, "clean_fpr": 0.05, "detect_or_correct": 0.98, "set_for": ""},
    "cifar10": {
        "clean_accuracy": 0.75,
        "clean_fpr": 0.05,
        "detect_or_correct": 0.60,
        "set_for": "an adversarially trained CIFAR-10 model",
    },
}


def _set_for(t: dict) -> str:
    return f" (set for {t['set_for']})" if t.get("set_for") else ""


SANITY_EPS = (1, 4 / 3, 5 / 3, 2)  # PGD's eps as multiples of the budget (MNIST's 0.3: 0.3, 0.4, 0.5, 0.6)


def scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated multiples of the budget, the first 1 (Square runs at the budget alone)."""
    try:
        out = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers, e.g. 1,2,3,4") from None
    if not out or out[0] != 1 or any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: rising multiples of the budget starting at 1, e.g. 1,2,3,4"
        )
    return out


def card_of(artifact: str) -> tuple[dict, list[int] | None]:
    """The dataset entry of the artifact's card (model.json) and the network's input shape (C, H, W)."""
    meta = json.loads((Path(artifact) / "model.json").read_text())
    return meta["dataset"], meta.get("arch", {}).get("input_shape")


def eps_order(folder: Path, budget: float) -> list[float]:
    """The eps of the ``adaptive-eps*`` chunk folders: the budget's first (the target's row), then the largest."""
    found = {float(p.name.removeprefix("adaptive-eps")) for p in folder.glob("adaptive-eps*") if p.is_dir()}
    return sorted(found, key=lambda e: (f"{e:g}" != f"{budget:g}", -e))


def load(art: str):
    from detector.scoring import Detector
    from training.data import load_card_dataset

    det = Detector.load(art, device="cpu")
    d = det.meta["dataset"]
    ds = load_card_dataset(d)
    return det, ds


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def run_clean(args: argparse.Namespace) -> None:
    det, ds = load(args.artifact)
    t0 = time.perf_counter()
    s = det.score(ds.test.float())
    correct = (s.pred == ds.test.y).numpy()
    flagged = s.is_adversarial.numpy()
    res = {
        "n": len(correct),
        "correct": int(correct.sum()),
        "flagged": int(flagged.sum()),
        "flagged_correct": int((flagged & correct).sum()),
        "n_correct": int(correct.sum()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(cache(args) / "clean.json", res)
    print(f"clean: {res}")


def cache(args: argparse.Namespace) -> Path:
    return args.cache / f"{Path(args.artifact).name}-seed{args.seed}"


def run_adaptive(args: argparse.Namespace) -> None:
    from detector.harness.attacks import run_attack
    from detector.harness.attacks.adaptive import DetectorObjective
    from detector.harness.attacks.base import AttackTarget
    from detector.harness.budgets import resolve_budgets

    det, ds = load(args.artifact)
    over = {"eps": args.eps}
    if args.adaptive_steps:  # default: the project's budgets (200 steps, 5 runs per target)
        over.update(adaptive_steps=args.adaptive_steps, adaptive_restarts=args.adaptive_restarts)
    b = resolve_budgets(det.meta["dataset"]["name"], over)
    idx = order(args.seed, len(ds.test))[args.start : args.start + args.limit]
    x, y = ds.test.float()[idx], ds.test.y[idx]
    clean = det.score(x)
    attacked = (clean.pred == y).numpy()
    target = AttackTarget("lgm", det.model, DetectorObjective(det))
    res: dict = {
        "start": args.start,
        "eps": args.eps,
        "test_indices": idx.tolist(),
        "attacked": attacked.tolist(),
        "code": provenance.checkout(),  # the commit this chunk was measured at
    }
    res["clean_flagged"] = clean.is_adversarial.numpy().tolist()
    xa, ya = x[attacked], y[attacked]
    for name in ADAPTIVE:
        t0 = time.perf_counter()
        adv = run_attack(name, target, xa, ya, b, args.seed)
        assert float((adv - xa).abs().amax()) <= args.eps + 1e-5
        s = det.score(adv)
        res[name] = {
            "success": (s.pred != ya).numpy().tolist(),
            "flagged": s.is_adversarial.numpy().tolist(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name} eps {args.eps}: {res[name]['seconds']} s", flush=True)
    stop = args.start + len(idx)
    write_json(cache(args) / f"adaptive-eps{args.eps:g}" / f"chunk-{args.start:05d}-{stop:05d}.json", res)


def run_sanity(args: argparse.Namespace) -> None:
    from detector.harness.attacks import run_attack
    from detector.harness.attacks.base import AttackTarget
    from detector.harness.budgets import resolve_budgets

    det, ds = load(args.artifact)
    idx = order(args.seed, len(ds.test))[: args.limit]
    x, y = ds.test.float()[idx], ds.test.y[idx]
    ok = (det.score(x).pred == y).numpy()
    xa, ya = x[ok], y[ok]
    target = AttackTarget("lgm", det.model)
    res: dict = {"n_attacked": int(ok.sum()), "rows": []}
    for k in args.scales:
        eps = args.eps if k == 1 else round(args.eps * k, 10)  # MNIST: 0.4, not 0.39999999999999997
        b = resolve_budgets(det.meta["dataset"]["name"], {"eps": eps, "steps": 100, "restarts": 1})
        row = {"eps": eps}
        for name in ("pgd", "square"):
            if name == "square" and k != 1:
                continue
            t0 = time.perf_counter()
            adv = run_attack(name, target, xa, ya, b, args.seed)
            row[name] = float((det.score(adv).pred != ya).float().mean())
            row[name + "_seconds"] = round(time.perf_counter() - t0, 1)
        res["rows"].append(row)
        print(row, flush=True)
    write_json(cache(args) / "sanity.json", res)


def merged(folder: Path) -> dict:
    """Union of the chunk files in ``folder`` by test index (first chunk wins)."""
    seen: dict[int, tuple[bool, bool, dict]] = {}
    seconds = dict.fromkeys(ADAPTIVE, 0.0)
    commits: set[str] = set()
    for path in sorted(folder.glob("chunk-*.json")):
        c = json.loads(path.read_text())
        commits.add((c.get("code") or {}).get("commit") or "unrecorded")
        k = 0
        for pos, ti in enumerate(c["test_indices"]):
            if not c["attacked"][pos]:
                seen.setdefault(ti, (False, c["clean_flagged"][pos], {}))
                continue
            per = {a: (c[a]["success"][k], c[a]["flagged"][k]) for a in ADAPTIVE}
            k += 1
            seen.setdefault(ti, (True, c["clean_flagged"][pos], per))
        for a in ADAPTIVE:
            seconds[a] += c[a]["seconds"]
    return {"inputs": seen, "seconds": seconds, "commits": commits}


def report(args: argparse.Namespace) -> dict:
    """Merge the cached chunks into ``--out/report.json`` (+ ``provenance.json``) and print its tables."""
    card, shape = card_of(args.artifact)
    key = literature(card, shape)
    out: dict = {
        "targets": TARGETS.get(key or ""),
        "benchmark": default_out(card, shape).name,
        "artifact": args.artifact,
        "split": "the official MNIST test set" if key == "mnist" else f"the {title(card, shape)}",
        "items": items(card),
        "order": f"default_rng({args.seed})",
        "threads": args.threads,
    }
    c_path = cache(args) / "clean.json"
    commits: set[str] = set()
    wall = 0.0
    if c_path.is_file():
        out["clean"] = json.loads(c_path.read_text())
        wall += out["clean"].get("seconds", 0.0)
    for eps in eps_order(cache(args), default_eps(card)):
        m = merged(cache(args) / f"adaptive-eps{eps:g}")
        commits |= m["commits"]
        att = [v for v in m["inputs"].values() if v[0]]
        n = len(att)
        per = {a: sum(1 for v in att if not (v[2][a][0] and not v[2][a][1])) for a in ADAPTIVE}
        doc = sum(1 for v in att if not any(v[2][a][0] and not v[2][a][1] for a in ADAPTIVE))
        rob = sum(1 for v in att if not any(v[2][a][0] for a in ADAPTIVE))
        wall += sum(m["seconds"].values())
        out[f"adaptive_eps{eps:g}"] = {
            "eps": eps,
            "inputs": len(m["inputs"]),
            "attacked": n,
            "detect_or_correct_count": doc,
            "detect_or_correct": doc / n if n else None,
            "detect_or_correct_ci": wilson(doc, n),
            "robust_count": rob,
            "robust_accuracy": rob / n if n else None,
            "per_attack_detect_or_correct_count": per,
            "per_attack_detect_or_correct": {a: per[a] / n if n else None for a in ADAPTIVE},
            "seconds": m["seconds"],
        }
    s_path = cache(args) / "sanity.json"
    if s_path.is_file():
        out["sanity"] = json.loads(s_path.read_text())
        wall += sum(v for r in out["sanity"]["rows"] for k, v in r.items() if k.endswith("_seconds"))
    print(format_report(out))
    write_json(Path(args.out) / "report.json", out)
    extra = {"chunk_commits": sorted(commits)}
    cmd = f".venv/bin/python bench/detection/detector_suite.py {args.artifact} report"
    if Path(args.out) != default_out(card, shape):
        cmd += f" --out {args.out}"
    if args.threads != 2:  # the header states the threads: say where it came from
        cmd += f" --threads {args.threads}"
    provenance.write(args.out, cmd, round(wall, 1), extra)
    return out


def _adaptive(out: dict) -> list[dict]:
    """The adaptive rows in the report's order: the budget's (the target's) first."""
    return [v for k, v in out.items() if k.startswith("adaptive_eps")]


def _items(out: dict) -> str:
    return out.get("items", "digits")  # reports written before "items" are all of MNIST


def _targets(out: dict) -> dict | None:
    """The report's targets; reports written before they were stored are all of MNIST."""
    return out.get("targets", TARGETS["mnist"])


def clean_verdicts(c: dict, t: dict) -> tuple[str, str]:
    acc, fpr = c["correct"] / c["n"], c["flagged"] / c["n"]
    return (
        "met" if acc >= t["clean_accuracy"] else "missed",
        "met" if fpr <= t["clean_fpr"] else "missed",
    )


def doc_verdict(row: dict, t: dict) -> str:
    lo, hi = wilson(row["detect_or_correct_count"], row["attacked"])
    goal = t["detect_or_correct"]
    return "met" if lo >= goal else ("missed" if hi < goal else "not decided at this sample size")


def format_report(out: dict) -> str:
    """The benchmark's tables, from its report.json alone: what it prints and what docs/mnist-benchmark.md
    shows are this one function."""
    lines = [f"Deployed detector of {out['artifact']} on {out['split']} (CPU, {out['threads']} threads)", ""]
    c, t = out.get("clean"), _targets(out)
    if c:
        lines += [
            f"| clean test {_items(out)} | accuracy | clean FPR (flagged) |",
            "|---:|---|---|",
            f"| {c['n']} | {pct(c['correct'], c['n'])} | {pct(c['flagged'], c['n'])} |",
            "",
        ]
        if t:
            acc_v, fpr_v = clean_verdicts(c, t)
            lines += [
                f"Targets{_set_for(t)}: clean accuracy >= {100 * t['clean_accuracy']:.1f}%: {acc_v} "
                f"({100 * c['correct'] / c['n']:.2f}%); clean FPR <= {100 * t['clean_fpr']:.0f}%: "
                f"{fpr_v} ({100 * c['flagged'] / c['n']:.2f}%)",
                "",
            ]
    rows = _adaptive(out)
    if rows:
        lines += [
            "Detect-or-correct under the detector-aware attacks, per input the worst of the three [95% Wilson];"
            f" over attacked inputs (clean {_items(out)} classified correctly)",
            "",
            "| eps | inputs (attacked) | " + " | ".join(ADAPTIVE) + " | worst per input | robust acc | s |",
            "|---:|---|" + "---|" * len(ADAPTIVE) + "---|---|---:|",
        ]
        for r in rows:
            n, per = r["attacked"], r["per_attack_detect_or_correct_count"]
            cells = " | ".join(pct(per[a], n) for a in ADAPTIVE)
            lines.append(
                f"| {r['eps']:g} | {r['inputs']} ({n}) | {cells} | {pct(r['detect_or_correct_count'], n)} | "
                f"{pct(r['robust_count'], n)} | {sum(r['seconds'].values()):.0f} |"
            )
        r = rows[0]
        lo, hi = wilson(r["detect_or_correct_count"], r["attacked"])
        if t:
            lines += [
                "",
                f"Target{_set_for(t)} detect-or-correct >= {100 * t['detect_or_correct']:.0f}% at eps "
                f"{r['eps']:g}: {doc_verdict(r, t)} "
                f"({100 * r['detect_or_correct_count'] / r['attacked']:.1f}%, [{100 * lo:.1f}, {100 * hi:.1f}], "
                f"{r['attacked']} attacked inputs)",
            ]
    s = out.get("sanity")
    if s:
        lines += [
            "",
            f"Gradient-masking checks ({s['n_attacked']} attacked inputs, the network alone)",
            "",
            "| eps | PGD-100 success | Square (1,000 queries) success |",
            "|---:|---|---|",
            *(f"| {r['eps']:g} | {r['pgd']:.3f} | {_square(r)} |" for r in s["rows"]),
        ]
    return "\n".join(lines)


def _square(row: dict) -> str:
    return f"{row['square']:.3f}" if "square" in row else "-"


def target_rows(out: dict) -> str:
    """The detector's rows of docs/mnist-benchmark.md's targets table."""
    lines: list[str] = []
    c, t = out.get("clean"), _targets(out)
    if not t:
        return ""
    if c:
        acc_v, fpr_v = clean_verdicts(c, t)
        lines += [
            f"| clean accuracy >= {100 * t['clean_accuracy']:.1f}% (all {c['n']:,} test {_items(out)}) | "
            f"{pct(c['correct'], c['n'])} | {acc_v} |",
            f"| clean FPR <= {100 * t['clean_fpr']:.0f}% (all {c['n']:,} test {_items(out)}, deployed thresholds) | "
            f"{pct(c['flagged'], c['n'])} | "
            f"{fpr_v} |",
        ]
    rows = _adaptive(out)
    if rows:
        r = rows[0]
        v = doc_verdict(r, t)
        if v.startswith("not decided"):
            v = f"not decided: the lower bound is under {100 * t['detect_or_correct']:.0f}%"
        lines.append(
            f"| detect-or-correct >= {100 * t['detect_or_correct']:.0f}% under the worst adaptive attack per input, "
            f"eps {r['eps']:g} | "
            f"{pct(r['detect_or_correct_count'], r['attacked'])}, {r['attacked']} attacked of the first "
            f"{r['inputs']} {_items(out)} | {v} |"
        )
    return TARGET_HEADER + "\n".join(lines)


def default_out(card: dict, input_shape: list[int] | None = None) -> Path:
    """``reports/KEY_detector``, KEY the published rows' dataset (``autoattack_rows.literature``: an image-folder copy
    of CIFAR-10 is ``cifar10``) or else the card's name: ``reports/mnist_detector`` (the record ``mnist_detector``)
    for MNIST."""
    return Path("reports") / f"{literature(card, input_shape) or card['name']}_detector"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="calibrated artifact folder")
    p.add_argument("what", choices=("clean", "adaptive", "sanity", "report"))
    p.add_argument("--eps", type=float, default=None, help="L-inf budget (default: the dataset's)")
    p.add_argument("--start", type=int, default=0, help="adaptive: first position in the permutation")
    p.add_argument("--limit", type=int, default=20, help="adaptive / sanity: inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation and the attacks")
    p.add_argument("--adaptive-steps", type=int, default=0, help="adaptive: steps (0: the default 200)")
    p.add_argument(
        "--adaptive-restarts", type=int, default=5, help="adaptive: runs per target with --adaptive-steps"
    )
    p.add_argument(
        "--scales",
        type=scales,
        default=SANITY_EPS,
        help="sanity: PGD's eps as rising multiples of the budget, from 1 (default 1,1.333,1.667,2)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--cache", type=Path, default=None, help="chunk folder (default: OUT/chunks)")
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default: reports/KEY_detector: mnist, cifar10 or the card's name)",
    )
    args = p.parse_args(argv)
    card, shape = card_of(args.artifact)
    args.eps = args.eps or default_eps(card)
    args.out = args.out or str(default_out(card, shape))
    args.cache = args.cache or Path(args.out) / "chunks"
    torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    {"clean": run_clean, "adaptive": run_adaptive, "sanity": run_sanity, "report": lambda a: None}[args.what](
        args
    )
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
