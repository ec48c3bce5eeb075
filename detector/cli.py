"""``lgm calibrate`` and ``lgm evaluate``: flags built from ``CalibrationConfig`` and ``EvalConfig`` (each field
declares its flag, help, group and bounds), plus the attack budgets' flags; defaults shown in --help. ``lgm export``:
the calibrated detector as one ONNX graph (``detector/export.py``, imported only when the command runs)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from detector.harness.budgets import add_budget_args, budgets_from_args
from training.configargs import add_arguments, from_args, given


def cmd_calibrate(args: argparse.Namespace) -> int:
    from detector.calibration import CalibrationConfig, calibrate, summary_line

    options = given(CalibrationConfig, args)
    if options.get("mode") == "roc":
        from detector.harness.calibration_roc import calibrate_roc

        options["budgets"] = budgets_from_args(args)
        cal = calibrate_roc(args.artifact, **options, progress=not args.quiet)
    else:
        cal = calibrate(args.artifact, **options, progress=not args.quiet)
    print(summary_line(args.artifact, cal))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from detector.harness.evaluation import EvalConfig, evaluate
    from detector.harness.report import table

    # the command as typed, whether it came in as `lgm ...`, `python -m service ...` or main([...])
    command = shlex.join(["lgm", *getattr(args, "argv", sys.argv[1:])])
    cfg = EvalConfig(
        artifact=args.artifact,
        out=args.out,
        **given(EvalConfig, args),
        budgets=budgets_from_args(args),
        quiet=args.quiet,
        command=command,
    )
    report = evaluate(cfg)
    if report is not None:
        print(table(report))
        print(
            f"wrote {Path(cfg.out) / 'report.json'} and report.md  [{report['timing']['total_seconds']:.0f}s]"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from detector.export import ExportConfig, export

    written = export(args.artifact, from_args(ExportConfig, args))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _register_export(sub: argparse._SubParsersAction) -> None:
    from detector.export import ExportConfig

    p = sub.add_parser(
        "export",
        help="write the calibrated detector as one ONNX graph (and a Triton model repository)",
        description="One ONNX graph from pixels (N, C, H, W) float32 in [0, 1] to the /v2 outputs and the "
        "combined score; needs the onnx extra (pip install 'lgm-detect[onnx]').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "artifact", help="calibrated L-GM artifact folder (model.*, detector.json, detector.safetensors)"
    )
    add_arguments(p, ExportConfig)
    p.set_defaults(func=cmd_export)


def register(sub: argparse._SubParsersAction) -> None:
    from detector.calibration import CalibrationConfig
    from detector.harness.evaluation import EvalConfig

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "calibrate", help="fit the detector to the artifact and set its thresholds", formatter_class=fmt
    )
    p.add_argument(
        "artifact", help="artifact folder; detector.json and detector.safetensors are written there"
    )
    groups = add_arguments(p, CalibrationConfig)
    groups["run"].add_argument("--quiet", action="store_true", help="no progress bars")
    add_budget_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "evaluate", help="attack the test split and report every detector side by side", formatter_class=fmt
    )
    p.add_argument(
        "artifact", help="calibrated artifact folder (model.json, model.safetensors, detector.json)"
    )
    p.add_argument("--out", required=True, help="report folder (report.json, report.md, PNGs, adversarial/)")
    groups = add_arguments(p, EvalConfig)
    groups["run"].add_argument("--quiet", action="store_true", help="no progress bars")
    add_budget_args(p)
    p.set_defaults(func=cmd_evaluate)

    _register_export(sub)
