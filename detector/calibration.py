"""Set the detector's thresholds on the artifact's calibration split and write ARTIFACT/detector.json.

Protocol (Carlini & Wagner 2017; Tramer et al. 2020): the mixture is learned on train, thresholds are set here
on the held-out calibration split only, and every reported number comes from the test split.

Modes:
- ``clean``: the threshold is the target-FPR quantile of the clean calibration log-likelihoods (flag when the
  likelihood is lower than that of all but ``target_fpr`` of clean inputs).
- ``roc``: generate the chosen attacks on the calibration split (correctly classified inputs only; positives
  are the successful adversarials) and pick the threshold from the ROC curve, at the target FPR or where
  Youden's J = TPR - FPR is largest.
Thresholds are global or per predicted class (a class with too few calibration inputs falls back to the
global threshold). Inputs are grouped by *predicted* class, as at serving time.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detector import roc
from detector.scoring import (
    DETECTOR_FILE,
    DETECTOR_FORMAT,
    THRESHOLD_UNITS,
    deployed_thresholds,
    lgm_head,
    raw_scores,
)
from training.artifacts import atomic_write_json, load_artifact
from training.data import load_dataset
from training.distributed import resolve_device

MODES = ("clean", "roc")
RULES = ("fpr", "youden")
KINDS = ("per_class", "global")
N_LEVELS = 101  # stored quantile levels 0.00, 0.01, ..., 1.00
MIN_PER_CLASS = 10  # fewer calibration inputs of a predicted class: use the global threshold for it
FINITE = 1e30  # JSON has no infinities: thresholds are clipped to +-FINITE


def clean_quantiles(ll: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class (by predicted class) and pooled quantiles of clean log-likelihoods at N_LEVELS levels."""
    levels = np.linspace(0.0, 1.0, N_LEVELS)
    per_class: list[list[float] | None] = []
    for k in range(num_classes):
        v = ll[pred == k]
        per_class.append([float(q) for q in np.quantile(v, levels)] if len(v) else None)
    glob = [float(q) for q in np.quantile(ll, levels)]
    per_class = [q if q is not None else glob for q in per_class]
    return {"levels": [round(float(v), 4) for v in levels], "per_class": per_class, "global": glob,
            "counts": [int((pred == k).sum()) for k in range(num_classes)]}  # fmt: skip


def _pick(neg_ll: np.ndarray, pos_ll: np.ndarray | None, rule: str, target_fpr: float) -> float:
    """A log-likelihood threshold T (flag when ll < T) from clean and adversarial log-likelihoods."""
    neg = -neg_ll  # score: larger is more adversarial
    if rule == "youden" and pos_ll is not None and len(pos_ll):
        t = roc.youden_threshold(neg, -pos_ll)
    else:
        t = roc.threshold_at_fpr(neg, target_fpr)
    return float(np.clip(-t, -FINITE, FINITE))


def select_thresholds(
    clean_ll: np.ndarray, clean_pred: np.ndarray, num_classes: int, target_fpr: float, rule: str = "fpr",
    adv_ll: np.ndarray | None = None, adv_pred: np.ndarray | None = None,
) -> tuple[float, list[float]]:  # fmt: skip
    """Global threshold and one per predicted class (falling back to the global one for rare classes)."""
    glob = _pick(clean_ll, adv_ll, rule, target_fpr)
    per: list[float] = []
    for k in range(num_classes):
        neg = clean_ll[clean_pred == k]
        pos = adv_ll[adv_pred == k] if adv_ll is not None and adv_pred is not None else None
        enough = len(neg) >= MIN_PER_CLASS and (
            rule != "youden" or (pos is not None and len(pos) >= MIN_PER_CLASS)
        )
        per.append(_pick(neg, pos, rule, target_fpr) if enough else glob)
    return glob, per


def attack_calibration_split(
    model, dataset: str, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, thresholds: torch.Tensor,
    attacks: list[str] | None, budgets: dict[str, Any] | None, limit: int | None, seed: int, batch_size: int,
    device: torch.device, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """Attack the correctly classified calibration inputs; return the successful adversarials' log-likelihoods
    and predictions (pooled over attacks) and per-attack figures. The adaptive attack aims at the clean-mode
    thresholds (the ones in force before this calibration)."""
    from detector.attacks import AttackTarget, LGMObjective, parse_attack_list, run_attack
    from detector.budgets import resolve_budgets

    names = parse_attack_list(attacks or ["fgsm", "pgd"])
    b = resolve_budgets(dataset, budgets, tuple(x.shape[1:]))
    keep = (pred == y).nonzero().squeeze(1)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        keep = keep[:limit]
    xs, ys = x[keep], y[keep]
    target = AttackTarget("lgm", model, LGMObjective(model, thresholds, b.adaptive_margin))
    lls, preds, figures = [], [], {}
    for name in names:
        parts = []
        chunks = range(0, len(xs), batch_size)
        for i in tqdm(chunks, desc=f"calibrate {name}", disable=not progress, leave=False, unit="batch"):
            xb, yb = xs[i : i + batch_size].to(device), ys[i : i + batch_size].to(device)
            parts.append(run_attack(name, target, xb, yb, b, seed * 1_000_003 + i).cpu())
        xa = torch.cat(parts) if parts else xs[:0]
        s = raw_scores(model, xa)
        ok = s["pred"] != ys
        lls.append(s["log_likelihood"][ok].double().numpy())
        preds.append(s["pred"][ok].numpy())
        figures[name] = {
            "n_attacked": len(ys),
            "n_success": int(ok.sum()),
            "success_rate": float(ok.float().mean()),
            "ll": lls[-1],
        }
    return {"ll": np.concatenate(lls), "pred": np.concatenate(preds), "attacks": names,
            "budgets": {n: b.for_attack(n) for n in names}, "figures": figures}  # fmt: skip


def validate(mode: str, rule: str, kind: str, target_fpr: float) -> None:
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if rule not in RULES:
        raise ValueError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    if kind not in KINDS:
        raise ValueError(f"--thresholds must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"--target-fpr must be in (0, 1), got {target_fpr}")


def calibrate(
    art_dir: str | Path, mode: str = "clean", target_fpr: float = 0.05, kind: str = "per_class",
    rule: str = "fpr", attacks: list[str] | None = None, budgets: dict[str, Any] | None = None,
    limit: int | None = None, device: str = "auto", seed: int = 0, batch_size: int = 100, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Calibrate the artifact in ``art_dir`` and write ``detector.json`` atomically. Returns its dict."""
    validate(mode, rule, kind, target_fpr)
    if mode == "clean" and rule == "youden":
        raise ValueError("--rule youden needs adversarial examples: use it with --mode roc")
    t0 = time.perf_counter()
    art = Path(art_dir)
    dev = resolve_device(device)
    model, meta = load_artifact(art, dev)
    lgm_head(model)
    d = meta["dataset"]
    if mode == "roc":
        from detector.attacks import parse_attack_list
        from detector.budgets import resolve_budgets

        attacks = parse_attack_list(attacks or ["fgsm", "pgd"])
        resolve_budgets(d["name"], budgets, tuple(int(v) for v in meta["arch"]["input_shape"]))
    ds = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0)), d.get("image_size"))
    split = ds.calibration
    x, y = split.float(), split.y
    k = len(d["class_names"])
    raw = raw_scores(model, x)
    ll, pred = raw["log_likelihood"].double().numpy(), raw["pred"].numpy()
    figures: dict[str, Any] = {"n": len(y), "accuracy": float((raw["pred"] == y).float().mean())}
    adv_ll = adv_pred = None
    used: list[str] = []
    budgets_used: dict[str, Any] = {}
    if mode == "roc":
        clean_glob, clean_per = select_thresholds(ll, pred, k, target_fpr)
        thr0 = torch.from_numpy(deployed_thresholds(kind, clean_per, clean_glob))
        adv = attack_calibration_split(model, d["name"], x, y, raw["pred"], thr0, attacks, budgets, limit, seed,
                                       batch_size, dev, progress)  # fmt: skip
        adv_ll, adv_pred = adv["ll"], adv["pred"]
        used, budgets_used = adv["attacks"], adv["budgets"]
        figures["attacks"] = adv["figures"]
        for f in figures["attacks"].values():
            a_ll = f.pop("ll")
            f["auroc"] = roc.auroc(-ll, -a_ll) if len(a_ll) else None
    glob, per = select_thresholds(ll, pred, k, target_fpr, rule, adv_ll, adv_pred)
    deployed = deployed_thresholds(kind, per, glob)  # (K,)
    figures["clean_fpr"] = float(np.mean(ll < deployed[pred]))
    if adv_ll is not None and len(adv_ll):
        figures["adversarial_tpr"] = float(np.mean(adv_ll < deployed[adv_pred]))
        figures["auroc"] = roc.auroc(-ll, -adv_ll)
    figures["seconds"] = round(time.perf_counter() - t0, 3)
    cal = {
        "format_version": DETECTOR_FORMAT,
        "model_sha256": meta["weights_sha256"],
        "dataset": d["name"],
        "split": "calibration",
        "mode": mode,
        "rule": rule,
        "threshold_kind": kind,
        "threshold_units": THRESHOLD_UNITS,
        "target_fpr": target_fpr,
        "global_threshold": glob,
        "class_thresholds": per,
        "attacks": used,
        "budgets": budgets_used,
        "figures": figures,
        "quantiles": clean_quantiles(ll, pred, k),
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(art / DETECTOR_FILE, cal)
    return cal


def summary_line(art_dir: str | Path, cal: dict[str, Any]) -> str:
    f = cal["figures"]
    thr = cal["class_thresholds"]
    extra = ""
    if "auroc" in f:
        extra = f"  calibration AUROC {f['auroc']:.4f}  TPR {f['adversarial_tpr']:.4f}"
    return (
        f"wrote {Path(art_dir) / DETECTOR_FILE}: mode {cal['mode']} ({cal['rule']}), {cal['threshold_kind']} thresholds,"
        f" target FPR {cal['target_fpr']:.3f}, clean FPR {f['clean_fpr']:.4f} on {f['n']} calibration inputs,"
        f" thresholds {min(thr):.2f}..{max(thr):.2f} (global {cal['global_threshold']:.2f}){extra}  [{f['seconds']:.1f}s]"
    )
