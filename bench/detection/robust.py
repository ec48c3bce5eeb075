"""Robustness benchmark: detect-or-correct against attackers who know the detector.

For the adversarially trained mnist5k model (``lgm train --dataset mnist5k --adversarial pgd --epochs 40``) and
the quick default model, runs ``lgm evaluate ARTIFACT --attacks robust`` (PGD, APGD-CE, APGD-DLR and Square on
the classifier; ``adaptive``, ``adaptive_multitarget`` and ``adaptive_orthogonal`` against the deployed detector
and thresholds) at L-inf 0.3, 0.2 and 0.1. The baselines run on the artifact's softmax twin, which is trained
from the same config, so the robust model's twin is adversarially trained too. Prints, per model and eps:

- detect-or-correct (Tramer et al. 2020's accuracy at a fixed clean FPR, over attacked inputs) under the
  strongest attack, taken per input: an input counts as defeated when any adaptive attack fooled the network
  without being flagged; 95% Wilson intervals;
- robust accuracy (detection ignored) under every attack together, and the clean accuracy and clean FPR;
- sanity checks against gradient masking (Carlini et al. 2019; Tramer et al. 2020): white-box success rises with
  eps and reaches ~100% at eps >= 0.5, and the gradient-free Square attack does not beat the white-box ones.

    .venv/bin/python bench/detection/robust.py [--limit 500] [--sweep-limit 200] [--nproc 2] [--batch-size 50]
                                     [--out reports/bench_robust]

Target: detect-or-correct >= 93% for lgm at eps 0.3 on 500 inputs; clean accuracy >= 98% and clean test FPR
<= 5% for the robust model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from bench.detection import robust_report as tables  # its tables, also on the results pages

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

ROBUST_TRAIN = ["--dataset", "mnist5k", "--adversarial", "pgd", "--epochs", "40"]
WHITE_BOX = tables.WHITE_BOX


def run(cmd: list[str], nproc: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2"))
    if nproc > 1 and cmd[0] == "evaluate":
        full = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), str(BIN / "lgm"), *cmd]
    else:
        full = [str(BIN / "lgm"), *cmd]
    print(
        "$ " + " ".join(shlex.quote(os.path.relpath(c, ROOT) if c.startswith(str(BIN)) else c) for c in full),
        flush=True,
    )
    subprocess.run(full, check=True, cwd=ROOT, env=env)


def ensure(art: Path, train_args: list[str] | None) -> None:
    if not (art / "model.json").is_file():
        if train_args is None:
            raise SystemExit(f"{art}: no model; train it first (make train)")
        run(["train", *train_args, "--out", str(art), "--quiet"], 1)
    from detector.scoring import load_calibration
    from training.artifacts import ArtifactError, load_meta

    try:
        load_calibration(art, load_meta(art))
    except ArtifactError:
        run(["calibrate", str(art), "--quiet"], 1)


def evaluate(
    art: Path, eps: float, limit: int, out: Path, attacks: str, nproc: int, extra: list[str], fresh: bool
) -> dict:
    if fresh or not (out / "report.json").is_file():
        run(
            [
                "evaluate",
                str(art),
                "--attacks",
                attacks,
                "--eps",
                str(eps),
                "--limit",
                str(limit),
                "--out",
                str(out),
                "--quiet",
                *extra,
            ],
            nproc,
        )
    return json.loads((out / "report.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robust", default="artifacts/mnist5k-robust")
    ap.add_argument("--quick", default="artifacts/mnist5k")
    ap.add_argument("--limit", type=int, default=500, help="inputs at eps 0.3")
    ap.add_argument(
        "--sweep-limit", type=int, default=200, help="inputs at eps 0.1 and 0.2, and per sanity eps"
    )
    ap.add_argument("--nproc", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument(
        "--batch-size",
        type=int,
        default=50,
        help="attack chunk (the sharding unit): small enough that every rank gets an equal share",
    )
    ap.add_argument("--out", default="reports/bench_robust")
    ap.add_argument("--fresh", action="store_true", help="re-run evaluations whose report exists")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="resume an interrupted run: every evaluation re-scores the adversarial sets it already saved "
        "(lgm evaluate --reuse; a set made against other weights or settings is attacked again)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    code = provenance.checkout()  # the code measured is the code at the start
    robust, quick, out = Path(args.robust), Path(args.quick), Path(args.out)
    ensure(robust, ROBUST_TRAIN)
    ensure(quick, None)
    chunk = ["--batch-size", str(args.batch_size), *(["--reuse"] if args.reuse else [])]
    reps: dict[str, dict] = {}
    timing: dict[str, float] = {}
    plan = [
        ("robust", robust, 0.3, args.limit),
        ("quick", quick, 0.3, args.limit),
        ("robust", robust, 0.2, args.sweep_limit),
        ("robust", robust, 0.1, args.sweep_limit),
    ]
    for name, art, eps, limit in plan:
        t = time.perf_counter()
        reps[f"{name} {eps}"] = evaluate(
            art, eps, limit, out / f"{name}_eps{eps}", "robust", args.nproc, chunk, args.fresh
        )
        timing[f"{name} {eps}"] = time.perf_counter() - t
    sanity = {}
    for eps in (0.4, 0.5, 0.6):  # white-box success should rise to ~100%
        sanity[eps] = evaluate(
            robust,
            eps,
            args.sweep_limit,
            out / f"sanity_eps{eps}",
            ",".join(WHITE_BOX),
            args.nproc,
            ["--fit-attacks", "", *chunk],
            args.fresh,
        )

    reports = {f"{k.split()[0]}_eps{k.split()[1]}": v for k, v in reps.items()}
    reports.update({f"sanity_eps{eps}": rep for eps, rep in sanity.items()})
    print(
        "\ndetect-or-correct under the strongest adaptive attack (per input, any of adaptive, adaptive_multitarget,"
        " adaptive_orthogonal) [95% Wilson interval]; robust accuracy under every attack together\n"
    )
    print(tables.summary_table(reports))
    print(
        "\nper attack, robust model at eps 0.3: success on lgm / twin, lgm detect-or-correct, lgm robust accuracy\n"
    )
    print(tables.attack_table(reports["robust_eps0.3"]))
    print("\nsanity checks (robust model)\n")
    print(tables.sanity_table(reports))
    print()
    print(tables.checks(reports))
    rob = robust / "model.json"
    minutes = json.loads(rob.read_text())["metrics"].get("seconds_per_epoch", 0) * 40 / 60
    print(f"- the robust model trains in ~{minutes:.1f} min of epochs")
    print(
        "wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items())
        + f"; total {(time.perf_counter() - t0) / 60:.1f} min"
    )
    bench_cmd = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/detection/robust.py", *sys.argv[1:]]
    )
    extra = {
        "minutes": {k: round(v / 60, 1) for k, v in timing.items()},
        "robust_train_minutes": round(minutes, 1),
    }
    prov = provenance.write(out, bench_cmd, time.perf_counter() - t0, extra, code)
    print(f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect robust {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
