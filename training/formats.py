"""Readers for datasets the user provides as local files. Each returns uint8 images (N, C, H, W).

- MNIST / Fashion-MNIST IDX (LeCun et al.): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.
- CIFAR-10 / CIFAR-100 "python" batches (Krizhevsky 2009). These are pickles; they are read with a restricted
  unpickler that can build only dicts, lists, strings, numbers and numpy arrays, so a hostile file cannot
  run code (it fails with FormatError instead).
- Image folders: ``ROOT/<class name>/<image>``, any format Pillow reads.

Every error is a FormatError with one line that names the file and what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class FormatError(ValueError):
    """A file that is missing or not in the expected format."""


# -- IDX ------------------------------------------------------------------------------------------------
def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = root / name
        if p.is_file():
            return p
    raise FormatError(f"{root / stem}: missing IDX file (expected {stem} or {stem}.gz)")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file -> numpy array (unsigned-byte data only, as MNIST uses)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FormatError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FormatError(f"{path}: not an IDX file (expected magic bytes 00 00 08 NDIM)")
    if raw[2] != 0x08:
        raise FormatError(f"{path}: IDX data type 0x{raw[2]:02x} unsupported (expected 0x08, unsigned byte)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise FormatError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise FormatError(
            f"{path}: IDX header says {dims} = {size} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_idx(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    out = []
    for prefix in ("train", "t10k"):
        ipath, lpath = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim != 3:
            raise FormatError(f"{ipath}: expected 3-D images (N, H, W), got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise FormatError(f"{lpath}: expected {len(images)} labels, got shape {labels.shape}")
        if labels.max(initial=0) > 9:
            raise FormatError(f"{lpath}: labels must be 0..9, found {int(labels.max())}")
        out.append((images[:, None].copy(), labels.astype(np.int64)))
    return out[0], out[1]


# -- CIFAR python batches ---------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise FormatError(f"{path}: missing CIFAR batch file")
    try:
        obj = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure is a format error for the user
        raise FormatError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a dict batch, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    b = _load_batch(path)
    if "data" not in b or label_key not in b:
        raise FormatError(f"{path}: expected keys 'data' and '{label_key}', found {sorted(b)}")
    data = np.asarray(b["data"])
    labels = np.asarray(b[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise FormatError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise FormatError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _names(path: Path, key: str, n: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(n)]
    names = _load_batch(path).get(key)
    if not isinstance(names, list) or len(names) != n:
        raise FormatError(f"{path}: expected {n} class names under '{key}'")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in names]


def read_cifar(root: Path, num_classes: int):
    """CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta)."""
    if num_classes == 10:
        base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        parts = [_batch_arrays(base / f"data_batch_{i}", "labels") for i in range(1, 6)]
        xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        xte, yte = _batch_arrays(base / "test_batch", "labels")
        names = _names(base / "batches.meta", "label_names", 10)
    else:
        base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        xtr, ytr = _batch_arrays(base / "train", "fine_labels")
        xte, yte = _batch_arrays(base / "test", "fine_labels")
        names = _names(base / "meta", "fine_label_names", 100)
    for y, p in ((ytr, "train"), (yte, "test")):
        if y.min(initial=0) < 0 or y.max(initial=0) >= num_classes:
            raise FormatError(f"{base}: {p} labels outside 0..{num_classes - 1}")
    return (xtr, ytr), (xte, yte), names


# -- image folders ----------------------------------------------------------------------------------------
GREY_MODES = ("L", "1", "I", "I;16", "F")


def has_split_folders(root: Path) -> bool:
    """True when ``root`` holds ``train/`` and ``test/`` sub-folders (each with one sub-folder per class), the
    layout of datasets that come with their official test split (e.g. a CIFAR-10 JPEG copy)."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FormatError(f"{root}: expected one sub-folder per class, found none")
    files: list[tuple[Path, int]] = []
    for ci, c in enumerate(classes):
        imgs = sorted(p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not imgs:
            raise FormatError(
                f"{root / c}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        files += [(p, ci) for p in imgs]
    return classes, files


def _open_images(files: list[tuple[Path, int]], base: Path, digest: hashlib._Hash) -> list:
    """Decode every file, feeding ``digest`` with (relative path, NUL, bytes) in the given order."""
    from PIL import Image, UnidentifiedImageError

    loaded = []
    for p, _ in files:
        try:
            raw = p.read_bytes()
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
                loaded.append(im.copy())
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FormatError(f"{p}: not a readable image ({exc})") from None
        digest.update(p.relative_to(base).as_posix().encode() + b"\0" + raw)
    return loaded


def _to_array(
    loaded: list, files: list[tuple[Path, int]], grey: bool, size: tuple[int, int] | None
) -> np.ndarray:
    """PIL images -> uint8 (N, C, H, W). ``size``: resize every image to it (bilinear); None: every image must
    already share the first one's size (a folder of mixed sizes is refused rather than silently resized)."""
    from PIL import Image

    mode = "L" if grey else "RGB"
    want = size or loaded[0].size
    arrs = []
    for im, (p, _) in zip(loaded, files, strict=True):
        if im.size != want:
            if size is None:
                first = files[0][0]
                raise FormatError(
                    f"{p}: image is {im.size[0]}x{im.size[1]} but {first} is {want[0]}x{want[1]}; "
                    "pass --image-size N to resize every image to N x N"
                )
            im = im.resize(want, Image.BILINEAR)
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        arrs.append(a[None] if grey else a.transpose(2, 0, 1))
    return np.stack(arrs)


def read_image_folder(root: Path, image_size: int | None = None):
    """ROOT/<class>/<image> -> (x uint8 (N, C, H, W), y, class names, digest). Grey if every image is grey, else
    RGB; every image must share one size unless ``image_size`` asks to resize them all to that square size.
    ``digest``: sha256 over (relative path, NUL, file bytes) of every image in sorted path order."""
    classes, files = _class_files(root)
    digest = hashlib.sha256()
    loaded = _open_images(files, root, digest)
    grey = all(im.mode in GREY_MODES for im in loaded)
    size = (image_size, image_size) if image_size else None
    x = _to_array(loaded, files, grey, size)
    y = np.array([ci for _, ci in files], dtype=np.int64)
    return x, y, classes, digest.hexdigest()


def read_split_folders(root: Path, image_size: int | None = None):
    """ROOT/train/<class>/<image> and ROOT/test/<class>/<image> -> ((xtr, ytr), (xte, yte), class names, digest).

    Both parts must name the same classes and (unless ``image_size``) share one image size and colour mode
    (RGB if any image of either part is colour). ``digest``: sha256 over (path relative to ROOT, NUL, file
    bytes) of every image, train then test, each in sorted path order; for the public CIFAR-10 JPEG copy this
    is the digest its layout script prints."""
    classes, files_tr = _class_files(root / "train")
    classes_te, files_te = _class_files(root / "test")
    if classes_te != classes:
        only = sorted(set(classes) ^ set(classes_te))
        raise FormatError(
            f"{root}: train/ and test/ must hold the same class folders; differing: {', '.join(only)}"
        )
    digest = hashlib.sha256()
    # sorted relative paths put every test/ file before every train/ file; hash in that order
    loaded_te = _open_images(files_te, root, digest)
    loaded_tr = _open_images(files_tr, root, digest)
    grey = all(im.mode in GREY_MODES for im in loaded_tr + loaded_te)
    size = (image_size, image_size) if image_size else None
    # one pass over train then test, so every image is held to the first training image's size
    x = _to_array(loaded_tr + loaded_te, files_tr + files_te, grey, size)
    xtr, xte = x[: len(files_tr)], x[len(files_tr) :]
    ytr = np.array([ci for _, ci in files_tr], dtype=np.int64)
    yte = np.array([ci for _, ci in files_te], dtype=np.int64)
    return (xtr, ytr), (xte, yte), classes, digest.hexdigest()
