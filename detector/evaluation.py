"""``lgm evaluate``: attack the test split, score every detector side by side, write the report.

Protocol (DESIGN.md "Detection protocol"; Carlini & Wagner 2017; Tramer et al. 2020):
1. Test split only: the first ``--limit`` inputs of a fixed random permutation of it (seeded by ``--seed``).
2. Only inputs that both networks (the L-GM model and its softmax twin) classify correctly are attacked, so all
   detectors face the same clean inputs. Each detector is attacked on its own network (white-box): ``lgm`` on
   the L-GM model, ``msp`` and ``mahalanobis`` on the twin, with the same attack, budget and seed.
3. Negatives are the attacked clean inputs; positives are the successful adversarials (prediction != label).
4. Thresholds come from the calibration split (detector.json for ``lgm``; the target-FPR quantile of clean
   calibration scores for the baselines); figures come from the test split only.
5. Inputs are cut into fixed chunks of ``--batch-size``; chunk c runs on rank c % world_size with seed
   f(seed, attack, network, c), so a ``torchrun`` run gathers on rank 0 exactly what one process computes.
6. Adversarial sets are saved to REPORT_DIR/adversarial/<attack>.safetensors; ``--reuse`` re-scores them
   without re-attacking when the models, budget, seed and inputs match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from detector import roc
from detector.attacks import AttackTarget, LGMObjective, TwinObjective, parse_attack_list, run_attack
from detector.baselines import Baselines, load_baselines, msp_probability_threshold, twin_dir, twin_ready
from detector.budgets import Budgets, budgets_from_args, resolve_budgets
from detector.report import DETECTORS
from detector.scoring import Detector, Scores, deployed_thresholds
from training.artifacts import load_meta
from training.data import load_dataset
from training.distributed import DistInfo, barrier, init_distributed, resolve_device, shutdown

NETWORK_OF = {"lgm": "lgm", "msp": "twin", "mahalanobis": "twin"}
REPORT_FPR = 0.05


@dataclass
class EvalConfig:
    artifact: str
    out: str
    attacks: list[str]
    limit: int | None = None
    budgets: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 100
    device: str = "auto"
    reuse: bool = False
    maha_noise: float = 0.0
    quiet: bool = False
    command: str = ""

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"--batch-size must be in [1, 100000], got {self.batch_size}")
        if not 0.0 <= self.maha_noise <= 1.0:
            raise ValueError(f"--maha-noise must be in [0, 1], got {self.maha_noise}")


# -- metrics ------------------------------------------------------------------------------------------------
def detector_metrics(
    neg: np.ndarray, pos: np.ndarray, neg_flag: np.ndarray, pos_flag: np.ndarray, n_attacked: int
) -> dict[str, Any]:
    """Scores (larger = more adversarial) and deployed-threshold flags of negatives (clean) and positives
    (successful adversarials) -> AUROC, TPR at 5% FPR, detection accuracy, fooled-and-undetected rate."""
    n = len(neg) + len(pos)
    out: dict[str, Any] = {
        "auroc": roc.auroc(neg, pos) if len(pos) and len(neg) else None,
        "tpr_at_5fpr": roc.tpr_at_fpr(neg, pos, REPORT_FPR) if len(pos) and len(neg) else None,
        "detection_accuracy": (int((~neg_flag).sum()) + int(pos_flag.sum())) / n if n else None,
        "tpr_at_threshold": float(pos_flag.mean()) if len(pos) else None,
        "fpr_at_threshold": float(neg_flag.mean()) if len(neg) else None,
        "fooled_and_undetected": int((~pos_flag).sum()) / n_attacked if n_attacked else None,
        "n_positive": int(len(pos)),
        "n_negative": int(len(neg)),
    }
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def worst_case(attacks: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per detector, the worst figure over the given attacks (and which attack)."""
    out: dict[str, Any] = {}
    for det in DETECTORS:
        rows = [
            (a, attacks[a]["detectors"][det])
            for a in names
            if attacks[a]["detectors"][det]["auroc"] is not None
        ]
        if not rows:
            out[det] = None
            continue
        worst: dict[str, Any] = {}
        for key, pick in (
            ("auroc", min),
            ("tpr_at_5fpr", min),
            ("detection_accuracy", min),
            ("fooled_and_undetected", max),
        ):
            a, m = pick(rows, key=lambda r, k=key: r[1][k])
            worst[key] = m[key]
            worst[key + "_attack"] = a
        out[det] = worst
    return out


def scores_and_flags(
    s_lgm: Scores, s_twin: dict[str, torch.Tensor], base: Baselines
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per detector: its scores (larger = more adversarial) and its flags at the deployed threshold."""
    out = {"lgm": (-s_lgm.log_likelihood.double().numpy(), s_lgm.is_adversarial.numpy())}
    for dn in ("msp", "mahalanobis"):
        out[dn] = (s_twin[dn].double().numpy(), (s_twin[dn] > base.thresholds[dn]).numpy())
    return out


# -- sharded attack generation -------------------------------------------------------------------------------
def _chunk_seed(seed: int, attack: str, network: str, chunk: int) -> int:
    h = hashlib.sha256(f"{seed}/{attack}/{network}/{chunk}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def sharded_attack(
    name: str, target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int, batch_size: int,
    device: torch.device, info: DistInfo, progress: bool,
) -> torch.Tensor:  # fmt: skip
    """Attack x (N, C, H, W) chunk by chunk, chunks spread over ranks; every rank returns the full result."""
    n_chunks = (len(x) + batch_size - 1) // batch_size
    mine = list(range(info.rank, n_chunks, info.world_size))
    results: dict[int, torch.Tensor] = {}
    bar = tqdm(
        mine,
        desc=f"{name:>10s} on {target.name}",
        disable=not (progress and info.is_main),
        leave=False,
        unit="batch",
    )
    for c in bar:
        sl = slice(c * batch_size, (c + 1) * batch_size)
        xa = run_attack(
            name, target, x[sl].to(device), y[sl].to(device), b, _chunk_seed(seed, name, target.name, c)
        )
        results[c] = xa.cpu()
    if info.enabled:
        gathered: list[dict[int, torch.Tensor] | None] = [None] * info.world_size
        dist.all_gather_object(gathered, results)
        for part in gathered:
            results.update(part or {})
    if not results:
        return x[:0].clone()
    return torch.cat([results[c] for c in range(n_chunks)])


# -- the run ----------------------------------------------------------------------------------------------
def _sha(meta: dict[str, Any]) -> str:
    return str(meta["weights_sha256"])


def _adv_meta(
    name: str, budget: dict[str, Any], det: Detector, base: Baselines, cfg: EvalConfig, idx: torch.Tensor
) -> dict[str, str]:
    return {
        "attack": name,
        "budget": json.dumps(budget, sort_keys=True),
        "lgm_sha256": _sha(det.meta),
        "twin_sha256": _sha(base.meta),
        "seed": str(cfg.seed),
        "batch_size": str(cfg.batch_size),
        "index_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest(),
    }


def _load_saved(path: Path, expect: dict[str, str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if any(meta.get(k) != v for k, v in expect.items()):
        return None
    return load_file(str(path))


def evaluate(cfg: EvalConfig) -> dict[str, Any] | None:
    """Run the evaluation; rank 0 writes REPORT_DIR and returns the report (other ranks return None)."""
    t_start = time.perf_counter()
    cfg.validate()
    attacks = parse_attack_list(cfg.attacks)
    meta = load_meta(cfg.artifact)
    input_shape = tuple(int(v) for v in meta["arch"]["input_shape"])
    budgets = resolve_budgets(meta["dataset"]["name"], cfg.budgets, input_shape)  # type: ignore[arg-type]
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    try:
        if info.enabled and device.type == "cuda":
            device = resolve_device(cfg.device, info.local_rank)
            torch.cuda.set_device(device)
        return _evaluate(cfg, attacks, budgets, device, info, t_start)
    finally:
        shutdown(info)


def _evaluate(
    cfg: EvalConfig,
    attacks: list[str],
    budgets: Budgets,
    device: torch.device,
    info: DistInfo,
    t_start: float,
):
    det = Detector.load(cfg.artifact, device)
    d = det.meta["dataset"]
    ds = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0)), d.get("image_size"))
    cal = det.calibration
    target_fpr = float(cal["target_fpr"])
    if not twin_ready(cfg.artifact, det.meta):
        if info.is_main and not cfg.quiet:
            print(
                f"training the softmax twin into {twin_dir(cfg.artifact)} (once)", file=sys.stderr, flush=True
            )
        if info.is_main:
            from detector.baselines import ensure_twin

            ensure_twin(cfg.artifact, det.meta, quiet=True)
        barrier(info)
    base = load_baselines(
        cfg.artifact, det.meta, ds.train, ds.calibration, target_fpr, device, cfg.maha_noise
    )

    # -- the clean test inputs ------------------------------------------------------------------------------
    perm = torch.randperm(len(ds.test), generator=torch.Generator().manual_seed(cfg.seed))
    idx = perm[: cfg.limit] if cfg.limit else perm
    x_all, y_all = ds.test.x[idx].float().div(255.0), ds.test.y[idx]
    lgm_clean = det.score(x_all)
    twin_clean = base.scores(x_all)
    correct = (lgm_clean.pred == y_all) & (twin_clean["pred"] == y_all)
    att_idx = idx[correct]
    x, y = x_all[correct], y_all[correct]
    n_att = len(y)
    if n_att == 0:
        raise ValueError("no test input is classified correctly by both networks: nothing to attack")
    keep = correct.numpy()
    neg = {dn: (sc[keep], fl[keep]) for dn, (sc, fl) in scores_and_flags(lgm_clean, twin_clean, base).items()}
    thr_t = torch.from_numpy(
        deployed_thresholds(cal["threshold_kind"], cal["class_thresholds"], cal["global_threshold"])
    ).float()
    targets = {
        "lgm": AttackTarget("lgm", det.model, LGMObjective(det.model, thr_t, budgets.adaptive_margin)),
        "twin": AttackTarget("twin", base.model, TwinObjective(base.model, base.means, base.precision,
                                                               msp_probability_threshold(base), base.thresholds["mahalanobis"])),
    }  # fmt: skip

    out_dir = Path(cfg.out)
    adv_dir = out_dir / "adversarial"
    if info.is_main:
        adv_dir.mkdir(parents=True, exist_ok=True)
    seen = set(cal.get("attacks") or [])
    report_attacks: dict[str, Any] = {}
    hist: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for name in attacks:
        budget = budgets.for_attack(name)
        expect = _adv_meta(name, budget, det, base, cfg, att_idx)
        path = adv_dir / f"{name}.safetensors"
        saved = _load_saved(path, expect) if cfg.reuse else None
        t0 = time.perf_counter()
        if saved is not None:
            adv = {"lgm": saved["lgm"], "twin": saved["twin"]}
        else:
            adv = {net: sharded_attack(name, targets[net], x, y, budgets, cfg.seed, cfg.batch_size, device, info, not cfg.quiet)
                   for net in ("lgm", "twin")}  # fmt: skip
            if info.is_main:
                tensors = {"lgm": adv["lgm"].contiguous(), "twin": adv["twin"].contiguous(), "index": att_idx.contiguous(),
                           "y": y.contiguous()}  # fmt: skip
                tmp = path.with_name(f".{path.name}.tmp")
                save_file(tensors, str(tmp), metadata=expect)
                tmp.replace(path)
        timing[name] = round(time.perf_counter() - t0, 2)
        if not info.is_main:
            continue
        s_lgm = det.score(adv["lgm"])
        s_twin = base.scores(adv["twin"])
        ok = {"lgm": (s_lgm.pred != y).numpy(), "twin": (s_twin["pred"] != y).numpy()}
        pos = scores_and_flags(s_lgm, s_twin, base)
        dets: dict[str, Any] = {}
        for dn in DETECTORS:
            m = ok[NETWORK_OF[dn]]
            dets[dn] = detector_metrics(neg[dn][0], pos[dn][0][m], neg[dn][1], pos[dn][1][m], n_att)
            dets[dn]["network"] = NETWORK_OF[dn]
            dets[dn]["success_rate"] = round(float(m.mean()), 6)
            dets[dn]["n_success"] = int(m.sum())
        delta = (adv["lgm"] - x).flatten(1)[torch.from_numpy(ok["lgm"])]
        report_attacks[name] = {
            "budget": budget,
            "success_rate": round(float(ok["lgm"].mean()), 6),
            "n_success": int(ok["lgm"].sum()),
            "n_attacked": n_att,
            "seen_in_calibration": name in seen,
            "median_l2": round(float(delta.norm(dim=1).median()), 4) if len(delta) else None,
            "median_linf": round(float(delta.abs().amax(1).median()), 4) if len(delta) else None,
            "detectors": dets,
        }
        hist[name] = {"clean": -neg["lgm"][0], "adversarial": -pos["lgm"][0][ok["lgm"]],
                      "roc": {dn: (neg[dn][0], pos[dn][0][ok[NETWORK_OF[dn]]]) for dn in DETECTORS}}  # fmt: skip
    if not info.is_main:
        return None

    names = list(report_attacks)
    unseen = [a for a in names if not report_attacks[a]["seen_in_calibration"]]
    report: dict[str, Any] = {
        "format_version": 1,
        "dataset": d["name"],
        "artifact": str(cfg.artifact),
        "split": "test",
        "n_clean": int(len(idx)),
        "clean_accuracy": round(float((lgm_clean.pred == y_all).float().mean()), 6),
        "twin_clean_accuracy": round(float((twin_clean["pred"] == y_all).float().mean()), 6),
        "n_attacked": n_att,
        "clean_fpr": {dn: round(float(neg[dn][1].mean()), 6) for dn in DETECTORS},
        "thresholds": {
            "lgm": {
                "mode": cal["mode"],
                "rule": cal.get("rule"),
                "kind": cal["threshold_kind"],
                "target_fpr": target_fpr,
                "global": cal["global_threshold"],
                "per_class": cal["class_thresholds"],
                "units": "log-likelihood",
            },
            "msp": {
                "max_softmax_probability_below": msp_probability_threshold(base),
                "target_fpr": target_fpr,
            },
            "mahalanobis": {
                "distance_above": base.thresholds["mahalanobis"],
                "target_fpr": target_fpr,
                "noise": cfg.maha_noise,
            },
        },  # fmt: skip
        "calibration_attacks": sorted(seen),
        "budgets": budgets.to_dict(),
        "attacks": report_attacks,
        "worst_case": {
            "all": worst_case(report_attacks, names),
            "unseen_in_calibration": worst_case(report_attacks, unseen),
        },
        "protocol": {
            "negatives": "clean test inputs classified correctly by both networks",
            "positives": "successful adversarials (prediction != label) against the detector's own network",
            "scores": {
                "lgm": "-log N(f(x); mu_pred, Lambda_pred)",
                "msp": "-max softmax probability (twin)",
                "mahalanobis": "min_k Mahalanobis distance, tied covariance (twin penultimate features)",
            },
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "limit": cfg.limit,
        },  # fmt: skip
        "command": cfg.command,
        "run": {"world_size": info.world_size, "device": str(device)},
        "timing": {"attack_seconds": timing, "total_seconds": round(time.perf_counter() - t_start, 2)},
    }
    from detector.plots import plot_histograms, plot_rocs
    from detector.report import write_report

    figures = [plot_rocs(hist, out_dir / "roc.png"), plot_histograms(hist, out_dir / "loglik_hist.png")]
    report["figures"] = [p.name for p in figures if p is not None]
    write_report(report, out_dir)
    return report


# -- CLI --------------------------------------------------------------------------------------------------
def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "artifact", help="calibrated artifact folder (model.json, model.safetensors, detector.json)"
    )
    g = p.add_argument_group("evaluation")
    g.add_argument("--attacks", default="default", help="comma list of fgsm,bim,pgd,pgdl2,cw,deepfool,apgd,square,"
                   "adaptive,autoattack; 'default' = all but autoattack")  # fmt: skip
    g.add_argument("--out", required=True, help="report folder (report.json, report.md, PNGs, adversarial/)")
    g.add_argument(
        "--limit", type=int, default=None, help="evaluate the first N inputs of the shuffled test split"
    )
    g.add_argument(
        "--reuse", action="store_true", help="re-score adversarial sets saved in OUT instead of re-attacking"
    )
    g.add_argument(
        "--maha-noise", type=float, default=0.0, help="Mahalanobis input-preprocessing step (0: off)"
    )
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="seed of the input order and the attacks")
    r.add_argument(
        "--batch-size", type=int, default=100, help="inputs per attack chunk (also the sharding unit)"
    )
    r.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def evaluate_from_args(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        artifact=args.artifact, out=args.out, attacks=parse_attack_list(args.attacks), limit=args.limit,
        budgets=budgets_from_args(args), seed=args.seed, batch_size=args.batch_size, device=args.device,
        reuse=args.reuse, maha_noise=args.maha_noise, quiet=args.quiet,
        command=" ".join(shlex.quote(a) for a in ["lgm", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("lgm") else "",
    )  # fmt: skip
    if not cfg.command:
        cfg.command = " ".join(shlex.quote(a) for a in ["lgm", "evaluate", *_argv_of(args)])
    report = evaluate(cfg)
    if report is not None:
        from detector.report import table

        print(table(report))
        print(
            f"wrote {Path(cfg.out) / 'report.json'} and report.md  [{report['timing']['total_seconds']:.0f}s]"
        )
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = [args.artifact, "--attacks", args.attacks, "--out", args.out]
    if args.limit:
        out += ["--limit", str(args.limit)]
    return out


__all__ = ["EvalConfig", "add_evaluate_args", "detector_metrics", "evaluate", "worst_case"]
