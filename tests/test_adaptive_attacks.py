"""The detector-aware attacks really attack the detector, and the multi-target attack keeps the best target."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from detector import Detector
from detector.calibration import calibrate
from detector.harness.attacks import ADAPTIVE, AttackTarget, DetectorObjective, run_attack
from detector.harness.attacks.adaptive import adaptive, adaptive_multitarget, cls_hinge
from detector.harness.budgets import Budgets
from training.data import load_digits

BUDGET = Budgets(eps=0.3, steps=10, adaptive_steps=40, adaptive_restarts=1)


@pytest.fixture(scope="module")
def calibrated(tiny_artifact, tmp_path_factory):
    art = tmp_path_factory.mktemp("adaptive") / "digits"
    shutil.copytree(tiny_artifact, art)
    calibrate(art, device="cpu", progress=False)
    return Detector.load(art, "cpu")


def _fooled_and_undetected(det: Detector, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    s = det.score(x_adv)
    return float(((s.pred != y) & ~s.is_adversarial).float().mean())


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_attacks_evade_the_detector_more_than_pgd(calibrated, name):
    det = calibrated
    ds = load_digits()
    x, y = ds.test.float()[:40], ds.test.y[:40]
    keep = det.score(x).pred == y
    x, y = x[keep], y[keep]
    target = AttackTarget("lgm", det.model, DetectorObjective(det, margin=0.5))
    pgd = _fooled_and_undetected(det, run_attack("pgd", target, x, y, BUDGET, 0), y)
    ada = _fooled_and_undetected(det, run_attack(name, target, x, y, BUDGET, 0), y)
    assert ada > pgd + 0.2, (name, pgd, ada)
    assert (run_attack(name, target, x, y, BUDGET, 0) - x).abs().max() <= BUDGET.eps + 1e-6


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class _OnlyClassTwoIsUndetected:
    """A stand-in detector that flags every input classified as anything but class 2."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def losses(self, x, y, t):
        logits = self.model(x)
        det = (t != 2).float() * 10.0 + 0.0 * logits.sum(1)
        evades = (logits.argmax(1) == t) & (t != y) & (t == 2)
        return cls_hinge(logits, t), det, evades


def test_multitarget_keeps_the_target_that_evades():
    model = _Linear().eval()
    with torch.no_grad():  # class 1 is everyone's runner-up, class 2 the least likely: only it evades
        model.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0], [0, 1.0, 0, 0]]))
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, -0.6]))
    x = torch.full((6, 1, 2, 2), 0.5)
    x[:, 0, 0, 1] = 0.2
    y = torch.zeros(6, dtype=torch.long)
    target = AttackTarget("toy", model, _OnlyClassTwoIsUndetected(model))
    b = Budgets(eps=0.5, adaptive_steps=60, adaptive_restarts=1)
    x_single, x_multi = adaptive(target, x, y, b, 0), adaptive_multitarget(target, x, y, b, 0)
    with torch.no_grad():
        assert (model(x).argmax(1) == 0).all()
        single, multi = model(x_single).argmax(1), model(x_multi).argmax(1)
    assert (single != 2).all()  # the runner-up target never evades this detector
    assert (multi == 2).all()  # the multi-target attack found the one target that does
