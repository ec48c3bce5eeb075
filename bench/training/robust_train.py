"""Benchmark: how robust adversarially trained models are, measured on the test split of their artifacts.

For each artifact, on the same random subset of the test split (the split is ordered by class), at L-inf eps:

- clean accuracy, and the clean false-positive rate of the likelihood rule below;
- ``PGD-k``: robust accuracy under one PGD with the steps the model was trained with (10 for plain models), to
  see whether the training attack is as strong as a 40-step one;
- ``pgd40``: robust accuracy under one 40-step PGD (cross-entropy, random start, step 2.5 eps / steps);
- ``pgd100xR``: under a 100-step PGD with R random restarts (an input counts as broken if any restart breaks it);
- ``robust``: accuracy under the worst of the attacks above, per input;
- ``detect-or-correct``: the fraction of inputs that, after the worst of those attacks and of a likelihood-aware
  PGD (100 steps towards each of the 3 most likely wrong classes: minimise d_t(f(x')) so that the feature lands on
  the wrong class's Gaussian, where the likelihood detector accepts it), end classified correctly or flagged.
  Flagged: log p(f | predicted class) below that class's 5th percentile on clean calibration inputs (the
  detector's per-class clean-FPR rule; ``lgm evaluate`` measures the deployed detector itself).

Only clean inputs classified correctly are attacked (the others count as failures of robust accuracy and as
"detect-or-correct" only if flagged). 95% Wilson intervals in brackets.

    .venv/bin/python bench/training/robust_train.py artifacts/mnist5k-robust --limit 500
    .venv/bin/python bench/training/robust_train.py runs/pull runs/push --limit 300 --restarts 3

It writes ``report.json`` and ``provenance.json`` into ``--out`` (reports/bench_robust_train), which
``bench/records/results.py collect robust_train DIR`` publishes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from detector.harness.metrics import wilson as harness_wilson
from training.adversarial import pgd_linf
from training.artifacts import atomic_write_json, load_artifact
from training.data import load_dataset
from training.lgm import LGMHead
from training.model import Classifier


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k / n (detector/harness/metrics.py; (0, 1) when n is 0)."""
    return tuple(harness_wilson(k, n) or (0.0, 1.0))  # type: ignore[return-value]


def batched(fn, *tensors: torch.Tensor, size: int = 250) -> torch.Tensor:
    return torch.cat([fn(*(t[i : i + size] for t in tensors)) for i in range(0, len(tensors[0]), size)])


class Judge:
    """Predictions and likelihood flags of one model: flag when log p(f | pred) < that class's threshold."""

    def __init__(
        self, model: Classifier, x_cal: torch.Tensor, y_cal: torch.Tensor, fpr: float = 0.05
    ) -> None:
        self.model = model
        with torch.no_grad():
            ll, pred = self.loglik(x_cal)
        self.thr = torch.full((model.spec.num_classes,), -math.inf)
        for c in range(len(self.thr)):
            s = ll[(pred == c) & (y_cal == c)]
            if len(s):
                self.thr[c] = torch.quantile(s, fpr)

    @torch.no_grad()
    def loglik(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.model(x, return_features=True)
        pred = logits.argmax(1)
        head = self.model.head
        if isinstance(head, LGMHead):
            ll = head.log_likelihood(feats).gather(1, pred[:, None]).squeeze(1)
        else:  # softmax head: no likelihood, nothing is flagged
            ll = torch.full((len(x),), math.inf)
        return ll, pred

    def judge(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred (N,), flagged (N,))"""
        ll, pred = batched(lambda b: torch.stack(self.loglik(b), 1), x).unbind(1)
        pred = pred.long()
        return pred, ll < self.thr[pred]


def pgd_ce(model: Classifier, x, y, eps: float, steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return pgd_linf(
        lambda xa: F.cross_entropy(model(xa), y, reduction="sum"), x, eps, steps, 2.5 * eps / steps, gen
    )


def pgd_to_gaussian(model: Classifier, x, target, eps: float, steps: int, seed: int) -> torch.Tensor:
    """Pull the feature onto the target class's Gaussian: minimise d_t(f(x'))."""
    head = model.head
    assert isinstance(head, LGMHead)
    gen = torch.Generator().manual_seed(seed)

    def loss(xa: torch.Tensor) -> torch.Tensor:
        d = head.half_mahalanobis(model.features(xa))
        return -d.gather(1, target[:, None]).sum()

    return pgd_linf(loss, x, eps, steps, 2.5 * eps / steps, gen)


def evaluate(art: Path, args: argparse.Namespace) -> dict[str, torch.Tensor | float | str]:
    model, meta = load_artifact(art, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    ds = load_dataset(meta["dataset"]["name"], meta["dataset"].get("root"), meta["dataset"]["split_seed"])
    judge = Judge(model, ds.calibration.float(), ds.calibration.y)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds.test), generator=g)[: args.limit]
    x, y = ds.test.x[idx].float() / 255.0, ds.test.y[idx]
    pred, flagged = judge.judge(x)
    correct = pred == y
    res: dict[str, torch.Tensor | float | str] = {"clean": correct, "clean_fpr": flagged[correct]}
    xs, ys = x[correct], y[correct]
    t0 = time.perf_counter()
    broken = torch.zeros(len(xs), dtype=torch.bool)  # misclassified by some attack
    evaded = torch.zeros(len(xs), dtype=torch.bool)  # misclassified and not flagged by some attack

    def record(xa: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        p, f = judge.judge(xa)
        wrong = torch.zeros(len(xs), dtype=torch.bool)
        wrong[keep] = p != ys[keep]
        ev = torch.zeros(len(xs), dtype=torch.bool)
        ev[keep] = (p != ys[keep]) & ~f
        broken.logical_or_(wrong)
        evaded.logical_or_(ev)
        return wrong

    all_ = torch.ones(len(xs), dtype=torch.bool)
    adv = meta.get("adversarial") or {}
    k = int(adv.get("adv_steps", 10))  # the training attack's own steps: is it as strong as 40?
    wk = record(batched(lambda a, b: pgd_ce(model, a, b, args.eps, k, 2), xs, ys), all_)
    w40 = record(batched(lambda a, b: pgd_ce(model, a, b, args.eps, 40, 1), xs, ys), all_)
    w100 = torch.zeros(len(xs), dtype=torch.bool)
    for r in range(args.restarts):
        keep = ~w100
        if keep.any():
            xa = batched(lambda a, b, r=r: pgd_ce(model, a, b, args.eps, 100, 100 + r), xs[keep], ys[keep])
            w100 |= record(xa, keep)
    if model.is_lgm:
        with torch.no_grad():
            logits = batched(lambda a: model(a), xs)
        wrong_rank = logits.masked_fill(F.one_hot(ys, logits.shape[1]).bool(), -math.inf).argsort(
            1, descending=True
        )
        for t in range(args.targets):
            keep = ~evaded
            if keep.any():
                tgt = wrong_rank[keep, t]
                xa = batched(
                    lambda a, b, t=t: pgd_to_gaussian(model, a, b, args.eps, 100, 200 + t), xs[keep], tgt
                )
                record(xa, keep)
    n_wrong_clean = (~correct).sum()
    pad = torch.zeros(int(n_wrong_clean), dtype=torch.bool)
    res["pgd_train"] = torch.cat([~wk, pad])
    res["train_steps"] = k
    res["pgd40"] = torch.cat([~w40, pad])
    res["pgd100"] = torch.cat([~w100, pad])
    res["robust"] = torch.cat([~broken, pad])
    res["detect_or_correct"] = torch.cat([~evaded, flagged[~correct]])
    res["seconds"] = time.perf_counter() - t0
    res["name"] = (
        f"{art.name}: {adv.get('adversarial', 'none')}"
        + (f" {adv['adv_steps']} steps, {adv['adv_lkd']}" if adv else "")
        + f", {meta['train']['epochs']} epochs, {meta['metrics']['seconds_per_epoch'] * meta['train']['epochs'] / 60:.1f} min"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", help="artifact folders")
    p.add_argument("--limit", type=int, default=500, help="random test inputs (the same for every artifact)")
    p.add_argument("--eps", type=float, default=0.3, help="L-inf radius in [0, 1] pixels")
    p.add_argument("--restarts", type=int, default=3, help="restarts of the 100-step PGD")
    p.add_argument("--targets", type=int, default=3, help="wrong classes tried by the likelihood-aware PGD")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset")
    p.add_argument(
        "--out", default="reports/bench_robust_train", help="folder of report.json + provenance.json"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, code = time.perf_counter(), provenance.checkout()  # the code measured is the code at the start
    rows = [counts(Path(a), evaluate(Path(a), args)) for a in args.artifacts]
    rep = {
        "benchmark": "robust_train",
        "eps": args.eps,
        "limit": args.limit,
        "seed": args.seed,
        "threads": args.threads,
        "restarts": args.restarts,
        "targets": args.targets,
        "rows": rows,
    }
    print("\n" + table(rep))
    command = " ".join(
        [".venv/bin/python", "bench/training/robust_train.py", *(argv if argv is not None else sys.argv[1:])]
    )
    atomic_write_json(Path(args.out) / "report.json", rep)
    prov = provenance.write(args.out, command, time.perf_counter() - t0, None, code)
    print(f"\ncommand: {command}")
    print(
        f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect robust_train {args.out})"
    )
    return 0


COLUMNS = ("clean", "clean_fpr", "pgd_train", "pgd40", "pgd100", "robust", "detect_or_correct")


def counts(art: Path, res: dict) -> dict:
    """One model's row of the report: each column as [successes, inputs], for Wilson intervals."""
    row = {c: [int(res[c].sum()), len(res[c])] for c in COLUMNS}
    row.update(name=res["name"], artifact=str(art), train_steps=res["train_steps"], seconds=res["seconds"])
    return row


def _cell(kn: list[int]) -> str:
    k, n = kn
    lo, hi = wilson(k, n)
    return f"{100 * k / max(n, 1):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(rep: dict) -> str:
    """The benchmark's table from its report.json alone: what it prints and what docs/results/training.md shows."""
    lines = [
        f"L-inf eps {rep['eps']}, {rep['limit']} random test inputs (seed {rep['seed']}), CPU, {rep['threads']} "
        "threads",
        "",
        f"| model | clean acc | clean FPR | PGD-k (k: training steps) | PGD-40 | PGD-100 x{rep['restarts']} | robust "
        "(worst) | detect-or-correct | attack s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        lines.append(
            f"| {r['name']} | {_cell(r['clean'])} | {_cell(r['clean_fpr'])} | k={r['train_steps']}: "
            f"{_cell(r['pgd_train'])} | {_cell(r['pgd40'])} | {_cell(r['pgd100'])} | {_cell(r['robust'])} | "
            f"{_cell(r['detect_or_correct'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
