"""--keep-best pgd (training/best.py): the artifact holds the epoch most robust on held-out calibration inputs
(Rice et al. 2020), the rule picks the first maximum, and a killed, resumed run keeps the same best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.artifacts import ArtifactError
from training.best import BEST_META, BEST_WEIGHTS, BestKeeper, heldout_pgd_accuracy
from training.trainer import train

ADV = dict(
    adversarial="pgd",
    adv_eps=0.15,
    adv_steps=3,
    adv_warmup=1,
    keep_best="pgd",
    best_check_inputs=80,
    best_check_steps=3,
)


def test_the_keeper_keeps_the_first_maximum(tmp_path: Path) -> None:
    """Scores 0.2, 0.5, 0.4, 0.5: epoch 2 is kept (a later tie does not replace it), with its own weights."""
    keeper, nets = BestKeeper(tmp_path), []
    for epoch, score in enumerate((0.2, 0.5, 0.4, 0.5), start=1):
        net = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(net.weight, float(epoch))
        nets.append(net)
        assert keeper.offer(epoch, score, net) == (epoch in (1, 2))
    restored = torch.nn.Linear(3, 2)
    assert keeper.restore(restored)["epoch"] == 2
    assert torch.equal(restored.weight, nets[1].weight)
    blob = bytearray((tmp_path / BEST_WEIGHTS).read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / BEST_WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="hash mismatch"):
        keeper.restore(restored)


def test_keep_best_ships_the_heldout_best(tiny_config_factory, tmp_path: Path) -> None:
    """Each epoch's held-out PGD accuracy is in the history; the artifact is the first epoch with the highest,
    and its weights give that accuracy again."""
    from training.artifacts import load_artifact
    from training.data import load_dataset

    cfg = tiny_config_factory(epochs=4, **ADV)
    meta = train(cfg, tmp_path / "art")
    scores = [h["heldout_pgd_accuracy"] for h in meta["history"]]
    assert len(scores) == 4 and min(scores) >= 0.0 and max(scores) > 0.0
    kept = scores.index(max(scores)) + 1
    assert meta["metrics"]["kept_epoch"] == kept
    assert json.loads((tmp_path / "art" / BEST_META).read_text())["epoch"] == kept
    model, _ = load_artifact(tmp_path / "art")
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.image_size)
    again = heldout_pgd_accuracy(model, ds.calibration, cfg.adv_eps, 3, 80, torch.device("cpu"))
    assert round(again, 6) == max(scores)
    last = {
        k[6:]: v
        for k, v in load_file(str(tmp_path / "art" / "checkpoint.safetensors")).items()
        if k[:6] == "model."
    }
    shipped = load_file(str(tmp_path / "art" / "model.safetensors"))
    same_as_last = all(torch.equal(shipped[k], last[k]) for k in shipped)
    assert same_as_last == (kept == 4)  # an earlier best is shipped instead of the last epoch


def test_resumed_run_keeps_the_same_best(tiny_config_factory, tmp_path: Path) -> None:
    cfg = tiny_config_factory(epochs=3, **ADV)
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(cfg, full)
    assert train(cfg, killed, stop_after=2) == {"stopped_at_epoch": 2}
    train(cfg, killed, resume=True)
    assert (full / BEST_META).read_text() == (killed / BEST_META).read_text()
    assert (full / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()


def test_a_fresh_run_forgets_an_earlier_best(tiny_config_factory, tmp_path: Path) -> None:
    BestKeeper(tmp_path).offer(9, 1.0, torch.nn.Linear(2, 2))  # a stale best from another run: unbeatable
    meta = train(tiny_config_factory(epochs=2, **ADV), tmp_path)
    assert meta["metrics"]["kept_epoch"] in (1, 2)


def test_keep_best_needs_adversarial_training(tiny_config_factory) -> None:
    with pytest.raises(ValueError, match="--keep-best pgd needs adversarial training"):
        tiny_config_factory(keep_best="pgd").validate()


class _AlwaysZero(torch.nn.Module):
    """Predicts class 0 for every input (a weight keeps it a module with parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1.0
        return logits + self.w * x.flatten(1).sum(1, keepdim=True)


def test_the_check_draws_from_every_class_of_a_class_sorted_split() -> None:
    """An image folder's calibration split is sorted by class: the check must not read only its first class (it
    did, and a classifier of airplanes alone scored 100%)."""
    from training.data import Split, subset

    y = torch.arange(10).repeat_interleave(50)  # 10 classes x 50, class by class
    split = Split(torch.zeros(500, 1, 4, 4, dtype=torch.uint8), y)
    acc = heldout_pgd_accuracy(_AlwaysZero(), split, eps=0.0, steps=1, n=100, device=torch.device("cpu"))
    assert 0.0 < acc < 0.3  # about the share of class 0, not 1.0
    picked = subset(500, 100, 1234)
    assert len(set(y[picked].tolist())) == 10 and list(picked) == sorted(picked)
    assert list(subset(5, None, 0)) == list(range(5)) and list(subset(5, 9, 0)) == list(range(5))
