"""Adversarial training (--adversarial pgd | trades): the attack, the eps warm-up, the options, resume, model.json,
and that it buys robustness on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from training.adversarial import eps_at, pgd_linf, push_term
from training.artifacts import load_artifact
from training.config import ADV_KEYS, TrainConfig
from training.data import load_dataset
from training.lgm import LGMHead
from training.trainer import train


def test_pgd_stays_in_the_ball_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))

    def loss(xa: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(xa), y, reduction="sum")

    xa = pgd_linf(loss, x, 0.1, 10, 0.025, torch.Generator().manual_seed(1))
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert loss(xa) > loss(x)
    again = pgd_linf(loss, x, 0.1, 10, 0.025, torch.Generator().manual_seed(1))
    torch.testing.assert_close(xa, again, rtol=0, atol=0)  # the random start comes from the generator
    assert pgd_linf(loss, x, 0.0, 10, 0.1) is not None and torch.equal(pgd_linf(loss, x, 0.0, 10, 0.1), x)


def test_nfgsm_leaves_the_ball_by_at_most_three_eps_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = 0.25 + 0.5 * torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))  # inside [3 eps, 1 - 3 eps]

    def loss(xa: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(xa), y, reduction="sum")

    gen = torch.Generator().manual_seed(1)
    xa = pgd_linf(loss, x, 0.05, 1, 0.05, gen, start_frac=2.0, project=False)
    gap = (xa - x).abs().max().item()
    assert 0.05 < gap <= 0.15 + 1e-6  # noise up to 2 eps plus a step of eps, never projected back
    projected = pgd_linf(loss, x, 0.05, 1, 0.05, torch.Generator().manual_seed(1), start_frac=2.0)
    assert (projected - x).abs().max() <= 0.05 + 1e-6
    clean_start = pgd_linf(loss, x, 0.05, 1, 0.05, random_start=False, project=False)
    assert loss(clean_start) > loss(x)


def test_eps_warms_up_linearly_per_iteration() -> None:
    cfg = TrainConfig(adv_eps=0.3, adv_warmup=2)
    assert [round(eps_at(cfg, it, 10), 6) for it in (0, 9, 19, 20, 500)] == [0.015, 0.15, 0.3, 0.3, 0.3]
    assert eps_at(TrainConfig(adv_eps=0.2, adv_warmup=0), 0, 10) == 0.2


def test_push_term_is_a_hinge_on_the_nearest_wrong_class() -> None:
    head = LGMHead(feat_dim=4, num_classes=3)
    with torch.no_grad():
        head.means.copy_(torch.tensor([[0.0] * 4, [10.0] * 4, [0.5, 0, 0, 0]]))
    y = torch.tensor([1, 0])
    far = head.means[1:2].clone()  # at class 1's mean; nearest wrong class 2: d = 0.5 * (9.5^2 + 300) >> D/2
    near = head.means[0:1].clone()  # at class 0's mean, labelled 0: class 2's mean is 0.5 away, d = 0.125
    assert push_term(head, far, y[:1]).item() == 0.0
    assert push_term(head, near, y[1:]).item() == pytest.approx(2.0 - 0.125)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"adversarial": "fgsm"}, "--adversarial must be one of none, pgd, trades"),
        ({"adv_eps": 0.0}, "--adv-eps must be in (0, 1]"),
        ({"adv_steps": 0}, "--adv-steps must be in [1, 1000]"),
        ({"adv_clean_fraction": 1.0}, "--adv-clean-fraction must be in [0, 1)"),
        ({"adv_lkd": "repel"}, "--adv-lkd must be one of pull, push"),
        ({"adversarial": "pgd", "epochs": 3, "adv_warmup": 3}, "--adv-warmup must be below --epochs"),
    ],
)
def test_bad_adversarial_options(tiny_config_factory, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        tiny_config_factory(**overrides).validate()
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"adversarial": "pgd", "adv_lkd": "push", "adv_clean_fraction": 0.25},
        {"adversarial": "trades", "variance": "diagonal", "lkd_form": "paper"},
        {"adversarial": "pgd", "head": "softmax", "adv_clean_fraction": 0.0},
        {  # N-FGSM: one step, a start twice as wide as the ball, no projection
            "adversarial": "pgd",
            "adv_steps": 1,
            "adv_step_frac": 1.0,
            "adv_start_frac": 2.0,
            "adv_project": False,
            "adv_clean_fraction": 0.0,
        },
    ],
)
def test_resume_of_an_adversarial_run_equals_the_uninterrupted_run(
    tiny_config_factory, tmp_path: Path, overrides: dict
) -> None:
    """Killed after epoch 2 (inside the eps warm-up) of 3 and resumed: the same weights, BatchNorm statistics,
    optimiser state and history as a run never interrupted (the attack's random start replays too)."""
    cfg = tiny_config_factory(**{"epochs": 3, "adv_eps": 0.1, "adv_steps": 3, "adv_warmup": 2, **overrides})
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(cfg, full)
    assert train(cfg, killed, stop_after=2) == {"stopped_at_epoch": 2}
    train(cfg, killed, resume=True)
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(killed / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k, n=name: f"{n} {k}: {m}")
    ha, hb = (json.loads((d / "model.json").read_text())["history"] for d in (full, killed))
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in ha] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in hb
    ]
    assert [h["eps"] for h in ha] == [0.05, 0.1, 0.1]


def test_model_json_records_the_adversarial_settings(
    tiny_artifact: Path, tiny_config_factory, tmp_path: Path
) -> None:
    cfg = tiny_config_factory(
        epochs=2, adversarial="trades", adv_eps=0.05, adv_steps=2, adv_warmup=1, trades_beta=3.0
    )
    meta = train(cfg, tmp_path)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["adversarial"] == meta["adversarial"] == {k: getattr(cfg, k) for k in ADV_KEYS}
    assert saved["adversarial"]["adversarial"] == "trades" and saved["adversarial"]["trades_beta"] == 3.0
    # a softmax twin trained from the saved config is adversarially trained the same way
    twin = TrainConfig.from_dict({**saved["train"], "head": "softmax"})
    assert (twin.adversarial, twin.adv_eps, twin.adv_steps) == ("trades", 0.05, 2)
    assert json.loads((tiny_artifact / "model.json").read_text())["adversarial"] is None  # plain training


def _robust_accuracy(art: Path, eps: float) -> tuple[float, float]:
    """(clean, PGD-20) accuracy on the digits test split."""
    model, meta = load_artifact(art, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    ds = load_dataset("digits", seed=meta["dataset"]["split_seed"])
    x, y = ds.test.float(), ds.test.y
    xa = pgd_linf(
        lambda xa: F.cross_entropy(model(xa), y, reduction="sum"),
        x,
        eps,
        20,
        2.5 * eps / 20,
        torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item(), (
            model(xa).argmax(1) == y
        ).float().mean().item()


def test_adversarial_training_raises_robust_accuracy(tiny_config_factory, tmp_path: Path) -> None:
    """Same tiny network, data, seed and epochs: PGD training holds far more test digits under a stronger PGD
    (20 steps) than plain training does, at a small cost in clean accuracy."""
    eps = 0.08  # of [0, 1] pixels on 8x8 digits, whose strokes are a few pixels wide
    base = {"epochs": 8, "width": 8, "feat_dim": 8, "lr": 5e-3}
    train(tiny_config_factory(**base), tmp_path / "plain")
    train(
        tiny_config_factory(**base, adversarial="pgd", adv_eps=eps, adv_steps=5, adv_warmup=2),
        tmp_path / "robust",
    )
    clean_plain, robust_plain = _robust_accuracy(tmp_path / "plain", eps)
    clean_adv, robust_adv = _robust_accuracy(tmp_path / "robust", eps)
    assert robust_adv >= robust_plain + 0.15, (robust_plain, robust_adv)  # measured: 0.20 -> 0.50
    assert clean_adv > 0.8 and clean_plain > 0.8, (clean_plain, clean_adv)  # measured: 0.89, 0.92
