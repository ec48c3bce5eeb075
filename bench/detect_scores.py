"""Which score should an L-GM detector use? Re-scores the adversarial sets a report saved, with no attacking.

``lgm evaluate`` (and ``bench/detect.py``) save every attack's adversarials in REPORT/adversarial/. This script
loads those made against the L-GM network and computes the AUROC (clean test inputs that were attacked versus
successful adversarials) of several scores of the *same* L-GM network:

- ``ll_pred``    log N(f(x); mu_k, Lambda_k) for the predicted class k: the deployed score (Wan et al. 2018)
- ``ll_mixture`` log sum_k pi_k N(f(x); mu_k, Lambda_k): the marginal likelihood of the whole mixture
- ``tied_maha``  Lee et al. (2018)'s score on the L-GM features: min_k of the squared Mahalanobis distance
                 under one tied covariance fit on the train split (what the `mahalanobis` baseline does on the
                 softmax twin)
- ``msp``        maximum softmax probability of the L-GM logits (Hendrycks & Gimpel 2017)
- ``feat_norm``  ||f(x)||: a score that sees nothing but the feature's size

    .venv/bin/python bench/detect_scores.py --artifact artifacts/mnist5k --report reports/bench_detect
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.baselines import fit_mahalanobis, squared_mahalanobis  # noqa: E402
from detector.roc import auroc  # noqa: E402
from detector.scoring import Detector  # noqa: E402
from training.data import load_dataset  # noqa: E402

SCORES = ("ll_pred", "ll_mixture", "tied_maha", "msp", "feat_norm")


@torch.no_grad()
def scores(
    det: Detector, means: torch.Tensor, precision: torch.Tensor, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every score for a batch (N, C, H, W) in [0, 1]; larger = more abnormal. Plus the prediction."""
    logits, feats = det.model(x.float(), return_features=True)  # (N, K), (N, D)
    ll = det.model.head.log_likelihood(feats).double()  # (N, K)
    pred = logits.argmax(1)
    log_prior = det.model.head.log_priors().double()
    return {
        "pred": pred,
        "ll_pred": -ll.gather(1, pred[:, None]).squeeze(1),
        "ll_mixture": -torch.logsumexp(ll + log_prior, dim=1),
        "tied_maha": squared_mahalanobis(feats, means, precision).amin(1).double(),
        "msp": -torch.softmax(logits.double(), 1).amax(1),
        "feat_norm": feats.double().norm(dim=1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default="artifacts/mnist5k")
    ap.add_argument("--report", default="reports/bench_detect", help="a report folder with adversarial/")
    args = ap.parse_args()

    det = Detector.load(args.artifact, "cpu")
    d = det.meta["dataset"]
    ds = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0)), d.get("image_size"))
    means, precision = fit_mahalanobis(det.model, ds.train)
    files = sorted((Path(args.report) / "adversarial").glob("*.safetensors"))
    if not files:
        print(f"no adversarial sets in {args.report}/adversarial: run bench/detect.py first", file=sys.stderr)
        return 2

    print(f"AUROC of scores of the L-GM network {args.artifact} (clean attacked test inputs vs successful")
    print("adversarials against the L-GM network; the deployed score is ll_pred)\n")
    print("| attack | n success | " + " | ".join(SCORES) + " |")
    print("|---|---:|" + "---:|" * len(SCORES))
    clean_cache: dict[str, dict[str, torch.Tensor]] = {}
    for f in files:
        t = load_file(str(f))
        idx, y = t["index"], t["y"]
        key = ",".join(map(str, idx[:8].tolist())) + f":{len(idx)}"
        if key not in clean_cache:
            clean_cache[key] = scores(det, means, precision, ds.test.x[idx].float().div(255.0))
        neg = clean_cache[key]
        pos = scores(det, means, precision, t["lgm"])
        ok = pos["pred"] != y
        if int(ok.sum()) == 0:
            continue
        cells = []
        for s in SCORES:
            a = auroc(neg[s].numpy(), pos[s][ok].numpy())
            cells.append(f"{a:.3f}" if not math.isnan(a) else "n/a")
        print(f"| {f.stem} | {int(ok.sum())} | " + " | ".join(cells) + " |")
    print(f"\nCommand: `python bench/detect_scores.py --artifact {args.artifact} --report {args.report}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
