"""Benchmark: which statistics and which detector settings separate attacks from clean inputs, measured on the
*calibration* split, so that a design choice is kept or dropped without looking at the test split.

For one trained network (the first artifact) and its calibrated detectors (every artifact given: the same
weights, calibrated differently, e.g. with and without ``--statistics ...,stability``):

1. the first ``--n`` calibration inputs of a fixed permutation (``numpy.random.default_rng(seed)``) that the
   network classifies correctly are attacked, white-box on the network, by each attack of ``--attacks``
   (``NAME@EPS``, EPS in 1/255 units for L-inf; the project's own attack functions, detector/harness/attacks/,
   at the dataset's default budgets otherwise). The adversarial sets are cached (``OUT/adversarial``, keyed by
   the weights' sha256, the inputs and the attack), so further calibrations are compared at no attack cost;
2. for each detector: AUROC of each statistic's surprise (a monotone map of the statistic,
   ``detector/tails.py``) and of the deployed score, clean inputs against the successful adversarials, with
   paired bootstrap intervals (``detector/harness/bootstrap.py``), and the share of successes the deployed
   thresholds flag (Wilson interval) beside the share of the clean inputs they flag;
3. unless ``--no-ood``, the same for two sets of inputs that are no images of the dataset (``noise``: uniform
   noise; ``flat``: one random colour per image; as many as the clean inputs, seeded), every one counted: a
   choice that gains against attacks must not cost the detector its grip on garbage.

The calibration inputs scored here also set the detector's tail models and thresholds (5,000 inputs for
CIFAR-10's split; the few hundred here are among them): a small optimism in the flagged shares, none in AUROC's
ranking of a statistic against itself. Figures for reports come from the test split (``lgm evaluate``).

    mkdir -p artifacts/cifar10-stability && cp models/cifar10/model.* artifacts/cifar10-stability/
    lgm calibrate artifacts/cifar10-stability --statistics likelihood,boundary,layers,stability
    .venv/bin/python bench/detection/ablation.py models/cifar10 artifacts/cifar10-stability --data-root data/cifar10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from detector.harness.attacks import SPECS
from detector.harness.attacks.base import AttackTarget
from detector.harness.bootstrap import paired_intervals
from detector.harness.budgets import default_budgets
from detector.harness.metrics import wilson
from detector.harness.roc import auroc
from detector.scoring import Detector
from training.batched import batched
from training.data import load_card_dataset

DEFAULT_ATTACKS = "fgsm@8,pgd@8,fgsm@2,pgd@2,cw,deepfool"
# Inputs that are not images of the dataset at all, which a deployed detector should flag too: every one counts
# (no "success" to filter on). A statistic that helps against attacks may cost these (the layers on CIFAR-10 do).
OOD = ("noise", "flat")


def ood_sets(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """As many inputs as ``x``, of its shape: uniform noise in [0, 1], and images of one random colour each."""
    g = torch.Generator().manual_seed(seed)
    n, c = x.shape[:2]
    noise = torch.rand(x.shape, generator=g)
    flat = torch.rand(n, c, 1, 1, generator=g).expand(x.shape).contiguous()
    return dict(zip(OOD, (noise, flat), strict=True))


def parse_attack(spec: str, dataset: str):
    """'pgd@2' -> ('pgd@2', 'pgd', budgets with eps 2/255); 'cw' -> the dataset's default budgets."""
    name, _, eps = spec.partition("@")
    if name not in SPECS:
        raise SystemExit(f"ablation: unknown attack {name!r} (of {', '.join(SPECS)})")
    b = default_budgets(dataset)
    if eps:
        b.eps = float(eps) / 255.0
    return spec, name, b


def attacked_inputs(
    det: Detector, data_root: str | None, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` correctly classified calibration inputs of the seeded permutation."""
    cal = load_card_dataset(det.meta["dataset"], root=data_root).calibration
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(cal)))
    x, y = cal.x[order].float() / 255.0, cal.y[order]
    pred = batched(lambda xb: det.model(xb).argmax(1), x[: 3 * n], 500, det.device)
    keep = (pred == y[: 3 * n]).nonzero().squeeze(1)[:n]
    return x[keep], y[keep]


def adversarial_sets(det, x, y, attacks, cache: Path, seed: int) -> dict[str, torch.Tensor]:
    key = hashlib.sha256(det.meta["weights_sha256"].encode() + x.numpy().tobytes()).hexdigest()[:16]
    target, out = AttackTarget("lgm", det.model), {}
    for spec, name, b in attacks:
        f = cache / f"{spec.replace('@', '_')}_{key}_s{seed}.safetensors"
        if f.exists():
            out[spec] = load_file(f)["x"]
            continue
        t = time.time()
        out[spec] = SPECS[name].fn(target, x.clone(), y.clone(), b, seed).detach().contiguous()
        cache.mkdir(parents=True, exist_ok=True)
        save_file({"x": out[spec]}, f)
        print(f"  {spec}: {time.time() - t:.0f} s", flush=True)
    return out


def measure(det: Detector, x, y, advs) -> dict[str, dict]:
    clean = det.score(x)
    rows = {}
    names = [*det.score_model.names, "score"]
    for spec, xa in advs.items():
        a = det.score(xa)
        ok = np.ones(len(y), dtype=bool) if spec in OOD else (a.pred != y).numpy()
        row: dict = {"successes": int(ok.sum()), "attacked": len(y)}
        for i, st in enumerate(names):
            neg = clean.score.numpy() if st == "score" else clean.surprises[:, i].numpy()
            pos = a.score.numpy() if st == "score" else a.surprises[:, i].numpy()
            ci = paired_intervals(neg, pos, ok)["auroc_ci"]
            row[st] = {"auroc": auroc(neg, pos[ok]) if ok.any() else None, "auroc_ci": ci}
        flagged = int(a.is_adversarial.numpy()[ok].sum())
        row["flagged"] = {"share": flagged / max(1, ok.sum()), "ci": wilson(flagged, int(ok.sum()))}
        rows[spec] = row
    fp = int(clean.is_adversarial.sum())
    return {"clean_flagged": {"share": fp / len(y), "ci": wilson(fp, len(y))}, "attacks": rows}


def table(name: str, res: dict) -> str:
    attacks = list(res["attacks"])
    stats = [k for k in next(iter(res["attacks"].values())) if k not in ("successes", "attacked", "flagged")]
    lines = [f"### {name}", "", f"Clean inputs flagged: {100 * res['clean_flagged']['share']:.1f}%", ""]
    lines += ["| AUROC | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for st in stats:
        cells = []
        for a in attacks:
            r = res["attacks"][a][st]
            ci = r["auroc_ci"]
            cells.append(
                "-"
                if r["auroc"] is None
                else f"{r['auroc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            )
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    flags = [f"{100 * res['attacks'][a]['flagged']['share']:.0f}%" for a in attacks]
    lines.append("| flagged (deployed) | " + " | ".join(flags) + " |")
    succ = [f"{res['attacks'][a]['successes']}/{res['attacks'][a]['attacked']}" for a in attacks]
    lines.append("| successes | " + " | ".join(succ) + " |")
    if any(a in OOD for a in attacks):
        lines += ["", "noise, flat: not attacks but uniform-noise and one-colour images, every one counted."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="+", help="calibrated artifacts of the same weights")
    p.add_argument("--data-root", default=None, help="the dataset's folder, when not the one its card names")
    p.add_argument("--n", type=int, default=400, help="calibration inputs attacked")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS, help="NAME[@EPS in 1/255], comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation and the attacks")
    p.add_argument(
        "--ood",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score noise and one-colour images too",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="reports/ablation", help="folder of report.json, report.md, adversarial/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0, code, out = time.time(), provenance.checkout(), Path(args.out)
    dets = [Detector.load(a, "cpu") for a in args.artifacts]
    if len({d.meta["weights_sha256"] for d in dets}) != 1:
        raise SystemExit("ablation: the artifacts must share their weights (calibrations of one network)")
    attacks = [parse_attack(s, dets[0].meta["dataset"]["name"]) for s in args.attacks.split(",") if s]
    x, y = attacked_inputs(dets[0], args.data_root, args.n, args.seed)
    advs = adversarial_sets(dets[0], x, y, attacks, out / "adversarial", args.seed)
    if args.ood:
        advs |= ood_sets(x, args.seed)
    report = {a: measure(d, x, y, advs) for a, d in zip(args.artifacts, dets, strict=True)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = "\n\n".join(table(a, r) for a, r in report.items())
    (out / "report.md").write_text(md + "\n")
    provenance.write(out, " ".join(["python", *sys.argv]), time.time() - t0, code=code)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
