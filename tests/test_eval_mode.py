"""Scoring, calibration and serving give the same answer whatever mode the caller left the network in, and never
change the artifact's weights or buffers (``training/modes.py``).

The tiny digits model has BatchNorm in every block: in training mode a forward normalises with the batch's own
statistics and moves the running ones, so any path that forgot eval mode answers differently here and leaves a
changed ``state_dict`` behind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

from detector import Detector
from detector.calibration import CalibrationConfig, calibrate, fit_gaussians, statistics_of
from detector.gradient import fgsm
from detector.layers import split_layers
from service.engine import BatchResult, Engine
from training.artifacts import load_artifact
from training.data import load_digits
from training.model import accuracy, split_features
from training.modes import eval_mode


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state_unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"parameters or buffers changed: {changed}"


def _assert_equal_tree(a, b) -> None:
    """Tensors, or dicts / sequences of them, bit for bit."""
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal_tree(a[k], b[k])
    else:
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_equal_tree(u, v)


@pytest.fixture(scope="module")
def calibrated(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    art = tmp_path_factory.mktemp("eval_mode") / "clean"
    shutil.copytree(tiny_artifact, art)
    calibrate(art, device="cpu", progress=False)
    return art


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_eval_mode_restores_each_submodule_mode_and_nests() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    net.train()
    net[1].eval()  # a caller's frozen BatchNorm stays frozen, the rest stays in training mode
    with eval_mode(net) as inner:
        assert inner is net and not any(m.training for m in net.modules())
        with eval_mode(net[0]):
            pass
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("the body fails")
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_score_is_bit_identical_in_train_mode_and_changes_no_buffer(calibrated: Path, digits) -> None:
    det = Detector.load(calibrated, "cpu")
    x = digits.test.float()[:64]
    before = _state(det.model)
    ref = det.score(x, batch_size=32)
    ref_grad = det.score(x[:8], grad=True)
    det.model.train()  # what an attack library restoring a wrapper's mode does
    got = det.score(x, batch_size=32)
    got_grad = det.score(x[:8], grad=True)
    assert det.model.training, "scoring must give the caller's mode back"
    for f in fields(ref):
        assert torch.equal(getattr(ref, f.name), getattr(got, f.name)), f.name
        assert torch.equal(getattr(ref_grad, f.name), getattr(got_grad, f.name)), f.name
    _assert_state_unchanged(before, det.model)
    det.model.eval()
    assert torch.equal(det.score(x, batch_size=32).score, ref.score)


def test_served_score_and_fgsm_are_bit_identical_in_train_mode(calibrated: Path, digits) -> None:
    det = Detector.load(calibrated, "cpu")
    x = digits.test.float()[:16]
    before = _state(det.model)
    engine = Engine(det, threads=1)
    try:
        ref, ref_adv = engine.score(x), engine.fgsm(x, 0.1)
        det.model.train()
        engine.warm_up(4, rounds=1)
        got, got_adv = engine.score(x), engine.fgsm(x, 0.1)
    finally:
        engine.shutdown()
    for f in fields(BatchResult):
        assert (getattr(ref, f.name) == getattr(got, f.name)).all(), f.name
    assert torch.equal(ref_adv, got_adv)
    assert det.model.training
    _assert_state_unchanged(before, det.model)


def test_calibration_statistics_are_bit_identical_in_train_mode(tiny_artifact: Path, digits) -> None:
    model, _ = load_artifact(tiny_artifact, "cpu")
    cfg = CalibrationConfig(device="cpu", progress=False)
    x = digits.calibration.float()
    dev = torch.device("cpu")
    before = _state(model)

    def everything() -> tuple:
        sm = fit_gaussians(model, digits.train, cfg)
        g = [sm.gaussians.tensors("g")] + [h.tensors("h") for h in sm.layer_gaussians]
        stats = {k: torch.from_numpy(v) for k, v in statistics_of(model, sm, x).items()}
        return (
            g,
            stats,
            split_layers(model, x),
            split_features(model, digits.calibration.x, dev),
            torch.tensor(accuracy(model, digits.calibration, dev)),
            fgsm(model, x[:8], 0.1),
        )

    ref = everything()
    model.train()
    got = everything()
    assert model.training
    _assert_equal_tree(ref, got)
    _assert_state_unchanged(before, model)


def test_calibrate_writes_the_same_files_from_a_model_left_in_train_mode(
    calibrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detector.calibration as cal_mod

    loaded: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def load_in_train_mode(art, device):
        model, meta = load_artifact(art, device)
        loaded.append((model, _state(model)))
        return model.train(), meta

    art = tmp_path / "train_mode"
    shutil.copytree(calibrated, art)
    monkeypatch.setattr(cal_mod, "load_artifact", load_in_train_mode)
    calibrate(art, device="cpu", progress=False)
    ((model, before),) = loaded
    assert model.training
    _assert_state_unchanged(before, model)
    assert (art / "detector.safetensors").read_bytes() == (calibrated / "detector.safetensors").read_bytes()
    ref, got = (json.loads((d / "detector.json").read_text()) for d in (calibrated, art))
    for d in (ref, got):
        d.pop("created")
        d["figures"].pop("seconds")
    assert got == ref
