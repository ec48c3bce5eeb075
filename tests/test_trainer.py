"""The trainer: determinism on the CPU, resume equals an uninterrupted run, option checks, numerical safety."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import CKPT_META, CKPT_WEIGHTS
from training.optim import lr_at
from training.trainer import train


def _weights(art: Path) -> dict[str, torch.Tensor]:
    return load_file(str(art / "model.safetensors"))


def _history(art: Path) -> list[dict]:
    return [
        {k: v for k, v in h.items() if k != "seconds"}
        for h in json.loads((art / "model.json").read_text())["history"]
    ]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_deterministic_for_a_seed(tiny_artifact: Path, tiny_config_factory, tmp_path: Path) -> None:
    """Same config and seed as the session's tiny artifact: bit-identical weights; another seed differs."""
    train(tiny_config_factory(epochs=3), tmp_path / "again")
    _assert_same_weights(tiny_artifact, tmp_path / "again")
    assert _history(tiny_artifact) == _history(tmp_path / "again")
    train(tiny_config_factory(epochs=1, seed=1), tmp_path / "other")
    train(tiny_config_factory(epochs=1, seed=0), tmp_path / "one")
    w1, w0 = _weights(tmp_path / "other"), _weights(tmp_path / "one")
    assert not torch.equal(w1["head.means"], w0["head.means"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"variance": "diagonal", "lkd_form": "paper", "learn_priors": True, "optimizer": "adam"},
        {"head": "softmax", "optimizer": "sgd", "lr_schedule": "step", "lr": 0.05},
        {"backbone": "resnet", "depth": 8, "optimizer": "sgd", "channels_last": True, "cpu_bf16": True},
    ],
)
def test_resume_equals_uninterrupted(tiny_config_factory, tmp_path: Path, overrides: dict) -> None:
    """A run killed after epoch 2 of 3 and resumed ends with the weights, BatchNorm statistics, optimizer state
    and history of a run that was never interrupted."""
    cfg = tiny_config_factory(epochs=3, **overrides)
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(cfg, full)
    assert train(cfg, killed, stop_after=2) == {"stopped_at_epoch": 2}
    assert (killed / CKPT_WEIGHTS).is_file() and not (killed / "model.safetensors").exists()
    assert json.loads((killed / CKPT_META).read_text())["epoch"] == 2
    meta = train(cfg, killed, resume=True)
    _assert_same_weights(full, killed)
    assert _history(full) == _history(killed)
    assert (
        meta["metrics"]["test_accuracy"]
        == json.loads((full / "model.json").read_text())["metrics"]["test_accuracy"]
    )
    ckpt_full, ckpt_killed = load_file(str(full / CKPT_WEIGHTS)), load_file(str(killed / CKPT_WEIGHTS))
    for k in ckpt_full:  # optimizer moments too
        torch.testing.assert_close(ckpt_full[k], ckpt_killed[k], rtol=0, atol=0)


def test_resume_without_checkpoint_starts_fresh(tiny_config_factory, tmp_path: Path) -> None:
    meta = train(tiny_config_factory(epochs=1), tmp_path, resume=True)
    assert [h["epoch"] for h in meta["history"]] == [1]


def test_resume_with_other_options_is_refused(tiny_config_factory, tmp_path: Path) -> None:
    train(tiny_config_factory(epochs=2), tmp_path, stop_after=1)
    with pytest.raises(ValueError, match="trained with --feat-dim 8, this run asks for 6") as exc:
        train(tiny_config_factory(epochs=2, feat_dim=6), tmp_path, resume=True)
    assert "\n" not in str(exc.value)
    meta = train(tiny_config_factory(epochs=3), tmp_path, resume=True)  # more epochs: allowed
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]


def test_checkpoint_hash_is_checked(tiny_config_factory, tmp_path: Path) -> None:
    cfg = tiny_config_factory(epochs=2)
    train(cfg, tmp_path, stop_after=1)
    w = tmp_path / CKPT_WEIGHTS
    w.write_bytes(w.read_bytes()[:-8])
    with pytest.raises(ValueError, match="checkpoint hash mismatch"):
        train(cfg, tmp_path, resume=True)


def test_paper_form_with_learned_variances_stays_finite(tiny_config_factory, tmp_path: Path) -> None:
    """A short real run of the risky setting: diagonal variances, paper form, learned priors, high lr."""
    cfg = tiny_config_factory(
        epochs=4, variance="diagonal", lkd_form="paper", learn_priors=True, lr=0.01, var_lr_mult=1.0
    )
    meta = train(cfg, tmp_path)
    assert all(math.isfinite(h["loss"]) for h in meta["history"])
    for k, v in _weights(tmp_path).items():
        assert torch.isfinite(v.float()).all(), k
    assert meta["metrics"]["test_accuracy"] > 0.3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"head": "mlp"}, "--head"),
        ({"variance": "full"}, "--variance"),
        ({"lkd_form": "l2"}, "--lkd-form"),
        ({"optimizer": "lbfgs"}, "--optimizer"),
        ({"lr_schedule": "poly"}, "--lr-schedule"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 1}, "--batch-size"),
        ({"feat_dim": 1}, "--feat-dim"),
        ({"lr": 0.0}, "--lr"),
        ({"lam": -1.0}, "--lam"),
        ({"alpha": -0.1}, "--alpha"),
        ({"var_floor": 1.5}, "--var-floor"),
        ({"var_lr_mult": -1.0}, "--var-lr-mult"),
        ({"backbone": "vit"}, "--backbone"),
    ],
)
def test_bad_options_are_one_line_value_errors(tiny_config_factory, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as exc:
        tiny_config_factory(**overrides).validate()
    assert "\n" not in str(exc.value)


def test_lr_schedules(tiny_config_factory) -> None:
    cos = tiny_config_factory(epochs=4, lr=1.0, lr_schedule="cosine")
    assert [lr_at(cos, e) for e in range(4)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    step = tiny_config_factory(epochs=4, lr=1.0, lr_schedule="step")
    assert [lr_at(step, e) for e in range(4)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert lr_at(tiny_config_factory(lr_schedule="none", lr=0.3), 5) == 0.3


def test_cpu_speed_flags_autocast_and_layout(tiny_config_factory, tmp_path: Path) -> None:
    """--cpu-bf16 runs the backbone in bfloat16 on the CPU (the head stays float32); --channels-last stores the
    convolutions NHWC while training; the artifact they write reloads to the accuracy the run recorded."""
    from training.artifacts import load_artifact
    from training.data import load_dataset
    from training.model import accuracy
    from training.trainer import Run

    cfg = tiny_config_factory(epochs=1, backbone="resnet", depth=8, channels_last=True, cpu_bf16=True)
    with Run(cfg, tmp_path / "probe") as run:
        conv = next(m for m in run.core.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        x = torch.rand(4, *run.core.spec.input_shape)
        with run.autocast():
            logits, feats = run.core(x, return_features=True)
        assert feats.dtype == torch.bfloat16 and logits.dtype == torch.float32
    with Run(tiny_config_factory(epochs=1), tmp_path / "plain") as run, run.autocast():
        assert run.core.features(torch.rand(4, *run.core.spec.input_shape)).dtype == torch.float32
    meta = train(dataclasses.replace(cfg, epochs=4), tmp_path / "art")
    assert meta["metrics"]["test_accuracy"] > 0.5  # it learned, so the reload check below means something
    model, _ = load_artifact(tmp_path / "art")
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.image_size)
    assert round(accuracy(model, ds.test, torch.device("cpu")), 6) == meta["metrics"]["test_accuracy"]
