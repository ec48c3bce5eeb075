"""The model card: what model.json says about a trained model besides its architecture and weights' hash.

Keys: ``dataset`` (name, root, split seed, image size, class names, split sizes, and the sha256 of the files
read where the dataset has one: ``Dataset.digest``), ``lgm`` (the L-GM head's
settings, None for a softmax head), ``adversarial`` (the adversarial-training settings, None without),
``train`` (the whole resolved TrainConfig), ``world_size``, ``device``,
``history`` (one entry per epoch) and ``metrics`` (accuracies on the three splits, seconds per epoch).
``training/artifacts.py`` adds ``format_version``, ``arch`` and ``weights_sha256`` when it writes the file.
"""

from __future__ import annotations

from typing import Any

import torch

from training.config import ADV_KEYS, LGM_KEYS, TrainConfig
from training.data import Dataset
from training.model import Classifier, accuracy


def final_metrics(
    model: Classifier, ds: Dataset, device: torch.device, history: list[dict]
) -> dict[str, float]:
    """Accuracy on each split and the mean seconds of an epoch, rounded as model.json stores them."""
    metrics = {
        "test_accuracy": accuracy(model, ds.test, device),
        "calibration_accuracy": accuracy(model, ds.calibration, device),
        "train_accuracy": accuracy(model, ds.train, device),
        "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history)),
    }
    return {k: round(v, 6) for k, v in metrics.items()}


def model_card(
    cfg: TrainConfig,
    ds: Dataset,
    history: list[dict[str, Any]],
    metrics: dict[str, float],
    world_size: int,
    device: torch.device,
) -> dict[str, Any]:
    sizes = {"train": len(ds.train), "calibration": len(ds.calibration), "test": len(ds.test)}
    return {
        "dataset": {
            "name": ds.name,
            "root": cfg.data_root,
            "split_seed": cfg.split_seed,
            "image_size": cfg.image_size,
            "class_names": ds.class_names,
            "sizes": sizes,
            "digest": ds.digest,
        },
        "lgm": {k: getattr(cfg, k) for k in LGM_KEYS} if cfg.head == "lgm" else None,
        "adversarial": {k: getattr(cfg, k) for k in ADV_KEYS} if cfg.adversarial != "none" else None,
        "train": cfg.to_dict(),
        "world_size": world_size,
        "device": str(device),
        "history": history,
        "metrics": metrics,
    }
