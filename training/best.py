"""Keep the checkpoint that is most robust on held-out inputs, not the last one (``--keep-best pgd``).

Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning" (ICML 2020): in adversarial training the
robust test accuracy peaks soon after the first learning-rate decay and then falls while the training loss keeps
improving ("robust overfitting"); early stopping on a held-out PGD check recovers the peak. Here the check is
PGD with ``--best-check-steps`` steps at the full ``--adv-eps`` (step 2.5 eps / steps, one random start drawn from
a fixed seed, cross-entropy on the logits) on ``--best-check-inputs`` inputs of the *calibration* split drawn
once from a fixed seed (``training.data.subset``: an image folder's split is sorted by class, so its first
inputs would be one class), after every epoch. The test split is never read. The calibration split also sets
the detector's thresholds later; choosing one of a few dozen checkpoints on it is a mild reuse, stated in
docs/training.md.

Files beside the checkpoint: ``best.safetensors`` (the weights of the best epoch so far) and ``best.json``
(``{"epoch": e, "heldout_pgd_accuracy": a, "sha256": ...}``), both written atomically before the epoch's
checkpoint, so a run killed and resumed keeps the same best as one that never stopped. Ties keep the earlier
epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from training.adversarial import pgd_linf
from training.artifacts import (
    ArtifactError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_bytes,
    state_to_cpu,
)
from training.data import Split, subset
from training.model import Classifier
from training.modes import eval_mode

BEST_WEIGHTS = "best.safetensors"
BEST_META = "best.json"
# The held-out check's random starts: the same every epoch, so epochs compare like with like.
CHECK_SEED = 1234


def heldout_pgd_accuracy(
    model: Classifier,
    split: Split,
    eps: float,
    steps: int,
    n: int,
    device: torch.device,
    batch_size: int = 250,
) -> float:
    """Share of ``n`` inputs of ``split`` (a fixed random subset) classified correctly after L-inf PGD (Madry et
    al. 2018) at ``eps`` with ``steps`` steps of 2.5 eps / steps; in eval mode (the model's own mode is restored)."""
    gen = torch.Generator().manual_seed(CHECK_SEED)
    pick = torch.from_numpy(
        subset(len(split.y), n, CHECK_SEED)
    )  # not the first n: a folder's split is class-sorted
    x_all, y_all = split.x[pick], split.y[pick]
    correct = 0
    with eval_mode(model):
        for i in range(0, len(y_all), batch_size):
            x = x_all[i : i + batch_size].to(device).float().div_(255.0)  # (B, C, H, W) in [0, 1]
            y = y_all[i : i + batch_size].to(device)
            x_adv = pgd_linf(
                lambda z, y=y: F.cross_entropy(model(z).float(), y), x, eps, steps, 2.5 * eps / steps, gen
            )
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / max(1, len(y_all))


class BestKeeper:
    """The best epoch so far by held-out PGD accuracy, kept in ``out/best.*``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def best(self) -> dict[str, Any] | None:
        """``{"epoch", "heldout_pgd_accuracy", "sha256"}`` of the kept epoch, or None before the first."""
        path = self.out / BEST_META
        return read_json(path, "best-checkpoint metadata") if path.is_file() else None

    def offer(self, epoch: int, score: float, model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights when ``score`` beats the best so far (strictly). Returns whether it did."""
        best = self.best()
        if best is not None and score <= best["heldout_pgd_accuracy"]:
            return False
        blob = st_save(state_to_cpu(model))
        atomic_write_bytes(self.out / BEST_WEIGHTS, blob)
        atomic_write_json(
            self.out / BEST_META,
            {"epoch": epoch, "heldout_pgd_accuracy": score, "sha256": sha256_bytes(blob)},
        )
        return True

    def restore(self, model: torch.nn.Module) -> dict[str, Any]:
        """Load the kept weights into ``model``; returns the kept epoch's metadata."""
        best = self.best()
        if best is None:
            raise ArtifactError(f"{self.out / BEST_META}: no best checkpoint was kept")
        blob = (self.out / BEST_WEIGHTS).read_bytes()
        if sha256_bytes(blob) != best["sha256"]:
            raise ArtifactError(f"{self.out / BEST_WEIGHTS}: hash mismatch (truncated or tampered with)")
        model.load_state_dict(st_load(blob))
        return best

    def clear(self) -> None:
        """Forget a previous run's best (a fresh run into the same folder)."""
        for name in (BEST_WEIGHTS, BEST_META):
            (self.out / name).unlink(missing_ok=True)
