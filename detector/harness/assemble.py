"""report.json of ``lgm evaluate``, assembled from the evaluation's stages (``detector/harness/evaluation.py``),
and the files written from it: report.json, report.md (``detector/harness/report.py``, a pure function of
report.json) and the figures (``detector/harness/plots.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.harness import roc
from detector.harness.attacks import ADAPTIVE, MASKING_REFERENCES, SPECS, literature_of
from detector.harness.baselines import ADAPTIVE_BASELINES, BASELINES, Baselines
from detector.harness.budgets import Budgets
from detector.harness.evaluation_types import Context, EvalConfig, TestInputs
from detector.harness.metrics import detector_metrics, per_input_worst, worst_case
from detector.harness.plots import plot_histograms, plot_rocs
from detector.harness.report import markdown
from detector.scoring import Scores
from training.artifacts import atomic_write_bytes, atomic_write_json
from training.distributed import DistInfo


def known_to_adaptive(base: Baselines | None) -> list[str]:
    """Detectors whose deployed score the adaptive attacks optimise (``Baselines.attack_scores`` for the
    twin's): lgm and the differentiable baselines that run."""
    return ["lgm", *(n for n in ADAPTIVE_BASELINES if base is not None and n in base.names)]


def twin_objective(base: Baselines) -> str:
    """What the adaptive attacks on the twin know, in words."""
    followed = [n for n in ADAPTIVE_BASELINES if n in base.names]
    return (
        ", ".join(followed) + " at their deployed thresholds"
        if followed
        else "the twin's classification only"
    ) + "".join(f" (not {n})" for n in BASELINES if n in base.names and n not in ADAPTIVE_BASELINES)


def statistics_auroc(
    inputs: TestInputs, s_adv: Scores, success: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """AUROC of each of the L-GM detector's statistics on its own (surprises; clean vs successful)."""
    if not success.any():
        return {}
    neg = inputs.lgm_clean.surprises.numpy()[inputs.correct.numpy()]
    pos = s_adv.surprises.numpy()[success]
    return {n: round(roc.auroc(neg[:, i], pos[:, i]), 6) for i, n in enumerate(names)}


MASKING_SLACK = 0.02  # a gradient-free attack ahead of every white-box one by more than this is a warning


def masking_check(attacks: dict[str, Any]) -> dict[str, Any] | None:
    """Against gradient masking (Athalye et al. 2018; Tramer et al. 2020): on each network, the gradient-free
    Square attack's success next to the best white-box one's. Square well ahead means the gradients mislead."""
    wb = [a for a in MASKING_REFERENCES if a in attacks]
    if "square" not in attacks or not wb:
        return None
    out = {}
    # the twin's success, from any baseline (none: the twin was not attacked)
    twin = next((d for d in attacks["square"]["detectors"] if d != "lgm"), None)
    for net, det in (("lgm", "lgm"), *((("twin", twin),) if twin else ())):
        best = max(wb, key=lambda a: attacks[a]["detectors"][det]["success_rate"])
        sq, top = (
            attacks["square"]["detectors"][det]["success_rate"],
            attacks[best]["detectors"][det]["success_rate"],
        )
        out[net] = {
            "square": sq,
            "best_white_box": best,
            "best_white_box_success": top,
            "masked_gradients_suspected": sq > top + MASKING_SLACK,
        }
    return out


def build_report(
    cfg: EvalConfig,
    ctx: Context,
    base: Baselines | None,
    inputs: TestInputs,
    budgets: Budgets,
    results: dict[str, Any],
    timing: dict[str, Any],
    info: DistInfo,
    device: torch.device,
) -> dict[str, Any]:
    """report.json's dict from the evaluation's stages (see ``detector/harness/evaluation.py``)."""
    cal = ctx.det.calibration
    lgm_seen = list(cal.get("attacks") or [])
    names_run = base.names if base is not None else []
    dets = ["lgm", *names_run]
    attacks: dict[str, Any] = {}
    for name, (adv, sc) in results.items():
        metrics = {d: detector_metrics(sc["detectors"][d], seed=cfg.seed, n_boot=cfg.n_boot) for d in dets}
        for d in dets:
            metrics[d]["network"] = "lgm" if d == "lgm" else "twin"
            metrics[d]["seen_in_fit"] = name in (
                lgm_seen if d == "lgm" or base is None else base.seen_attacks(d)
            )
        delta = sc["delta"]
        attacks[name] = {
            "adaptive": name in ADAPTIVE,
            "white_box": SPECS[name].white_box,
            "literature": literature_of(name, ctx.det.meta["dataset"]["name"]),
            "budget": adv.budget,
            "success_rate": metrics["lgm"]["success_rate"],
            "n_success": metrics["lgm"]["n_success"],
            "n_attacked": len(inputs.y),
            "seen_in_calibration": name in lgm_seen,
            "median_l2": round(float(delta.norm(dim=1).median()), 4) if len(delta) else None,
            "median_linf": round(float(delta.abs().amax(1).median()), 4) if len(delta) else None,
            "lgm_statistics_auroc": statistics_auroc(
                inputs, sc["lgm_scores"], sc["detectors"]["lgm"].success, ctx.det.score_model.names
            ),
            "detectors": metrics,
        }
    names = list(attacks)
    unseen = [a for a in names if not attacks[a]["seen_in_calibration"]]
    groups = {"all": names, "adaptive": [a for a in names if a in ADAPTIVE]}
    combined = {
        g: {d: per_input_worst([results[a][1]["detectors"][d] for a in members]) for d in dets}
        for g, members in groups.items()
        if members
    }
    keep = inputs.correct.numpy()
    twin_clean = inputs.twin_clean or {}
    return {
        "format_version": 2,
        "dataset": ctx.det.meta["dataset"]["name"],
        # which files a folder dataset read: its root and the card's digest of them (None for packaged data)
        "data_root": ctx.det.meta["dataset"].get("root"),
        "data_digest": ctx.det.meta["dataset"].get("digest"),
        "artifact": str(cfg.artifact),
        "split": "test",
        "n_clean": int(len(inputs.idx)),
        "clean_accuracy": round(float((inputs.lgm_clean.pred == inputs.y_all).float().mean()), 6),
        "twin_clean_accuracy": (
            round(float((twin_clean["pred"] == inputs.y_all).float().mean()), 6) if base is not None else None
        ),
        "n_attacked": int(len(inputs.y)),
        "clean_fpr": {
            "lgm": round(float(inputs.lgm_clean.is_adversarial.float().mean()), 6),
            **{
                n: round(float((twin_clean[n] > base.thresholds[n]).float().mean()), 6)
                for n in (base.names if base is not None else [])
            },
        },
        "clean_fpr_attacked": {"lgm": round(float(inputs.lgm_clean.is_adversarial.numpy()[keep].mean()), 6)},
        "detectors": {
            "lgm": {
                "network": "lgm",
                "mode": cal["mode"],
                "rule": cal.get("rule"),
                "kind": cal["threshold_kind"],
                "target_fpr": cal["target_fpr"],
                "score": cal["score"]["statistics"],
                "combine": cal["score"]["combine"],
                "gaussians": cal["score"].get("gaussians"),
                "fit_attacks": lgm_seen,
                "global_threshold": cal["global_threshold"],
                "per_class": cal["class_thresholds"],
            },
            **(base.describe() if base is not None else {}),
        },
        # what --baselines asked for, and the baselines that ran (those that need attacks are left out of a
        # run without fit attacks)
        "baselines_option": ",".join(cfg.baselines),
        "baselines": list(names_run),
        "calibration_attacks": sorted(lgm_seen),
        "baseline_fit_attacks": list(base.fit_attacks) if base is not None else [],
        "adaptive_aims_at": known_to_adaptive(base),
        "adaptive_objectives": {
            "lgm": "the deployed L-GM detector's score and thresholds",
            **({"twin": twin_objective(base)} if base is not None else {}),
        },
        "budgets": budgets.to_dict(),
        "attacks": attacks,
        "per_input_worst": {g: {"attacks": groups[g], "detectors": v} for g, v in combined.items()},
        "gradient_masking_check": masking_check(attacks),
        "worst_case": {
            "all": worst_case(attacks, names, dets),
            "unseen_in_calibration": worst_case(attacks, unseen, dets),
        },
        "protocol": {
            "negatives": "clean test inputs classified correctly by "
            + ("both networks" if base is not None else "the L-GM network (no baselines run)"),
            "positives": "successful adversarials (prediction != label) against the detector's own network",
            "intervals": f"95% percentile bootstrap over attacked inputs, {cfg.n_boot} replicates, paired",
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "limit": cfg.limit,
        },
        "command": cfg.command,
        "run": {"world_size": info.world_size, "device": str(device)},
        "timing": dict(timing),
    }


def write_report(report: dict[str, Any], out_dir: Path, results: dict[str, Any], inputs: TestInputs) -> None:
    """report.json, report.md (``detector/harness/report.py``) and the figures, each written atomically."""

    keep = inputs.correct.numpy()
    hist, rocs = {}, {}
    for name, (_, sc) in results.items():
        dets = sc["detectors"]
        hist[name] = {
            "clean": inputs.lgm_clean.log_likelihood.numpy()[keep],
            "adversarial": sc["lgm_scores"].log_likelihood.numpy()[dets["lgm"].success],
        }
        rocs[name] = {d: (s.clean, s.adv[s.success]) for d, s in dets.items()}
    figures = [plot_rocs(rocs, out_dir / "roc.png"), plot_histograms(hist, out_dir / "loglik_hist.png")]
    report["figures"] = [p.name for p in figures if p is not None]
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", markdown(report).encode())
