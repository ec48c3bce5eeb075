"""``lgm plot-features``: the deep features of one split, coloured by class, with the learned Gaussians.

Like the 2-D feature figures of Wan et al., "Rethinking Feature Distribution for Loss Functions in Image
Classification" (CVPR 2018, figs. 1 and 4): every point is one image's feature x; for an L-GM head every class k
gets its mean mu_k and the 1- and 2-sigma ellipses of N(mu_k, Lambda_k).

Features of dimension D = 2 are plotted as they are. For D > 2 a PCA fitted on the plotted features gives a
projection P (2, D); a linear map of a Gaussian is a Gaussian, so the class means and covariances are projected
the same way: P (mu_k - m) and P Lambda_k P^T. Softmax-head artifacts get the scatter only.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from training.artifacts import atomic_write_bytes, load_artifact
from training.data import load_dataset
from training.distributed import resolve_device
from training.lgm import LGMHead
from training.model import split_features

SPLITS = ("train", "calibration", "test")
MAX_POINTS = 10_000  # scatter at most this many points (a fixed subsample); PCA still sees every feature


def pca_projection(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (m (D,), P (2, D), explained-variance ratios (2,)) of the top two principal components.
    For D == 2 the projection is the identity around zero (features plotted as they are)."""
    d = feats.shape[1]
    if d == 2:
        return np.zeros(2), np.eye(2), np.array([np.nan, np.nan])
    m = feats.mean(axis=0)
    _, s, vt = np.linalg.svd(feats - m, full_matrices=False)
    var = s**2
    return m, vt[:2], var[:2] / max(var.sum(), 1e-12)


def ellipse_params(cov: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the n-sigma ellipse of a 2x2 covariance."""
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals = np.clip(evals, 0.0, None)
    angle = math.degrees(math.atan2(evecs[1, 1], evecs[0, 1]))  # direction of the largest eigenvector
    return 2.0 * n_sigma * math.sqrt(evals[1]), 2.0 * n_sigma * math.sqrt(evals[0]), angle


def _colours(k: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "hsv"]
    if k <= 20:
        return [cmap(i) for i in range(k)]
    return [cmap(i / k) for i in range(k)]


def render_png(
    z: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    means: np.ndarray | None,
    covs: np.ndarray | None,
    title: str,
    xlabel: str,
    ylabel: str,
) -> bytes:
    """Scatter z (N, 2) coloured by y; optional Gaussians (K, 2) means and (K, 2, 2) covariances. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    k = len(class_names)
    colours = _colours(k)
    fig = Figure(figsize=(7.5, 6.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    size = 6 if len(z) > 2000 else 10
    for c in range(k):
        sel = y == c
        if sel.any():
            ax.scatter(
                z[sel, 0], z[sel, 1], s=size, color=colours[c], alpha=0.55, linewidths=0, label=class_names[c]
            )
    if means is not None and covs is not None:
        for c in range(k):
            for n_sigma, ls in ((1.0, "-"), (2.0, "--")):
                w, h, ang = ellipse_params(covs[c], n_sigma)
                ax.add_patch(
                    Ellipse(means[c], w, h, angle=ang, fill=False, edgecolor=colours[c], lw=1.4, ls=ls)
                )
            ax.plot(means[c, 0], means[c, 1], marker="x", color="black", ms=7, mew=2)
        ax.plot([], [], color="black", ls="-", label="1 sigma")
        ax.plot([], [], color="black", ls="--", label="2 sigma")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal", adjustable="datalim")
    if k <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2, frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_features(
    artifact_dir: str | Path, out: str | Path | None = None, split: str = "test", device: str = "auto"
) -> Path:
    """Plot the features of ``split`` of the artifact's dataset; write the PNG atomically; return its path."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    art = Path(artifact_dir)
    dev = resolve_device(device)
    model, meta = load_artifact(art, dev)
    ds_meta = meta["dataset"]
    ds = load_dataset(
        ds_meta["name"], ds_meta.get("root"), int(ds_meta.get("split_seed", 0)), ds_meta.get("image_size")
    )
    part = getattr(ds, split)
    feats = split_features(model, part.x, dev).numpy().astype(np.float64)  # (N, D)
    y = part.y.numpy()
    m, proj, ratio = pca_projection(feats)
    z = (feats - m) @ proj.T  # (N, 2)
    if len(z) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(z), MAX_POINTS, replace=False))
        z, y = z[keep], y[keep]

    means = covs = None
    head = model.head
    if isinstance(head, LGMHead):
        mu = head.means.detach().double().cpu().numpy()  # (K, D)
        var = head.variances().detach().double().cpu().numpy()  # (K, D), diagonal Lambda_k
        means = (mu - m) @ proj.T  # (K, 2)
        covs = np.einsum("id,kd,jd->kij", proj, var, proj)  # P Lambda_k P^T, (K, 2, 2)

    d = feats.shape[1]
    arch = meta["arch"]
    head_name = "L-GM" if isinstance(head, LGMHead) else "softmax"
    acc = meta.get("metrics", {}).get(f"{split}_accuracy")
    acc_txt = f", {split} accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""
    title = f"{ds_meta['name']} {split} features, {arch['backbone']} + {head_name} head, D={d}{acc_txt}"
    if d == 2:
        xlabel, ylabel = "feature 1", "feature 2"
    else:
        title += "\n(PCA projection; Gaussians projected as P mu, P Lambda P^T)"
        xlabel, ylabel = f"PC 1 ({ratio[0]:.0%} of variance)", f"PC 2 ({ratio[1]:.0%} of variance)"
    png = render_png(z, y, list(ds.class_names), means, covs, title, xlabel, ylabel)
    path = Path(out) if out is not None else art / "features.png"
    atomic_write_bytes(path, png)
    return path
