"""The CIFAR-10 models shipped in models/cifar10 and models/cifar10-robust (adversarially trained): their files
are intact, each was made by the training line its provenance records on the CIFAR-10 copy its card names, and
each classifies the example image."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shipped_checks import assert_calibrated_as_recorded, assert_trained_with, recorded_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "cifar10"
ROBUST = ROOT / "models" / "cifar10-robust"
BOTH = pytest.mark.parametrize("shipped", [SHIPPED, ROBUST], ids=["cifar10", "cifar10-robust"])
MAKE_VARIABLE = {
    SHIPPED: "CIFAR10_SHIPPED := models/cifar10",
    ROBUST: "CIFAR10_ROBUST := models/cifar10-robust",
}
MAKE_TARGET = {SHIPPED: "run-cifar10:", ROBUST: "run-cifar10-robust:"}
# sha256 over (relative path, NUL, bytes) of the 60,000 JPEG files of the public CIFAR-10-images repository
JPEG_COPY_DIGEST = "cab9d0dd9f093e7c0ce3d5bb14b7a8f156116071f97a80f383eafa3d736c4f5a"


def provenance(shipped: Path) -> dict:
    return json.loads((shipped / "provenance.json").read_text())


@BOTH
def test_every_shipped_file_matches_its_recorded_sha256(shipped: Path) -> None:
    files = provenance(shipped)["files"]
    assert set(files) == {"model.safetensors", "model.json", "detector.safetensors", "detector.json"}
    for name, digest in files.items():
        assert hashlib.sha256((shipped / name).read_bytes()).hexdigest() == digest, name
    assert sum((shipped / name).stat().st_size for name in files) < 8 * 2**20  # a few MB


@BOTH
def test_the_detector_was_made_by_the_recorded_calibration_line(shipped: Path) -> None:
    assert_calibrated_as_recorded(shipped)


@BOTH
def test_the_model_was_made_by_the_recorded_training_line_on_the_named_data(shipped: Path) -> None:
    """The recorded ``lgm train`` line, parsed by lgm's own parser, is the config model.json was trained with
    (all but --data-root, which names a folder on the machine that trained it), on the data its digest names."""
    cfg = recorded_config(provenance(shipped)["train_command"])
    meta = json.loads((shipped / "model.json").read_text())
    assert_trained_with(dict(meta["train"], data_root=cfg.data_root), cfg)
    assert meta["dataset"]["name"] == "folder" and meta["dataset"]["digest"] == JPEG_COPY_DIGEST
    assert meta["dataset"]["sizes"] == {"train": 45000, "calibration": 5000, "test": 10000}
    assert len(meta["history"]) == cfg.epochs
    detector = json.loads((shipped / "detector.json").read_text())
    assert detector["model_sha256"] == meta["weights_sha256"]
    makefile = (ROOT / "Makefile").read_text()
    assert MAKE_VARIABLE[shipped] in makefile and MAKE_TARGET[shipped] in makefile


def _pngs(*paths: Path) -> torch.Tensor:
    x = [
        np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB"), dtype=np.float32) / 255.0
        for p in paths
    ]
    return torch.from_numpy(np.stack(x).transpose(0, 3, 1, 2).copy())


def test_shipped_model_classifies_its_example_image() -> None:
    from detector.scoring import Detector

    det = Detector.load(SHIPPED, device="cpu")  # checks the weights' sha256 and the detector's model hash
    assert det.input_shape == (3, 32, 32) and len(det.class_names) == 10
    clean = [p for p in (ROOT / "examples").glob("cifar10_*.png") if not p.stem.endswith("_adversarial")]
    assert len(clean) == 1
    label = clean[0].stem.removeprefix("cifar10_")
    batch = _pngs(clean[0], clean[0].with_name(clean[0].stem + "_adversarial.png"))
    scores = det.score(batch)
    assert det.class_names[int(scores.pred[0])] == label  # the clean image: its own class
    assert det.class_names[int(scores.pred[1])] != label  # its attacked copy: another class
    assert float((batch[1] - batch[0]).abs().max()) <= 8 / 255 + 1e-6  # within the stated budget
    noise = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(det.score(noise).is_adversarial.float().mean()) >= 0.75  # far out-of-distribution: flagged


def test_robust_model_classifies_the_example_and_the_copy_attacked_against_the_other_model() -> None:
    """The robust model reads the clean airplane as an airplane, and so too its copy attacked (PGD, 8/255) against
    models/cifar10: that attack does not transfer. Its own attack (examples/cifar10-robust/, made by
    examples/make_cifar10.py against it) does move it to another class within the same budget."""
    from detector.scoring import Detector

    det = Detector.load(ROBUST, device="cpu")
    own = ROOT / "examples" / "cifar10-robust"
    batch = _pngs(
        ROOT / "examples" / "cifar10_airplane.png",
        ROOT / "examples" / "cifar10_airplane_adversarial.png",
        own / "cifar10_airplane_adversarial.png",
    )
    assert torch.equal(batch[0], _pngs(own / "cifar10_airplane.png")[0])  # the same test image
    pred = [det.class_names[int(k)] for k in det.score(batch).pred]
    assert pred[:2] == ["airplane", "airplane"] and pred[2] != "airplane"
    assert float((batch[2] - batch[0]).abs().max()) <= 8 / 255 + 1e-6
    noise = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(det.score(noise).is_adversarial.float().mean()) >= 0.75  # far out-of-distribution: flagged
