"""``lgm calibrate``: fit the detector to the artifact and set its thresholds; writes detector.json and
detector.safetensors beside the model.

Protocol (Carlini & Wagner 2017; Tramer et al. 2020): each stage has its own data.
1. Gaussians (``detector/gaussians.py``): fitted to the *training* split's features, the last layer's and, with
   the ``layers`` statistics, each tapped block's (averaged over space) - the data the network learned from.
2. Tail models and thresholds: on the held-out *calibration* split, which nothing trained on. Each statistic's
   clean distribution gets a tail model (``detector/tails.py``), and the threshold on the combined score is
   the target-FPR quantile of the clean calibration scores, globally or per predicted class.
3. Every reported figure comes from the test split (``lgm evaluate``).

Modes:
- ``clean`` (default): the score is the largest surprise over the statistics and its threshold comes from clean
  inputs only. No attack is generated or fitted, so the deployed rule holds its clean FPR whatever the attack.
- ``roc``: attacks are generated on the calibration split (correctly classified inputs only; positives are the
  successful adversarials; ``adaptive`` aims at the clean-mode detector), a logistic regression over the
  statistics' surprises is fitted on clean versus adversarial calibration inputs (as Lee et al. 2018 combine
  their layers), and the threshold is picked on its calibration ROC at the target FPR or at Youden's J.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detector.harness import roc
from detector.gaussians import KINDS as GAUSSIAN_KINDS
from detector.gaussians import SHRINKAGE, ClassGaussians
from detector.layers import split_layers
from detector.scoring import THRESHOLD_UNITS, Detector, deployed_thresholds, lgm_head
from detector.statistics import GROUPS, ScoreModel
from detector.store import save_detector
from detector.tails import TailModel
from training.artifacts import load_artifact
from training.configargs import check_options, option
from training.data import Split, load_dataset
from training.distributed import resolve_device
from training.model import Classifier

MODES = ("clean", "roc")
RULES = ("fpr", "youden")
KINDS = ("per_class", "global")
N_LEVELS = 101  # stored quantile levels of the clean score 0.00, 0.01, ..., 1.00
MIN_PER_CLASS = 10  # fewer calibration inputs of a predicted class: use the global threshold for it
FINITE = 1e30  # JSON has no infinities: thresholds are clipped to +-FINITE


@dataclass
class CalibrationConfig:
    """What ``lgm calibrate`` can be told: each field declares its flag, help, group, choices and bounds
    (``training/configargs.py`` builds the command line from them)."""

    mode: str = option(
        "clean",
        "clean (thresholds from clean inputs only) | roc (a logistic combination fitted on attacks generated "
        "on the calibration split)",
        group="calibration",
        choices=MODES,
    )
    target_fpr: float = option(
        0.05, "false-positive rate on clean calibration inputs", group="calibration", gt=0, lt=1
    )
    kind: str = option(
        "per_class",
        "one threshold per predicted class, or one for all",
        group="calibration",
        choices=KINDS,
        flag="--thresholds",
        dashes=True,
    )
    rule: str = option(
        "fpr",
        "fpr (the ROC point at the target FPR) | youden (max TPR - FPR; roc mode)",
        group="calibration",
        choices=RULES,
    )
    gaussians: str = option(
        "tied",
        "the Gaussians scored: refitted to the training features and shrunk, tied across classes or "
        "per-class, or the L-GM head's own",
        group="calibration",
        choices=GAUSSIAN_KINDS,
        dashes=True,
    )
    shrinkage: str = option(
        "ledoit_wolf",
        "covariance shrinkage (sklearn.covariance)",
        group="calibration",
        choices=tuple(SHRINKAGE),
        dashes=True,
    )
    statistics: list[str] = option(
        list(GROUPS), "comma list of the statistics scored", group="calibration", choices=GROUPS
    )
    attacks: list[str] = option(
        ["fgsm", "pgd"], "roc mode: attacks run on the calibration split", group="calibration"
    )
    limit: int | None = option(
        None, "roc mode: attack at most N calibration inputs", group="calibration", ge=1
    )
    device: str = option("auto", "auto (CUDA when present) | cpu | cuda", group="run")
    seed: int = option(0, "seed of the attacks' random starts", group="run")
    batch_size: int = option(100, "inputs per attack batch", group="run", ge=1, le=100_000)
    budgets: dict[str, Any] | None = None  # roc mode: attack budgets (``detector/harness/budgets.py``'s flags)
    progress: bool = True

    def validate(self) -> None:
        check_options(self)
        if not self.statistics:
            raise ValueError(f"--statistics must name at least one of {', '.join(GROUPS)}")
        if self.mode == "roc" and not self.attacks:
            raise ValueError("--attacks must name at least one attack for --mode roc")
        if self.mode == "clean" and self.rule == "youden":
            raise ValueError("--rule youden needs adversarial examples: use it with --mode roc")


def clean_quantiles(score: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per predicted class and pooled quantiles of the clean calibration score at N_LEVELS levels."""
    levels = np.linspace(0.0, 1.0, N_LEVELS)
    glob = [float(q) for q in np.quantile(score, levels)]
    per_class = []
    for k in range(num_classes):
        v = score[pred == k]
        per_class.append([float(q) for q in np.quantile(v, levels)] if len(v) else glob)
    return {
        "levels": [round(float(v), 4) for v in levels],
        "per_class": per_class,
        "global": glob,
        "counts": [int((pred == k).sum()) for k in range(num_classes)],
    }


def _pick(neg: np.ndarray, pos: np.ndarray | None, rule: str, target_fpr: float) -> float:
    """A score threshold T (flag when score > T) from clean and adversarial scores."""
    if rule == "youden" and pos is not None and len(pos):
        t = roc.youden_threshold(neg, pos)
    else:
        t = roc.threshold_at_fpr(neg, target_fpr)
    return float(np.clip(t, -FINITE, FINITE))


def select_thresholds(
    clean: np.ndarray,
    clean_pred: np.ndarray,
    num_classes: int,
    target_fpr: float,
    rule: str = "fpr",
    adv: np.ndarray | None = None,
    adv_pred: np.ndarray | None = None,
) -> tuple[float, list[float]]:
    """Global score threshold and one per predicted class (the global one for classes with few inputs)."""
    glob = _pick(clean, adv, rule, target_fpr)
    per: list[float] = []
    for k in range(num_classes):
        neg = clean[clean_pred == k]
        pos = adv[adv_pred == k] if adv is not None and adv_pred is not None else None
        enough = len(neg) >= MIN_PER_CLASS and (
            rule != "youden" or (pos is not None and len(pos) >= MIN_PER_CLASS)
        )
        per.append(_pick(neg, pos, rule, target_fpr) if enough else glob)
    return glob, per


def fit_gaussians(model: Classifier, train: Split, cfg: CalibrationConfig) -> ScoreModel:
    """The score model's Gaussians, fitted to the training split (no tails yet)."""
    k = int(model.spec.num_classes)
    _, feats, layers = split_layers(model, train.x)
    if "layers" not in cfg.statistics:
        layers = []
    y = train.y.numpy()
    if cfg.gaussians == "head":
        final = ClassGaussians.from_head(lgm_head(model))
    else:
        final = ClassGaussians.fit(feats.numpy(), y, k, tied=cfg.gaussians == "tied", shrinkage=cfg.shrinkage)
    layer_g = [ClassGaussians.fit(h.numpy(), y, k, tied=True, shrinkage=cfg.shrinkage) for h in layers]
    return ScoreModel(list(cfg.statistics), final, layer_g)


@torch.no_grad()
def statistics_of(
    model: Classifier, sm: ScoreModel, x: torch.Tensor, batch_size: int = 500
) -> dict[str, np.ndarray]:
    """pred (N,) and statistics (N, m) of images in [0, 1], batched, as NumPy."""
    dev = next(model.parameters()).device
    sm = sm.to(dev)
    preds, stats = [], []
    for i in range(0, len(x), batch_size):
        logits, _, s = sm.forward(model, x[i : i + batch_size].to(dev).float())
        preds.append(logits.argmax(1).cpu())
        stats.append(s.double().cpu())
    return {"pred": torch.cat(preds).numpy(), "stats": torch.cat(stats).numpy()}


def surprises_of(sm: ScoreModel, stats: np.ndarray) -> np.ndarray:
    return sm.surprises(torch.from_numpy(stats)).numpy()


def fit_logistic(clean: np.ndarray, adv: np.ndarray) -> tuple[list[float], float]:
    """Weights and bias of a logistic regression of adversarial (1) against clean (0) surprises, classes
    balanced (sklearn ``LogisticRegression``)."""
    from sklearn.linear_model import LogisticRegression

    xs = np.concatenate([clean, adv])
    ys = np.concatenate([np.zeros(len(clean)), np.ones(len(adv))])
    lr = LogisticRegression(class_weight="balanced", max_iter=5000).fit(xs, ys)
    return [float(w) for w in lr.coef_[0]], float(lr.intercept_[0])


def attack_calibration_split(
    det: Detector, dataset: str, x: torch.Tensor, y: torch.Tensor, pred: np.ndarray, cfg: CalibrationConfig
) -> dict[str, Any]:
    """Attack the correctly classified calibration inputs with each of ``cfg.attacks``; return the successful
    adversarials' statistics (pooled) and per-attack figures. ``adaptive`` aims at ``det``."""
    from detector.harness.attacks import AttackTarget, DetectorObjective, run_attack
    from detector.harness.budgets import resolve_budgets

    names = cfg.attacks  # expanded by calibrate()
    b = resolve_budgets(dataset, cfg.budgets, tuple(x.shape[1:]))
    keep = torch.from_numpy(pred == y.numpy()).nonzero().squeeze(1)[: cfg.limit]
    xs, ys = x[keep], y[keep]
    target = AttackTarget("lgm", det.model, DetectorObjective(det, b.adaptive_margin))
    stats, preds, figures = [], [], {}
    for name in names:
        parts = []
        chunks = range(0, len(xs), cfg.batch_size)
        for i in tqdm(chunks, desc=f"calibrate {name}", disable=not cfg.progress, leave=False, unit="batch"):
            xb, yb = xs[i : i + cfg.batch_size].to(det.device), ys[i : i + cfg.batch_size].to(det.device)
            parts.append(run_attack(name, target, xb, yb, b, cfg.seed * 1_000_003 + i).cpu())
        s = statistics_of(det.model, det.score_model, torch.cat(parts) if parts else xs[:0])
        ok = s["pred"] != ys.numpy()
        stats.append(s["stats"][ok])
        preds.append(s["pred"][ok])
        figures[name] = {"n_attacked": len(ys), "n_success": int(ok.sum()), "success_rate": float(ok.mean())}
    return {
        "stats": np.concatenate(stats),
        "pred": np.concatenate(preds),
        "per_attack": stats,
        "attacks": names,
        "budgets": {n: b.for_attack(n) for n in names},
        "figures": figures,
    }


def calibrate(art_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Calibrate the artifact in ``art_dir`` (options: the fields of CalibrationConfig) and write detector.json
    and detector.safetensors atomically. Returns detector.json's dict."""
    cfg = CalibrationConfig(**options)
    cfg.validate()
    t0 = time.perf_counter()
    art = Path(art_dir)
    dev = resolve_device(cfg.device)
    model, meta = load_artifact(art, dev)
    lgm_head(model)
    d = meta["dataset"]
    if cfg.mode == "roc":  # fail on a bad attack list or budget before any work
        from detector.harness.attacks import parse_attack_list
        from detector.harness.budgets import resolve_budgets

        cfg.attacks = parse_attack_list(cfg.attacks)
        resolve_budgets(d["name"], cfg.budgets, tuple(int(v) for v in meta["arch"]["input_shape"]))
    ds = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0)), d.get("image_size"))
    k = len(d["class_names"])
    sm = fit_gaussians(model, ds.train, cfg)
    x, y = ds.calibration.float(), ds.calibration.y
    clean = statistics_of(model, sm, x)
    pred = clean["pred"]
    sm.tails = [TailModel.fit(clean["stats"][:, i]) for i in range(clean["stats"].shape[1])]
    s_clean = surprises_of(sm, clean["stats"])
    score = s_clean.max(1)
    figures: dict[str, Any] = {"n": len(y), "accuracy": float((pred == y.numpy()).mean())}
    base = {
        "format_version": 2,
        "model_sha256": meta["weights_sha256"],
        "dataset": d["name"],
        "split": "calibration",
        "target_fpr": cfg.target_fpr,
        "threshold_units": THRESHOLD_UNITS,
        "score": {"gaussians": cfg.gaussians, "shrinkage": cfg.shrinkage},
    }
    adv_score = adv_pred = None
    used: list[str] = []
    budgets_used: dict[str, Any] = {}
    if cfg.mode == "roc":
        glob0, per0 = select_thresholds(score, pred, k, cfg.target_fpr)
        cal0 = dict(
            base,
            mode="clean",
            rule="fpr",
            threshold_kind=cfg.kind,
            global_threshold=glob0,
            class_thresholds=per0,
            quantiles=clean_quantiles(score, pred, k),
        )
        det0 = Detector(model, meta, cal0, sm, dev)
        adv = attack_calibration_split(det0, d["name"], x, y, pred, cfg)
        used, budgets_used, figures["attacks"] = adv["attacks"], adv["budgets"], adv["figures"]
        s_adv = surprises_of(sm, adv["stats"])
        if len(s_adv) == 0:
            raise ValueError("no attack succeeded on the calibration split: nothing to fit roc mode on")
        sm.combine = "logistic"
        sm.weights, sm.bias = fit_logistic(s_clean, s_adv)
        score = s_clean @ np.asarray(sm.weights) + sm.bias
        adv_score, adv_pred = s_adv @ np.asarray(sm.weights) + sm.bias, adv["pred"]
        for name, st in zip(used, adv["per_attack"], strict=True):
            a = surprises_of(sm, st) @ np.asarray(sm.weights) + sm.bias if len(st) else np.zeros(0)
            figures["attacks"][name]["auroc"] = roc.auroc(score, a) if len(a) else None
    glob, per = select_thresholds(score, pred, k, cfg.target_fpr, cfg.rule, adv_score, adv_pred)
    deployed = deployed_thresholds(cfg.kind, per, glob)
    figures["clean_fpr"] = float(np.mean(score > deployed[pred]))
    figures["clean_fpr_by_statistic"] = (
        {n: float(np.mean(s_clean[:, i] > deployed[pred])) for i, n in enumerate(sm.names)}
        if sm.combine == "max"
        else None
    )
    if adv_score is not None:
        figures["adversarial_tpr"] = float(np.mean(adv_score > deployed[adv_pred]))
        figures["auroc"] = roc.auroc(score, adv_score)
    figures["seconds"] = round(time.perf_counter() - t0, 3)
    ignored = {"progress", "device"} | (set() if cfg.mode == "roc" else {"attacks", "limit", "budgets"})
    cal = dict(
        base,
        mode=cfg.mode,
        rule=cfg.rule,
        threshold_kind=cfg.kind,
        global_threshold=glob,
        class_thresholds=per,
        attacks=used,
        budgets=budgets_used,
        figures=figures,
        quantiles=clean_quantiles(score, pred, k),
        seed=cfg.seed,
        config={k2: v for k2, v in asdict(cfg).items() if k2 not in ignored},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return save_detector(art, cal, sm)


def summary_line(art_dir: str | Path, cal: dict[str, Any]) -> str:
    f = cal["figures"]
    thr = cal["class_thresholds"]
    s = cal["score"]
    extra = ""
    if "auroc" in f:
        extra = f"  calibration AUROC {f['auroc']:.4f}  TPR {f['adversarial_tpr']:.4f}"
    return (
        f"wrote {Path(art_dir) / 'detector.json'}: mode {cal['mode']} ({cal['rule']}), {cal['threshold_kind']} thresholds,"
        f" score {s['combine']} over {','.join(s['statistics'])} ({s['gaussians']} Gaussians, {s['shrinkage']}),"
        f" target FPR {cal['target_fpr']:.3f}, clean FPR {f['clean_fpr']:.4f} on {f['n']} calibration inputs,"
        f" thresholds {min(thr):.2f}..{max(thr):.2f} (global {cal['global_threshold']:.2f}){extra}  [{f['seconds']:.1f}s]"
    )
