"""Report figures: ROC curves per attack with every detector overlaid (``data``: attack -> detector -> (clean
scores, adversarial scores)), and log-likelihood histograms of clean versus adversarial inputs under the L-GM
model. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from detector.harness import roc

COLOURS = {
    "lgm": "tab:blue",
    "msp": "tab:orange",
    "mahalanobis": "tab:green",
    "mahalanobis_full": "tab:olive",
    "lid": "tab:purple",
    "kd": "tab:brown",
}


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, list(axes.flat)


def plot_rocs(data: dict[str, Any], path: Path) -> Path | None:
    if not data:
        return None
    plt, fig, axes = _grid(len(data))
    for ax, (name, d) in zip(axes, data.items(), strict=False):
        for det, (neg, pos) in d.items():
            if len(pos) == 0:
                continue
            r = roc.roc_curve(neg, pos)
            ax.plot(r.fpr, r.tpr, color=COLOURS.get(det), label=f"{det} {roc.auroc(neg, pos):.3f}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
        ax.axvline(0.05, color="grey", lw=0.5, ls="--")
        ax.set(
            title=name, xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01)
        )
        ax.legend(loc="lower right", fontsize=8, title="AUROC", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_histograms(data: dict[str, Any], path: Path) -> Path | None:
    if not data:
        return None
    plt, fig, axes = _grid(len(data))
    for ax, (name, d) in zip(axes, data.items(), strict=False):
        clean, adv = np.asarray(d["clean"]), np.asarray(d["adversarial"])
        both = np.concatenate([clean, adv]) if len(adv) else clean
        lo, hi = np.percentile(both, 0.5), np.percentile(both, 100)
        bins = np.linspace(lo, hi, 40)
        ax.hist(np.clip(clean, lo, hi), bins=bins, alpha=0.6, density=True, label=f"clean ({len(clean)})")
        if len(adv):
            ax.hist(
                np.clip(adv, lo, hi), bins=bins, alpha=0.6, density=True, label=f"adversarial ({len(adv)})"
            )
        ax.set(title=name, xlabel="log-likelihood under the predicted class", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
