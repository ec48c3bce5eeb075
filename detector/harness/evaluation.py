"""``lgm evaluate``: attack the test split, score every detector side by side, write the report.

Protocol (Carlini & Wagner 2017; Tramer et al. 2020), in named stages:
1. ``prepare``: the calibrated L-GM detector, the dataset and the softmax twin (trained here, once, if missing).
2. ``fit_baselines``: the baselines chosen by ``--baselines`` on the twin; the ones that need attacks
   (``mahalanobis_full``, ``lid``) get attacks generated on the *calibration* split against the twin, never
   test inputs, and those attacks are made only when a chosen baseline needs them.
3. ``select_inputs``: the first ``--limit`` inputs of a fixed random permutation of the test split; only inputs
   that both networks classify correctly are attacked, so every detector faces the same clean inputs.
4. ``attack``: each attack runs white-box against each detector's own network (``lgm`` on the L-GM model, the
   baselines on the twin) with the same budget and seed; adaptive attacks get the deployed detectors' objective.

With ``--baselines none`` there is no twin: stages 1-2 load only the detector (no twin is trained or read),
the attacked inputs are those the L-GM network classifies correctly, and every attack runs against the L-GM
network alone; the report has the ``lgm`` columns only and says the baselines were not run.
5. ``score``: negatives are the attacked clean inputs, positives the successful adversarials; thresholds come
   from the calibration split; figures come from the test split only (``detector/harness/metrics.py``).
6. ``report``: report.json assembled (``detector/harness/assemble.py``), report.md rendered from it alone
   (``detector/harness/report.py``), and the figures.
Attack chunks are spread over torchrun ranks (``detector/harness/adversarial.py``); rank 0 scores and reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.harness.adversarial import AdversarialSet, load_agreed, save_set, set_metadata, sharded_attack
from detector.harness.assemble import build_report, write_report
from detector.harness.attacks import (
    ADAPTIVE,
    AttackTarget,
    DetectorObjective,
    TwinObjective,
    budget_of,
    parse_attack_list,
)
from detector.harness.baselines import (
    ADAPTIVE_BASELINES,
    NEEDS_ATTACKS,
    Baselines,
    fit_baselines,
    load_twin,
    twin_dir,
    twin_ready,
)
from detector.harness.budgets import Budgets, resolve_budgets
from detector.harness.evaluation_types import Context, EvalConfig, TestInputs
from detector.harness.metrics import DetectorScores, detector_metrics
from detector.scoring import Detector
from training.artifacts import load_meta
from training.batched import batched
from training.data import load_card_dataset
from training.distributed import DistInfo, barrier, init_distributed, resolve_device, shutdown

LGM = "lgm"


# -- stages ---------------------------------------------------------------------------------------------------
def prepare(cfg: EvalConfig, device: torch.device, info: DistInfo) -> Context:
    """Load the detector and dataset; train the softmax twin first if it is missing (rank 0, others wait). With
    no baseline to run, the twin is neither trained nor loaded."""
    det = Detector.load(cfg.artifact, device)
    d = det.meta["dataset"]
    ds = load_card_dataset(d)
    if not cfg.baseline_names:
        return Context(det, ds, None, None)
    if info.is_main:
        if not twin_ready(cfg.artifact, det.meta) and not cfg.quiet:
            print(f"training the softmax twin into {twin_dir(cfg.artifact)} (once)", flush=True)
        twin, tmeta = load_twin(cfg.artifact, det.meta, device)
    barrier(info)
    if not info.is_main:
        twin, tmeta = load_twin(cfg.artifact, det.meta, device)
    return Context(det, ds, twin, tmeta)


def fit_baselines_stage(
    ctx: Context, cfg: EvalConfig, budgets: Budgets, device: torch.device, info: DistInfo
) -> Baselines | None:
    """The chosen baselines on the twin (None when none is chosen). Attack-fitted ones get ``cfg.fit_attacks``
    made on the calibration split, only when a chosen baseline needs them."""
    names, twin, twin_meta = cfg.baseline_names, ctx.twin, ctx.twin_meta
    if twin is None or twin_meta is None or not names:
        return None
    target_fpr = float(ctx.det.calibration["target_fpr"])
    cal = ctx.ds.calibration
    x, y = cal.float(), cal.y
    adv = None
    fit_attacks = cfg.fit_attacks if any(n in NEEDS_ATTACKS for n in names) else []
    if fit_attacks:
        pred = batched(lambda xb: twin(xb).argmax(1), x, 500, device)
        keep = pred == y
        xs, ys = x[keep], y[keep]
        parts = []
        for name in fit_attacks:
            path = Path(cfg.out) / "adversarial" / "calibration" / f"{name}.safetensors"
            meta = set_metadata(
                name,
                budget_of(name, budgets),
                {"twin": str(twin_meta["weights_sha256"])},
                cfg.seed,
                cfg.batch_size,
                keep.nonzero().squeeze(1),
            )
            saved = load_agreed(path, meta, cfg.reuse, info)
            if saved is None:
                xa = sharded_attack(
                    name,
                    AttackTarget("twin", twin),
                    xs,
                    ys,
                    budgets,
                    cfg.seed + 7,
                    cfg.batch_size,
                    device,
                    info,
                    not cfg.quiet,
                )
                if info.is_main:
                    save_set(path, {"twin": xa}, meta)
            else:
                xa = saved["twin"]
            ok = batched(lambda xb: twin(xb).argmax(1), xa, 500, device) != ys
            parts.append(xa[ok])
        adv = torch.cat(parts)
    # Only rank 0 scores; the others attack, so they need every baseline the twin's adaptive objective follows
    # (mahalanobis_full among them), and none that it does not.
    return fit_baselines(
        twin,
        twin_meta,
        ctx.ds,
        target_fpr,
        cfg.maha_noise,
        adv,
        fit_attacks,
        cfg.seed,
        only_differentiable=not info.is_main,
        names=names,
    )


def select_inputs(ctx: Context, base: Baselines | None, cfg: EvalConfig) -> TestInputs:
    perm = torch.randperm(len(ctx.ds.test), generator=torch.Generator().manual_seed(cfg.seed))
    idx = perm[: cfg.limit] if cfg.limit else perm
    x_all, y_all = ctx.ds.test.x[idx].float().div(255.0), ctx.ds.test.y[idx]
    lgm_clean = ctx.det.score(x_all)
    twin_clean = base.scores(x_all) if base is not None else None
    correct = lgm_clean.pred == y_all
    if twin_clean is not None:
        correct &= twin_clean["pred"] == y_all
    if not correct.any():
        by = "both networks" if twin_clean is not None else "the L-GM network"
        raise ValueError(f"no test input is classified correctly by {by}: nothing to attack")
    return TestInputs(idx, y_all, lgm_clean, twin_clean, correct, x_all[correct], y_all[correct])


def attack_targets(det: Detector, base: Baselines | None, budgets: Budgets) -> dict[str, AttackTarget]:
    targets = {LGM: AttackTarget(LGM, det.model, DetectorObjective(det, budgets.adaptive_margin))}
    if base is not None:
        targets["twin"] = AttackTarget("twin", base.model, TwinObjective(base))
    return targets


def attack(
    name: str,
    ctx: Context,
    base: Baselines | None,
    inputs: TestInputs,
    targets: dict[str, AttackTarget],
    budgets: Budgets,
    cfg: EvalConfig,
    device: torch.device,
    info: DistInfo,
) -> AdversarialSet:
    budget = budget_of(name, budgets)
    hashes = {LGM: str(ctx.det.meta["weights_sha256"])}
    if base is not None:
        hashes["twin"] = str(base.meta["weights_sha256"])
    if name in ADAPTIVE:  # only the adaptive attacks depend on the detectors' calibration
        hashes["detector"] = f"{ctx.det.calibration.get('tensors_sha256')}/{ctx.det.calibration['created']}"
        if base is not None:
            twin_known = {n: base.thresholds[n] for n in ADAPTIVE_BASELINES if n in base.thresholds}
            hashes["twin_detectors"] = json.dumps(
                twin_known, sort_keys=True
            )  # what the twin's objective uses
    meta = set_metadata(name, budget, hashes, cfg.seed, cfg.batch_size, inputs.attacked_idx)
    path = Path(cfg.out) / "adversarial" / f"{name}.safetensors"
    t0 = time.perf_counter()
    saved = load_agreed(path, meta, cfg.reuse, info)
    if saved is not None:
        by_net = {net: saved[net] for net in targets}
    else:
        by_net = {
            net: sharded_attack(
                name, t, inputs.x, inputs.y, budgets, cfg.seed, cfg.batch_size, device, info, not cfg.quiet
            )
            for net, t in targets.items()
        }
        if info.is_main:
            save_set(path, {**by_net, "index": inputs.attacked_idx, "y": inputs.y}, meta)
    return AdversarialSet(name, budget, by_net, round(time.perf_counter() - t0, 2))


def clean_scores(inputs: TestInputs, base: Baselines | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per detector: scores and deployed-threshold flags of the attacked clean inputs."""
    keep = inputs.correct.numpy()
    out = {LGM: (inputs.lgm_clean.score.numpy()[keep], inputs.lgm_clean.is_adversarial.numpy()[keep])}
    if base is None or inputs.twin_clean is None:
        return out
    for n in base.names:
        s = inputs.twin_clean[n].numpy()[keep]
        out[n] = (s, s > base.thresholds[n])
    return out


def score(adv: AdversarialSet, ctx: Context, base: Baselines | None, inputs: TestInputs) -> dict[str, Any]:
    """Every detector's scores on one adversarial set, and the L-GM detector's per-statistic surprises."""
    neg = clean_scores(inputs, base)
    s_lgm = ctx.det.score(adv.by_network[LGM])
    ok_lgm = (s_lgm.pred != inputs.y).numpy()
    dets = {LGM: DetectorScores(*neg[LGM], s_lgm.score.numpy(), s_lgm.is_adversarial.numpy(), ok_lgm)}
    if base is not None:
        s_twin = base.scores(adv.by_network["twin"])
        ok_twin = (s_twin["pred"] != inputs.y).numpy()
        for n in base.names:
            s = s_twin[n].numpy()
            dets[n] = DetectorScores(*neg[n], s, s > base.thresholds[n], ok_twin)
    delta = (adv.by_network[LGM] - inputs.x).flatten(1)[torch.from_numpy(ok_lgm)]
    return {"detectors": dets, "lgm_scores": s_lgm, "delta": delta}


# -- the run ----------------------------------------------------------------------------------------------------
def evaluate(cfg: EvalConfig) -> dict[str, Any] | None:
    """Run the evaluation; rank 0 writes REPORT_DIR and returns the report (other ranks return None)."""
    t_start = time.perf_counter()
    cfg.validate()
    attacks = parse_attack_list(cfg.attacks)
    cfg.fit_attacks = parse_attack_list(cfg.fit_attacks) if cfg.fit_attacks else []
    meta = load_meta(cfg.artifact)
    input_shape = tuple(int(v) for v in meta["arch"]["input_shape"])
    budgets = resolve_budgets(meta["dataset"]["name"], cfg.budgets, input_shape)  # type: ignore[arg-type]
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    try:
        if info.enabled and device.type == "cuda":
            device = resolve_device(cfg.device, info.local_rank)
            torch.cuda.set_device(device)
        return run_stages(cfg, attacks, budgets, device, info, t_start)
    finally:
        shutdown(info)


def run_stages(
    cfg: EvalConfig,
    attacks: list[str],
    budgets: Budgets,
    device: torch.device,
    info: DistInfo,
    t_start: float,
) -> dict[str, Any] | None:
    ctx = prepare(cfg, device, info)
    t0 = time.perf_counter()
    base = fit_baselines_stage(ctx, cfg, budgets, device, info)
    fit_seconds = round(time.perf_counter() - t0, 2)
    inputs = select_inputs(ctx, base, cfg)
    targets = attack_targets(ctx.det, base, budgets)
    results: dict[str, Any] = {}
    for name in attacks:
        adv = attack(name, ctx, base, inputs, targets, budgets, cfg, device, info)
        if info.is_main:
            results[name] = (adv, score(adv, ctx, base, inputs))
    if not info.is_main:
        return None
    timing = {
        "baseline_fit_seconds": fit_seconds,
        "attack_seconds": {n: a.seconds for n, (a, _) in results.items()},
    }
    report = build_report(cfg, ctx, base, inputs, budgets, results, timing, info, device)
    report["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
    write_report(report, Path(cfg.out), results, inputs)
    return report


__all__ = ["Context", "EvalConfig", "TestInputs", "detector_metrics", "evaluate"]
