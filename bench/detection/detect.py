"""Detection benchmark: the default model, the default attack suite, --limit 500; prints the tables, the exact
command and the wall time.

    .venv/bin/python bench/detection/detect.py [--artifact artifacts/mnist5k] [--limit 500] [--nproc 2] [--out reports/bench_detect]
        [--baselines all|none|msp,kd,...]

Which artifact is (re)trained: a missing ``--artifact`` is trained (`lgm train --dataset mnist5k --out
ARTIFACT`), and so is the default artifacts/mnist5k when it was trained with other defaults than
training/config.py now has, since that folder is this script's own cache of the default model. An existing
``--artifact`` elsewhere is never retrained: it is a model someone chose to measure (the shipped
models/mnist-robust, say, whose training took an hour and whose card names its own settings), and replacing it
with a mnist5k model would measure something else under its name. The artifact is calibrated if it has no
detector (`lgm calibrate ARTIFACT`); then `lgm evaluate` runs under torchrun with one rank per core (one thread
each), which on a small CPU is faster than one process with two threads. ``--baselines`` is passed to `lgm
evaluate`: ``none`` measures the L-GM detector alone, with no softmax twin to train (a robust model's twin
would need the same adversarial training), so the baseline comparison below is not made. The project's targets: lgm AUROC >= 0.995 on each of fgsm, bim, pgd, pgdl2, cw,
deepfool, apgd and square, and never below a baseline's AUROC beyond lgm's 95% interval; clean test accuracy
>= 98.5% and clean test FPR within 1 point of the target; the suite with every baseline in under 15 minutes on
2 CPU cores; ``lgm calibrate`` (clean mode) in under 30 s.
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
from training.config import RUN_ONLY, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TARGET_ATTACKS = ("fgsm", "bim", "pgd", "pgdl2", "cw", "deepfool", "apgd", "square")
TARGET_AUROC = 0.995
IGNORED = {"data_root", *RUN_ONLY}  # settings that do not change the trained model
DEFAULT_ARTIFACT = "artifacts/mnist5k"  # this script's own cache of the default model


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def stale_reason(art: Path) -> str | None:
    """Why the artifact must be (re)trained, or None: it is missing, or it is the default artifact and was
    trained with other defaults. Any other existing artifact is measured as it is."""
    meta_path = art / "model.json"
    if not meta_path.is_file():
        return "missing"
    if art.resolve() != (ROOT / DEFAULT_ARTIFACT).resolve():
        return None
    trained = TrainConfig.from_dict(json.loads(meta_path.read_text()).get("train", {})).to_dict()
    now = TrainConfig(dataset="mnist5k").to_dict()
    diff = {k: (trained.get(k), v) for k, v in now.items() if k not in IGNORED and trained.get(k) != v}
    return f"trained with other defaults: {diff}" if diff else None


def needs_calibration(art: Path) -> bool:
    from detector.scoring import load_calibration
    from training.artifacts import ArtifactError, load_meta

    try:
        load_calibration(art, load_meta(art))
    except ArtifactError:
        return True
    return False


def check_targets(report: dict, seconds: float) -> list[str]:
    misses = []
    for name in TARGET_ATTACKS:
        a = report["attacks"].get(name)
        if a is None:
            continue
        d = a["detectors"]
        lgm = d["lgm"]["auroc"]
        if lgm is None or lgm < TARGET_AUROC:
            misses.append(f"{name}: lgm AUROC {lgm} < {TARGET_AUROC}")
        hi = (d["lgm"].get("auroc_ci") or [lgm, lgm])[1]
        for base, m in d.items():
            if base != "lgm" and m["auroc"] is not None and lgm is not None and m["auroc"] > hi:
                misses.append(f"{name}: {base} AUROC {m['auroc']:.4f} above lgm's interval (upper {hi:.4f})")
    if report["clean_accuracy"] < 0.985:
        misses.append(f"clean accuracy {report['clean_accuracy']:.4f} < 0.985")
    target = report["detectors"]["lgm"]["target_fpr"]
    if abs(report["clean_fpr"]["lgm"] - target) > 0.01:
        misses.append(f"clean test FPR {report['clean_fpr']['lgm']:.3f} not within 1 point of {target}")
    if seconds > 15 * 60:
        misses.append(f"suite took {seconds:.0f}s > 900s")
    return misses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--artifact",
        default=DEFAULT_ARTIFACT,
        help="trained if missing; only the default is retrained when its training defaults changed",
    )
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--attacks", default="default")
    p.add_argument(
        "--nproc", type=int, default=min(2, os.cpu_count() or 1), help="torchrun ranks (1: plain process)"
    )
    p.add_argument("--out", default="reports/bench_detect")
    p.add_argument("--reuse", action="store_true", help="re-score saved adversarial sets")
    p.add_argument(
        "--baselines",
        default="all",
        help="lgm evaluate --baselines: all, none, or a comma list of baselines (none: no softmax twin)",
    )
    args = p.parse_args()
    from detector.harness.baselines import resolve_baselines
    from training.configargs import comma_list

    try:  # the one-line error before any training, not a failed subprocess after it
        resolve_baselines(comma_list(args.baselines))
    except ValueError as exc:
        p.error(str(exc))
    t0 = time.perf_counter()
    code = provenance.checkout()  # the code measured is the code at the start
    art = Path(args.artifact)
    reason = stale_reason(art)
    if reason:
        print(f"training {art} ({reason})", flush=True)
        for f in ("model.json", "detector.json"):
            (art / f).unlink(missing_ok=True)
        run([str(BIN / "lgm"), "train", "--dataset", "mnist5k", "--out", str(art), "--quiet"])
    if needs_calibration(art):
        run([str(BIN / "lgm"), "calibrate", str(art), "--quiet"])
    t_eval = time.perf_counter()
    lgm_args = [
        "evaluate",
        str(art),
        "--attacks",
        args.attacks,
        "--limit",
        str(args.limit),
        "--out",
        args.out,
        "--baselines",
        args.baselines,
        "--quiet",
    ]
    if args.reuse:
        lgm_args.append("--reuse")
    if args.nproc > 1:
        cmd = [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            str(args.nproc),
            str(BIN / "lgm"),
            *lgm_args,
        ]
    else:
        cmd = [str(BIN / "lgm"), *lgm_args]
    env = dict(os.environ, OMP_NUM_THREADS="1" if args.nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2"))
    run(cmd, env=env)
    t_end = time.perf_counter()
    report = json.loads((Path(args.out) / "report.json").read_text())
    from detector.harness.report import deployed_table, footnote, table

    shown = " ".join(shlex.quote(c if not c.startswith(str(BIN)) else os.path.relpath(c, ROOT)) for c in cmd)
    print("\nAUROC [95% interval]\n")
    print(table(report, "auroc"))
    print("\nTPR at 5% FPR [95% interval]\n")
    print(table(report, "tpr_at_5fpr"))
    print("\ndetect-or-correct / fooled-and-undetected / robust accuracy, at the deployed thresholds\n")
    print(deployed_table(report))
    print(footnote(report))
    print()
    print(f"command: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {shown}")
    twin = report.get("twin_clean_accuracy")
    print(
        f"model: {art} (test accuracy {report['clean_accuracy']:.4f} on the {report['n_clean']} inputs; "
        + (f"twin {twin:.4f}" if twin is not None else "no twin: baselines not run")
        + f"); {report['n_attacked']} attacked"
    )
    print(
        f"wall time: evaluate {t_end - t_eval:.0f}s, total {t_end - t0:.0f}s (attacks: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in report["timing"]["attack_seconds"].items())
        + ")"
    )
    cal = json.loads((art / "detector.json").read_text())
    print("clean test FPR: " + ", ".join(f"{k} {v:.3f}" for k, v in report["clean_fpr"].items()))
    fitted = (
        f"baselines fitted in {report['timing']['baseline_fit_seconds']:.0f}s on "
        f"{', '.join(report['baseline_fit_attacks']) or 'no attacks'} (calibration split)"
        if len(report["detectors"]) > 1
        else "baselines not run"
    )
    print(f"lgm calibrate: {cal['figures']['seconds']:.1f}s (mode {cal['mode']}); {fitted}")
    misses = check_targets(report, t_end - t_eval)
    unmade = "" if len(report["detectors"]) > 1 else " (no baselines run: the comparison with them not made)"
    print("targets: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)) + unmade)
    bench_cmd = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/detection/detect.py", *sys.argv[1:]]
    )
    prov = provenance.write(
        args.out, bench_cmd, t_end - t0, {"evaluate_seconds": round(t_end - t_eval, 1)}, code
    )
    name = Path(args.out).name.removeprefix(
        "bench_"
    )  # the record names of bench/records/results.py (detect, detect_mnist)
    print(
        f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect {name} {args.out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
