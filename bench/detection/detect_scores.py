"""Which L-GM detector settings detect best? Re-scores the adversarial sets a report saved, with no attacking.

``lgm evaluate`` (and ``bench/detection/detect.py``) save every attack's adversarials in REPORT/adversarial/. This script
calibrates copies of the artifact with other ``lgm calibrate`` settings (the network is the same, so the
non-adaptive adversarials made against it stay valid), scores the attacked clean test inputs and the successful
adversarials, and prints each variant's AUROC with its 95% bootstrap interval per attack, and its clean test FPR
at the deployed thresholds. Adaptive attacks are left out: they depend on the detector they were made against.
The ``roc`` variants fit their combination on attacks made on the calibration split (never on these test
inputs); the cells of the attacks a variant saw are marked "(seen)", so that the unseen ones show whether an
attack-fitted combination generalises.

    .venv/bin/python bench/detection/detect_scores.py --artifact artifacts/mnist5k --report reports/bench_detect

It writes ``report.json`` and ``provenance.json`` into ``--out`` (reports/bench_detect_scores), which
``bench/records/results.py collect detect_scores DIR`` publishes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from detector.calibration import calibrate
from detector.harness import roc
from detector.harness.attacks import ADAPTIVE
from detector.harness.bootstrap import paired_intervals
from detector.harness.calibration_roc import calibrate_roc
from detector.scoring import Detector
from training.artifacts import atomic_write_json
from training.data import load_card_dataset

ALL = "likelihood,boundary,layers"
VARIANTS: dict[str, dict] = {
    "default (tied, all statistics, per-class thresholds)": {},
    "global thresholds": {"kind": "global"},
    "per-class Gaussians": {"gaussians": "per_class"},
    "head's Gaussians": {"gaussians": "head"},
    "OAS shrinkage": {"shrinkage": "oas"},
    "likelihood only": {"statistics": ["likelihood"]},
    "likelihood, head's Gaussians (the previous detector)": {
        "statistics": ["likelihood"],
        "gaussians": "head",
    },
    "likelihood + boundary": {"statistics": ["likelihood", "boundary"]},
    "likelihood + layers": {"statistics": ["likelihood", "layers"]},
    # roc mode: a logistic regression over the surprises, fitted on attacks made on the calibration split. Cells
    # of the attacks it saw are marked; the others show whether the fit generalises to attacks it did not see.
    "roc mode, fitted on fgsm + pgd": {"mode": "roc", "attacks": ["fgsm", "pgd"]},
    "roc mode, fitted on fgsm + cw": {"mode": "roc", "attacks": ["fgsm", "cw"]},
}
SEEN = " (seen)"
OUT = "reports/bench_detect_scores"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default="artifacts/mnist5k")
    ap.add_argument("--report", default="reports/bench_detect", help="a report folder with adversarial/")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=OUT, help="folder of report.json + provenance.json")
    args = ap.parse_args()
    t0, code = time.perf_counter(), provenance.checkout()  # the code measured is the code at the start

    files = sorted((Path(args.report) / "adversarial").glob("*.safetensors"))
    sets = {f.stem: load_file(str(f)) for f in files if f.stem not in ADAPTIVE}
    if not sets:
        print(
            f"no adversarial sets in {args.report}/adversarial: run bench/detection/detect.py first",
            file=sys.stderr,
        )
        return 2
    first = next(iter(sets.values()))
    idx, y = first["index"], first["y"]
    src = Path(args.artifact)
    d = Detector.load(src, "cpu").meta["dataset"]
    ds = load_card_dataset(d)
    x_clean = ds.test.x[idx].float().div(255.0)
    names = list(sets)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, opts in VARIANTS.items():
            art = Path(tmp) / "a"
            shutil.rmtree(art, ignore_errors=True)
            art.mkdir()
            for f in ("model.json", "model.safetensors"):
                shutil.copy(src / f, art / f)
            run = calibrate_roc if opts.get("mode") == "roc" else calibrate
            cal = run(art, device="cpu", progress=False, **opts)
            seen = set(cal.get("attacks") or [])
            det = Detector.load(art, "cpu")
            neg = det.score(x_clean)
            cells = {}
            for name in names:
                s = det.score(sets[name]["lgm"])
                ok = (s.pred != y).numpy()
                pos = s.score.numpy()
                ci = paired_intervals(neg.score.numpy(), pos, ok, n_boot=args.bootstrap)["auroc_ci"]
                cells[name] = {
                    "auroc": float(roc.auroc(neg.score.numpy(), pos[ok])),
                    "ci": [float(c) for c in ci] if ci else None,
                    "seen": name in seen,
                }
            fpr = float(np.mean(neg.is_adversarial.numpy()))
            rows.append({"variant": label, "options": opts, "clean_fpr": fpr, "cells": cells})
            print(f"# {label}: clean test FPR {fpr:.3f}", file=sys.stderr, flush=True)
    rep = {
        "benchmark": "detect_scores",
        "artifact": args.artifact,
        "report": args.report,
        "n_attacked": len(y),
        "attacks": names,
        "bootstrap": args.bootstrap,
        "rows": rows,
    }
    print(table(rep))
    command = (
        f".venv/bin/python bench/detection/detect_scores.py --artifact {args.artifact} --report {args.report}"
        + (f" --bootstrap {args.bootstrap}" if args.bootstrap != 1000 else "")
        + (f" --out {args.out}" if args.out != OUT else "")
    )
    atomic_write_json(Path(args.out) / "report.json", rep)
    prov = provenance.write(args.out, command, time.perf_counter() - t0, None, code)
    print(f"\nCommand: `{command}`")
    print(
        f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect detect_scores {args.out})"
    )
    return 0


def table(rep: dict) -> str:
    """Each variant's clean test FPR and AUROC [95% bootstrap interval] per attack, from the report alone: what
    the script prints and what docs/results/detection.md shows."""
    names = rep["attacks"]
    lines = [
        f"AUROC [95% interval] of L-GM detector variants on {rep['report']}'s saved adversarial sets "
        f"({rep['n_attacked']} attacked test inputs; successful adversarials against the L-GM network)",
        "",
        "| variant | clean test FPR | " + " | ".join(names) + " |",
        "|---|---:|" + "---|" * len(names),
    ]
    for r in rep["rows"]:
        cells = []
        for name in names:
            c = r["cells"][name]
            mark = SEEN if c["seen"] else ""
            cells.append(f"{c['auroc']:.4f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]{mark}" if c["ci"] else "-")
        lines.append(f"| {r['variant']} | {r['clean_fpr']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
