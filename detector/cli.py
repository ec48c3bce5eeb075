"""``lgm calibrate`` and ``lgm evaluate``: argument groups with their defaults shown in --help."""

from __future__ import annotations

import argparse

from detector.budgets import add_budget_args
from detector.evaluation import add_evaluate_args, evaluate_from_args


def cmd_calibrate(args: argparse.Namespace) -> int:
    from detector.calibration import calibrate, summary_line

    budgets = None
    attacks = None
    if args.mode == "roc":
        from detector.attacks import parse_attack_list
        from detector.budgets import budgets_from_args

        attacks = parse_attack_list(args.attacks)
        budgets = budgets_from_args(args)
    cal = calibrate(
        args.artifact, mode=args.mode, target_fpr=args.target_fpr, kind=args.thresholds.replace("-", "_"),
        rule=args.rule, attacks=attacks, budgets=budgets, limit=args.limit, device=args.device, seed=args.seed,
        batch_size=args.batch_size, progress=not args.quiet,
    )  # fmt: skip
    print(summary_line(args.artifact, cal))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    return evaluate_from_args(args)


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "calibrate", help="set the detector's thresholds on the calibration split", formatter_class=fmt
    )
    p.add_argument(
        "artifact", help="artifact folder (model.json, model.safetensors); detector.json is written there"
    )
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--mode",
        default="clean",
        help="clean (target FPR on clean inputs) | roc (attack the calibration split)",
    )
    g.add_argument(
        "--target-fpr", type=float, default=0.05, help="false-positive rate on clean calibration inputs"
    )
    g.add_argument(
        "--rule", default="fpr", help="fpr (ROC point at the target FPR) | youden (max TPR - FPR, roc mode)"
    )
    g.add_argument("--thresholds", default="per-class", help="per-class | global")
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
    add_evaluate_args(p)
    add_budget_args(p)
    p.set_defaults(func=cmd_evaluate)
