"""``lgm calibrate`` and ``lgm evaluate``: argument groups with their defaults shown in --help."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from detector.budgets import add_budget_args, budgets_from_args


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_calibrate(args: argparse.Namespace) -> int:
    from detector.calibration import calibrate, summary_line

    attacks = budgets = None
    if args.mode == "roc":
        from detector.attacks import parse_attack_list

        attacks = parse_attack_list(args.attacks)
        budgets = budgets_from_args(args)
    cal = calibrate(
        args.artifact,
        mode=args.mode,
        target_fpr=args.target_fpr,
        kind=args.thresholds.replace("-", "_"),
        rule=args.rule,
        gaussians=args.gaussians.replace("-", "_"),
        shrinkage=args.shrinkage.replace("-", "_"),
        statistics=_csv(args.statistics),
        attacks=attacks,
        budgets=budgets,
        limit=args.limit,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(summary_line(args.artifact, cal))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from detector.attacks import parse_attack_list
    from detector.evaluation import EvalConfig, evaluate
    from detector.report import table

    command = " ".join(shlex.quote(a) for a in ["lgm", *sys.argv[1:]]) if sys.argv[0].endswith("lgm") else ""
    cfg = EvalConfig(
        artifact=args.artifact,
        out=args.out,
        attacks=parse_attack_list(args.attacks),
        limit=args.limit,
        budgets=budgets_from_args(args),
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        reuse=args.reuse,
        maha_noise=args.maha_noise,
        fit_attacks=_csv(args.fit_attacks),
        n_boot=args.bootstrap,
        quiet=args.quiet,
        command=command or f"lgm evaluate {args.artifact} --attacks {args.attacks} --out {args.out}",
    )
    report = evaluate(cfg)
    if report is not None:
        print(table(report))
        print(
            f"wrote {Path(cfg.out) / 'report.json'} and report.md  [{report['timing']['total_seconds']:.0f}s]"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "calibrate", help="fit the detector to the artifact and set its thresholds", formatter_class=fmt
    )
    p.add_argument(
        "artifact", help="artifact folder; detector.json and detector.safetensors are written there"
    )
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--mode",
        default="clean",
        help="clean (threshold on clean inputs only) | roc (logistic "
        "combination fitted on attacks generated on the calibration split)",
    )
    g.add_argument(
        "--target-fpr", type=float, default=0.05, help="false-positive rate on clean calibration inputs"
    )
    g.add_argument(
        "--rule", default="fpr", help="fpr (ROC point at the target FPR) | youden (max TPR - FPR, roc mode)"
    )
    g.add_argument("--thresholds", default="per-class", help="per-class | global")
    g.add_argument(
        "--gaussians",
        default="tied",
        help="tied | per-class (refitted to the training features, shrunk) | head (the L-GM head's own)",
    )
    g.add_argument("--shrinkage", default="ledoit-wolf", help="ledoit-wolf | oas | empirical")
    g.add_argument(
        "--statistics",
        default="likelihood,boundary,layers",
        help="comma list of likelihood, boundary, layers",
    )
    g.add_argument("--attacks", default="fgsm,pgd", help="roc mode: attacks run on the calibration split")
    g.add_argument("--limit", type=int, default=None, help="roc mode: attack at most N calibration inputs")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    r.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    r.add_argument("--batch-size", type=int, default=100, help="inputs per attack batch")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_budget_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "evaluate", help="attack the test split and report every detector side by side", formatter_class=fmt
    )
    p.add_argument(
        "artifact", help="calibrated artifact folder (model.json, model.safetensors, detector.json)"
    )
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--attacks",
        default="default",
        help="comma list of fgsm,bim,pgd,pgdl2,cw,deepfool,apgd,apgd_dlr,"
        "square,adaptive,adaptive_multitarget,adaptive_orthogonal,autoattack; 'default' = fgsm..adaptive; "
        "'robust' = pgd,apgd,apgd_dlr,square and the three adaptive attacks",
    )
    g.add_argument("--out", required=True, help="report folder (report.json, report.md, PNGs, adversarial/)")
    g.add_argument(
        "--limit", type=int, default=None, help="evaluate the first N inputs of the shuffled test split"
    )
    g.add_argument(
        "--reuse", action="store_true", help="re-score adversarial sets saved in OUT instead of re-attacking"
    )
    g.add_argument(
        "--fit-attacks",
        default="fgsm,deepfool",
        help="attacks made on the calibration split to fit "
        "mahalanobis_full and lid ('' leaves those two out)",
    )
    g.add_argument(
        "--maha-noise",
        type=float,
        default=0.0,
        help="one-layer Mahalanobis input pre-processing step (0: off)",
    )
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates of the 95%% intervals")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="seed of the input order and the attacks")
    r.add_argument(
        "--batch-size", type=int, default=100, help="inputs per attack chunk (also the sharding unit)"
    )
    r.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_budget_args(p)
    p.set_defaults(func=cmd_evaluate)
