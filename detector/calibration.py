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
- ``clean`` (default, this module): the score is the largest surprise over the statistics and its threshold
  comes from clean inputs only. No attack is generated or fitted, so the deployed rule holds its clean FPR
  whatever the attack.
- ``roc``: a logistic combination fitted on attacks generated on the calibration split. It needs the attacks, so
  it belongs to the evaluation harness (``detector/harness/calibration_roc.py``); it starts from ``fit_clean``
  and ends in ``finish`` here, and ``lgm calibrate --mode roc`` runs it.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.gaussians import KINDS as GAUSSIAN_KINDS
from detector.gaussians import SHRINKAGE, ClassGaussians
from detector.layers import split_layers
from detector.scoring import THRESHOLD_UNITS, Detector, deployed_thresholds, lgm_head
from detector.statistics import DEFAULT_GROUPS, GROUPS, ScoreModel, pooled_layers
from detector.store import save_detector
from detector.tails import TailModel
from training.artifacts import load_artifact
from training.batched import batched, model_device
from training.configargs import check_options, option
from training.data import Split, load_card_dataset
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
        list(DEFAULT_GROUPS), "comma list of the statistics scored", group="calibration", choices=GROUPS
    )
    stability_sigma: float = option(
        8 / 255,
        "stability statistic: standard deviation of its noise patterns, in [0, 1] pixels",
        group="calibration",
        gt=0,
        le=1,
    )
    stability_draws: int = option(
        4,
        "stability statistic: noise patterns (forward passes per input besides its own)",
        group="calibration",
        ge=1,
        le=64,
    )
    attacks: list[str] = option(
        ["fgsm", "pgd"], "roc mode: attacks run on the calibration split", group="calibration"
    )
    limit: int | None = option(
        None,
        "roc mode: attack at most N calibration inputs (a seeded random subset of the correct ones)",
        group="calibration",
        ge=1,
    )
    device: str = option("auto", "auto (CUDA when present) | cpu | cuda", group="run")
    seed: int = option(0, "seed of the attacks' random starts", group="run")
    batch_size: int = option(100, "inputs per attack batch", group="run", ge=1, le=100_000)
    budgets: dict[str, Any] | None = (
        None  # roc mode: attack budgets (``detector/harness/budgets.py``'s flags)
    )
    progress: bool = True

    def validate(self) -> None:
        check_options(self)
        if not self.statistics:
            raise ValueError(f"--statistics must name at least one of {', '.join(GROUPS)}")
        if "layers" in self.statistics and "layers-joint" in self.statistics:
            raise ValueError("--statistics takes layers or layers-joint, not both (the same block outputs)")
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


def threshold_at_fpr(neg, target_fpr: float) -> float:
    """Lowest t with mean(neg > t) <= target_fpr (flag when score > t). Only negatives matter: positives move
    TPR, never FPR."""
    neg = np.sort(np.asarray(neg, dtype=np.float64).reshape(-1))[::-1]  # descending
    if len(neg) == 0:
        raise ValueError("no negative (clean) scores to set a threshold on")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    k = int(np.floor(target_fpr * len(neg) + 1e-9))  # at most k negatives may lie above t
    if k >= len(neg):
        return -np.inf
    return float(neg[k])  # neg[0..k-1] > t (ties with neg[k] are not flagged)


# A threshold from clean and adversarial scores (roc mode's rules); None falls back to the target-FPR quantile.
Picker = Callable[[np.ndarray, np.ndarray], float]


def select_thresholds(
    clean: np.ndarray,
    clean_pred: np.ndarray,
    num_classes: int,
    target_fpr: float,
    adv: np.ndarray | None = None,
    adv_pred: np.ndarray | None = None,
    pick: Picker | None = None,
) -> tuple[float, list[float]]:
    """Global score threshold and one per predicted class (the global one for classes with few inputs): the
    target-FPR quantile of the clean scores, or ``pick(clean, adv)`` where a picker and adversarials are given."""

    def one(neg: np.ndarray, pos: np.ndarray | None) -> float:
        use_pick = pick is not None and pos is not None and len(pos) > 0
        t = pick(neg, pos) if use_pick else threshold_at_fpr(neg, target_fpr)  # type: ignore[misc, arg-type]
        return float(np.clip(t, -FINITE, FINITE))

    glob = one(clean, adv)
    per: list[float] = []
    for k in range(num_classes):
        neg = clean[clean_pred == k]
        pos = adv[adv_pred == k] if adv is not None and adv_pred is not None else None
        enough = len(neg) >= MIN_PER_CLASS and (
            pick is None or (pos is not None and len(pos) >= MIN_PER_CLASS)
        )
        per.append(one(neg, pos) if enough else glob)
    return glob, per


def fit_gaussians(model: Classifier, train: Split, cfg: CalibrationConfig) -> ScoreModel:
    """The score model's Gaussians, fitted to the training split (no tails yet)."""
    k = int(model.spec.num_classes)
    _, feats, layers = split_layers(model, train.x)
    layers = pooled_layers(list(cfg.statistics), layers)
    y = train.y.numpy()
    if cfg.gaussians == "head":
        final = ClassGaussians.from_head(lgm_head(model))
    else:
        final = ClassGaussians.fit(feats.numpy(), y, k, tied=cfg.gaussians == "tied", shrinkage=cfg.shrinkage)
    layer_g = [ClassGaussians.fit(h.numpy(), y, k, tied=True, shrinkage=cfg.shrinkage) for h in layers]
    noise = None
    if "stability" in cfg.statistics:  # drawn once, from the seed: the deployed score is deterministic
        gen = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.stability_draws, *(int(s) for s in train.x.shape[1:]))
        noise = torch.randn(shape, generator=gen, dtype=torch.float32) * cfg.stability_sigma
    return ScoreModel(list(cfg.statistics), final, layer_g, noise=noise)


def statistics_of(
    model: Classifier, sm: ScoreModel, x: torch.Tensor, batch_size: int = 500
) -> dict[str, np.ndarray]:
    """pred (N,) and statistics (N, m) of images in [0, 1], batched, as NumPy."""
    dev = model_device(model)
    sm = sm.to(dev)

    def one(xb: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, _, s = sm.forward(model, xb)
        return {"pred": logits.argmax(1), "stats": s.double()}

    return {k: v.numpy() for k, v in batched(one, x, batch_size, dev).items()}


def surprises_of(sm: ScoreModel, stats: np.ndarray) -> np.ndarray:
    return sm.surprises(torch.from_numpy(stats)).numpy()


@dataclass
class CleanFit:
    """What every calibration mode starts from: the model, its score model with the clean tail models fitted,
    and the calibration split's predictions and surprises."""

    cfg: CalibrationConfig
    art: Path
    model: Classifier
    meta: dict[str, Any]
    device: torch.device
    score_model: ScoreModel
    x: torch.Tensor  # (N, C, H, W) calibration images in [0, 1]
    y: torch.Tensor  # (N,)
    pred: np.ndarray  # (N,)
    surprises: np.ndarray  # (N, m) each statistic's surprise on the clean calibration inputs
    t0: float

    @property
    def num_classes(self) -> int:
        return len(self.meta["dataset"]["class_names"])

    def record(self) -> dict[str, Any]:
        """The part of detector.json every mode shares."""
        return {
            "format_version": 2,
            "model_sha256": self.meta["weights_sha256"],
            "dataset": self.meta["dataset"]["name"],
            "split": "calibration",
            "target_fpr": self.cfg.target_fpr,
            "threshold_units": THRESHOLD_UNITS,
            "score": {"gaussians": self.cfg.gaussians, "shrinkage": self.cfg.shrinkage, **self._stability()},
        }

    def _stability(self) -> dict[str, Any]:
        """The stability statistic's settings, when it is scored (its noise patterns go to the tensor file)."""
        if "stability" not in self.cfg.statistics:
            return {}
        return {"stability": {"sigma": self.cfg.stability_sigma, "draws": self.cfg.stability_draws}}

    def clean_detector(self) -> Detector:
        """The clean-mode detector of this fit (what roc mode's adaptive attack aims at), not saved."""
        score = self.surprises.max(1)
        glob, per = select_thresholds(score, self.pred, self.num_classes, self.cfg.target_fpr)
        cal = dict(
            self.record(),
            mode="clean",
            rule="fpr",
            threshold_kind=self.cfg.kind,
            global_threshold=glob,
            class_thresholds=per,
            quantiles=clean_quantiles(score, self.pred, self.num_classes),
        )
        return Detector(self.model, self.meta, cal, self.score_model, self.device)


def fit_clean(art_dir: str | Path, cfg: CalibrationConfig) -> CleanFit:
    """Stages 1 and 2 on clean inputs: Gaussians on the training split, tail models on the calibration split."""
    t0 = time.perf_counter()
    art = Path(art_dir)
    dev = resolve_device(cfg.device)
    model, meta = load_artifact(art, dev)
    lgm_head(model)
    d = meta["dataset"]
    ds = load_card_dataset(d)
    sm = fit_gaussians(model, ds.train, cfg)
    x, y = ds.calibration.float(), ds.calibration.y
    clean = statistics_of(model, sm, x)
    sm.tails = [TailModel.fit(clean["stats"][:, i]) for i in range(clean["stats"].shape[1])]
    return CleanFit(cfg, art, model, meta, dev, sm, x, y, clean["pred"], surprises_of(sm, clean["stats"]), t0)


def finish(
    fit: CleanFit,
    score: np.ndarray,
    thresholds: tuple[float, list[float]],
    figures: dict[str, Any] | None = None,
    attacks: list[str] | None = None,
    budgets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write detector.json and detector.safetensors atomically for clean calibration ``score`` (N,) and the
    chosen (global, per-class) thresholds; returns detector.json's dict."""
    cfg, sm, pred, k = fit.cfg, fit.score_model, fit.pred, fit.num_classes
    glob, per = thresholds
    deployed = deployed_thresholds(cfg.kind, per, glob)
    figures = {"n": len(fit.y), "accuracy": float((pred == fit.y.numpy()).mean()), **(figures or {})}
    figures["clean_fpr"] = float(np.mean(score > deployed[pred]))
    figures["clean_fpr_by_statistic"] = (
        {n: float(np.mean(fit.surprises[:, i] > deployed[pred])) for i, n in enumerate(sm.names)}
        if sm.combine == "max"
        else None
    )
    figures["seconds"] = round(time.perf_counter() - fit.t0, 3)
    ignored = {"progress", "device"} | (set() if cfg.mode == "roc" else {"attacks", "limit", "budgets"})
    cal = dict(
        fit.record(),
        mode=cfg.mode,
        rule=cfg.rule,
        threshold_kind=cfg.kind,
        global_threshold=glob,
        class_thresholds=per,
        attacks=list(attacks or []),
        budgets=dict(budgets or {}),
        figures=figures,
        quantiles=clean_quantiles(score, pred, k),
        seed=cfg.seed,
        config={k2: v for k2, v in asdict(cfg).items() if k2 not in ignored},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return save_detector(fit.art, cal, sm)


def calibrate(art_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Calibrate the artifact in ``art_dir`` in clean mode (options: the fields of CalibrationConfig) and write
    detector.json and detector.safetensors atomically. Returns detector.json's dict. Roc mode is
    ``detector.harness.calibration_roc.calibrate_roc``."""
    cfg = CalibrationConfig(**options)
    cfg.validate()
    if cfg.mode != "clean":
        raise ValueError(
            "calibrate() fits clean mode; --mode roc needs attacks: detector.harness.calibration_roc.calibrate_roc"
        )
    fit = fit_clean(art_dir, cfg)
    score = fit.surprises.max(1)
    return finish(fit, score, select_thresholds(score, fit.pred, fit.num_classes, cfg.target_fpr))


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
