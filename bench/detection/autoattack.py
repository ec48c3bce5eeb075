"""Benchmark: AutoAttack (Croce & Hein, ICML 2020) on the test split of the dataset an artifact was trained
on, at the dataset's L-inf budget, beside the rows published for that dataset.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks": the
standard version runs, in this order and each only on the inputs every earlier attack failed on,

- APGD-CE: 100 iterations, 1 restart, rho 0.75;
- APGD-T: the targeted DLR loss, 100 iterations, each of the min(K - 1, 9) most likely wrong classes as target
  (K: the network's classes; 9 for MNIST and CIFAR-10, as in the authors' release; the loss needs K >= 4);
- FAB-T: 100 iterations, min(K - 1, 9) target classes, 1 restart (alpha_max 0.1, eta 1.05, beta 0.9);
- Square: 5,000 queries, p_init 0.8, the schedule not rescaled to the query budget.

Each attack is torchattacks 3.5.1's own (``APGD``, ``APGDT``, ``FAB``, ``Square``) with the authors' standard
settings, chained here; torchattacks' ``AutoAttack`` class is not used, because it leaves APGD, APGD-T and
FAB at its default 10 iterations instead of 100 and rescales Square's schedule (docs/mnist-benchmark.md lists
the differences). The network's logits are given to the attacks in float64 (``Float64Logits``: the L-GM
head's logits are hundreds of nats apart and a float32 cross-entropy saturates). An input counts as robust
when it is classified correctly clean and after every attack; every adversarial example is checked to lie in
the L-inf ball and in [0, 1] and to be misclassified by the plain float32 network.

The data are the artifact's own: its card (model.json: the dataset's name, root, split seed, class names)
loaded with the splits it was trained on; ``--data-root`` replaces the card's root when the files moved or
the recorded root is relative. The budget defaults to the dataset's (``detector/harness/budgets.py``: L-inf
0.3 for grey digits, 8/255 for colour images); ``--eps`` overrides it. Beside our row
(``bench/detection/autoattack_rows.py``):

- MNIST (official test set, L-inf 0.3): Madry et al. 2018, TRADES and Gowal et al. 2020 as Croce & Hein and
  RobustBench publish them; target robust accuracy >= 93% (above TRADES' 92.81%), clean accuracy >= 99.0%;
- CIFAR-10 (the ``cifar10`` dataset or an image folder of it, L-inf 8/255): RobustBench's rows without extra
  data, Wong et al. 2020 (PreAct ResNet-18), Engstrom et al. 2019 (ResNet-50), Rice et al. 2020
  (WideResNet-34-20), each network's parameter count beside ours; target robust accuracy >= 40%, set for
  an adversarially trained CIFAR-10 model with a network far smaller than theirs;
- any other dataset or budget: our row alone.

Inputs: the first N (default 1,000) of a fixed permutation of the test split,
``numpy.random.default_rng(seed).permutation(test split size)`` (seed 0). The run is resumable in chunks:
each chunk [start, start + limit) of that order is saved in --cache as JSON as soon as it is done, so locked
runs can stay short; the table is printed over every input of the first N that any chunk has covered (the
count is stated). Report: ``reports/autoattack`` for MNIST, ``reports/autoattack_cifar10`` for CIFAR-10,
``reports/autoattack_NAME`` otherwise; chunks in its ``chunks/``.

    .venv/bin/python bench/detection/autoattack.py models/mnist-robust --start 0 --limit 200  # one chunk
    .venv/bin/python bench/detection/autoattack.py models/mnist-robust --report-only  # the table so far
    .venv/bin/python bench/detection/autoattack.py models/cifar10 --data-root data/cifar10 --limit 100
    .venv/bin/python bench/detection/autoattack.py models/cifar10 --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from bench.detection import autoattack_rows as rows
from bench.detection.autoattack_rows import TARGET_HEADER as TARGET_HEADER  # re-exported: detector_suite.py
from bench.detection.autoattack_rows import format_report as format_report  # and bench/records' renderers
from bench.detection.autoattack_rows import pct as pct
from bench.detection.autoattack_rows import target_row as target_row
from bench.detection.autoattack_rows import wilson as wilson
from detector.gradient import Float64Logits
from training.artifacts import atomic_write_json, load_artifact
from training.data import load_card_dataset

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


MAX_TARGETS = 9  # the standard version's target classes (Croce & Hein 2020)


def make_attacks(model: torch.nn.Module, eps: float, num_classes: int, seed: int, steps: int, queries: int):
    """The standard AutoAttack ensemble from torchattacks' attacks with the authors' settings; APGD-T and
    FAB-T target the ``min(num_classes - 1, 9)`` most likely wrong classes (the standard version's 9 targets,
    fewer where there are fewer wrong classes; CIFAR-100 keeps 9, not 99). APGD-CE, APGD-T and Square see float64
    logits; FAB-T sees the network's own float32 logits (torchattacks' FAB mixes its float32 buffers with the
    logits' dtype and fails on float64; it linearises logit differences, which do not saturate as a softmax
    does)."""
    import torchattacks as ta

    if num_classes < 4:  # the targeted DLR loss divides by z_1 - (z_3 + z_4) / 2
        raise ValueError(f"AutoAttack's APGD-T needs at least 4 classes, the model has {num_classes}")
    net = Float64Logits(model)
    attacks = {
        "apgd-ce": ta.APGD(
            net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce", rho=0.75
        ),
        "apgd-t": ta.APGDT(
            net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=num_classes
        ),
        "fab-t": ta.FAB(
            model,
            norm="Linf",
            eps=eps,
            steps=steps,
            n_restarts=1,
            seed=seed,
            multi_targeted=True,
            n_classes=num_classes,
        ),
        "square": ta.Square(
            net,
            norm="Linf",
            eps=eps,
            n_queries=queries,
            n_restarts=1,
            p_init=0.8,
            seed=seed,
            resc_schedule=False,
        ),
    }
    for name in ("apgd-t", "fab-t"):
        attacks[name].n_target_classes = min(num_classes - 1, MAX_TARGETS)
    return attacks


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def run_autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int = 0,
    steps: int = 100,
    queries: int = 5000,
    batch: int = 250,
) -> dict:
    """x (N, C, H, W) in [0, 1], y (N,) -> {"clean": [bool]*N, "robust": [bool]*N, "broken_by": [name|None]*N,
    "robust_after": {attack: count robust after it}, "seconds": {attack: s}}. Checks every adversarial."""
    model.eval()
    attacks = make_attacks(model, eps, int(model.spec.num_classes), seed, steps, queries)
    clean = predict(model, x) == y
    robust = clean.clone()
    broken_by: list[str | None] = [None] * len(y)
    after, seconds = {}, {}
    for name, atk in attacks.items():
        t0 = time.perf_counter()
        todo = torch.nonzero(robust).flatten()
        for i in range(0, len(todo), batch):
            idx = todo[i : i + batch]
            x_adv = atk(x[idx], y[idx]).detach()
            inside = (x_adv - x[idx]).abs().flatten(1).amax(1) <= eps + 1e-5
            inside &= (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
            fooled = (predict(model, x_adv) != y[idx]) & inside
            for j in idx[fooled].tolist():
                robust[j] = False
                broken_by[j] = name
        after[name] = int(robust.sum())
        seconds[name] = round(time.perf_counter() - t0, 1)
    return {
        "clean": clean.tolist(),
        "robust": robust.tolist(),
        "broken_by": broken_by,
        "robust_after": after,
        "seconds": seconds,
    }


def order(seed: int, total: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(total)


def cache_dir(args: argparse.Namespace) -> Path:
    name = f"{Path(args.artifact).name}-eps{args.eps:g}-seed{args.seed}"
    if (args.steps, args.queries) != (100, 5000):  # a non-standard run never mixes with the standard one
        name += f"-steps{args.steps}-queries{args.queries}"
    return args.cache / name


def run_chunk(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, meta = load_artifact(args.artifact, "cpu")
    ds = load_card_dataset(meta["dataset"], getattr(args, "data_root", None))
    perm = order(args.seed, len(ds.test))  # the test split's own size
    stop = min(args.start + args.limit, args.n)
    idx = perm[args.start : stop]
    x, y = ds.test.float()[idx], ds.test.y[idx]
    t0 = time.perf_counter()
    res = run_autoattack(model, x, y, args.eps, args.seed, args.steps, args.queries)
    res.update(
        start=args.start,
        stop=stop,
        test_indices=idx.tolist(),
        wall_seconds=round(time.perf_counter() - t0, 1),
        threads=args.threads,
        code=provenance.checkout(),  # the commit this chunk was measured at
    )
    out = cache_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"chunk-{args.start:05d}-{stop:05d}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, path)
    print(
        f"chunk [{args.start}, {stop}): clean {sum(res['clean'])}/{len(idx)}, robust {sum(res['robust'])}, "
        f"{res['wall_seconds']} s ({res['seconds']})",
        flush=True,
    )


def collect(args: argparse.Namespace) -> dict:
    """Merge the chunks of the first N inputs (a later chunk never overrides an input already covered)."""
    clean: dict[int, bool] = {}
    robust: dict[int, bool] = {}
    broken: dict[int, str | None] = {}
    seconds: dict[str, float] = dict.fromkeys(ATTACKS, 0.0)
    wall = 0.0
    commits: set[str] = set()
    for path in sorted(cache_dir(args).glob("chunk-*.json")):
        c = json.loads(path.read_text())
        commits.add((c.get("code") or {}).get("commit") or "unrecorded")
        for pos, (ok, rob, by) in enumerate(zip(c["clean"], c["robust"], c["broken_by"], strict=True)):
            k = c["start"] + pos
            if k < args.n and k not in clean:
                clean[k], robust[k], broken[k] = ok, rob, by
        for a in ATTACKS:
            seconds[a] += c["seconds"].get(a, 0.0)
        wall += c["wall_seconds"]
    return {
        "clean": clean,
        "robust": robust,
        "broken_by": broken,
        "seconds": seconds,
        "wall": wall,
        "commits": sorted(commits),
    }


def verdict(lo: float, hi: float, target: float) -> str:
    return "met" if lo >= target else ("missed" if hi < target else "not decided at this sample size")


def params(artifact: str) -> int:
    """Our network's parameter count (every parameter of the loaded model, the L-GM head's means included)."""
    model, _ = load_artifact(artifact, "cpu")
    return sum(p.numel() for p in model.parameters())


def default_eps(card: dict) -> float:
    """The dataset's L-inf budget (``detector/harness/budgets.py``: 0.3 grey digits, 8/255 colour images)."""
    from detector.harness.budgets import default_budgets

    return default_budgets(card["name"]).eps


def report(args: argparse.Namespace) -> dict:
    """Merge the chunks into ``--out/report.json`` (+ ``provenance.json``) and print its tables."""
    t0 = time.perf_counter()
    got = collect(args)
    keys = sorted(got["clean"])
    n = len(keys)
    if n == 0:
        raise SystemExit(f"{cache_dir(args)}: no chunk yet (run with --start 0 --limit L)")
    n_clean = sum(got["clean"][k] for k in keys)
    n_rob = sum(got["robust"][k] for k in keys)
    model_json = json.loads((Path(args.artifact) / "model.json").read_text())
    card, shape = model_json["dataset"], model_json.get("arch", {}).get("input_shape")
    lit = rows.published(rows.literature(card, shape), args.eps)
    left = n_clean
    robust_after = {}
    for a in ATTACKS:
        left -= sum(1 for k in keys if got["broken_by"][k] == a)
        robust_after[a] = left
    lo, hi = wilson(n_rob, n)
    target = lit["target"]
    out = {
        "benchmark": "autoattack",
        "artifact": str(args.artifact),
        "weights_sha256": model_json["weights_sha256"],
        "split": rows.title(card, shape),
        "items": rows.items(card),
        "eps": args.eps,
        "norm": "Linf",
        "version": "standard" if (args.steps, args.queries) == (100, 5000) else "custom",
        "steps": args.steps,
        "queries": args.queries,
        "implementation": "torchattacks 3.5.1 APGD / APGDT / FAB / Square, authors' standard settings",
        "order": f"numpy.random.default_rng({args.seed}).permutation({card['sizes']['test']})",
        "n": n,
        "n_asked": args.n,
        "n_clean": n_clean,
        "n_robust": n_rob,
        "first_n_contiguous": keys == list(range(n)),
        "clean_accuracy": n_clean / n,
        "clean_interval": wilson(n_clean, n),
        "robust_accuracy": n_rob / n,
        "robust_interval": (lo, hi),
        "robust_after": robust_after,
        "attack_seconds": got["seconds"],
        "wall_seconds": got["wall"],
        "published": lit["rows"],
        "target_robust_accuracy": target,
        "target_note": lit.get("target_note", ""),
        "target": None if target is None else verdict(lo, hi, target),
    }
    if "arch" in model_json:  # our network beside the published ones (their rows carry theirs)
        out["architecture"] = rows.architecture(model_json["arch"])
        out["params"] = params(args.artifact)
    if lit["source"]:
        out["published_source"] = lit["source"]
    print(format_report(out))
    dest = Path(args.out)
    atomic_write_json(dest / "report.json", out)
    cmd = f".venv/bin/python bench/detection/autoattack.py {args.artifact} --report-only"
    if args.n != 1000:
        cmd += f" --n {args.n}"
    if args.eps != default_eps(card):
        cmd += f" --eps {args.eps}"
    if Path(args.cache) != rows.default_out(card, shape) / "chunks":
        cmd += f" --cache {args.cache}"
    if Path(args.out) != rows.default_out(card, shape):  # e.g. a second model of the same dataset
        cmd += f" --out {args.out}"
    # the chunks' own attack time is the measurement's; the report step itself takes a second
    extra = {"report_seconds": round(time.perf_counter() - t0, 1), "chunk_commits": got["commits"]}
    provenance.write(dest, cmd, got["wall"], extra)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", default="models/mnist-robust", help="artifact folder")
    p.add_argument("--data-root", default=None, help="the dataset's folder, when not the one its card names")
    p.add_argument("--n", type=int, default=1000, help="the first N inputs of the permutation are the sample")
    p.add_argument("--start", type=int, default=0, help="first position of this chunk in the permutation")
    p.add_argument("--limit", type=int, default=None, help="inputs in this chunk (default: up to N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation and of the attacks")
    p.add_argument("--eps", type=float, default=None, help="L-inf budget (default: 0.3 grey, 8/255 colour)")
    p.add_argument("--steps", type=int, default=100, help="APGD / APGD-T / FAB iterations (standard: 100)")
    p.add_argument("--queries", type=int, default=5000, help="Square's queries (standard: 5,000)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--cache", type=Path, default=None, help="chunk results (default: the default --out/chunks)"
    )
    p.add_argument("--out", default=None, help="report.json's folder (default: reports/autoattack[_DATASET])")
    p.add_argument("--report-only", action="store_true", help="print the table from the chunks done so far")
    args = p.parse_args(argv)
    model_json = json.loads((Path(args.artifact) / "model.json").read_text())
    card, shape = model_json["dataset"], model_json.get("arch", {}).get("input_shape")
    args.eps = default_eps(card) if args.eps is None else args.eps
    args.n = min(args.n, card.get("sizes", {}).get("test", args.n))  # a test split smaller than N: all of it
    args.out = args.out or str(rows.default_out(card, shape))
    args.cache = args.cache or rows.default_out(card, shape) / "chunks"  # MNIST: reports/autoattack/chunks
    if not args.report_only:
        if args.limit is None:
            args.limit = args.n - args.start
        if args.start < 0 or args.start >= args.n or args.limit < 1:
            p.error(f"--start must lie in [0, {args.n}) and --limit be >= 1")
        run_chunk(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
