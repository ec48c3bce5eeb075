"""Model artifacts: round trip, the metadata every artifact carries, and the tamper / truncation checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from training.artifacts import (
    META,
    WEIGHTS,
    ArtifactError,
    atomic_write_bytes,
    atomic_write_json,
    load_artifact,
    load_meta,
    save_artifact,
    sha256_bytes,
)
from training.model import Classifier, ModelSpec


@pytest.fixture()
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny artifact, free to be damaged."""
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(
            backbone="mnist_cnn",
            backbone_args={"width": 4},
            head="lgm",
            feat_dim=3,
            input_shape=(1, 8, 8),
            head_args={"variance": "diagonal", "learn_priors": True},
        ),
        ModelSpec(
            backbone="mnist_cnn",
            backbone_args={"width": 4},
            head="softmax",
            feat_dim=6,
            input_shape=(1, 12, 12),
        ),
        ModelSpec(
            backbone="resnet",
            backbone_args={"width": 4, "depth": 8},
            head="lgm",
            feat_dim=5,
            input_shape=(3, 32, 32),
            mean=(0.5, 0.4, 0.3),
            std=(0.2, 0.2, 0.25),
            num_classes=7,
        ),
    ],
)
def test_round_trip_gives_equal_outputs(spec: ModelSpec, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier(spec)
    if model.is_lgm:
        with torch.no_grad():
            model.head.log_var_raw.add_(0.1 * torch.randn_like(model.head.log_var_raw))
    model.train()
    model(torch.rand(8, *spec.input_shape))  # move BatchNorm running statistics away from their init
    model.eval()
    meta = save_artifact(
        tmp_path, model, {"dataset": {"name": "synthetic", "class_names": list("abcdefghij")}}
    )
    loaded, meta2 = load_artifact(tmp_path, "cpu")
    assert meta2 == json.loads(json.dumps(meta))
    assert not loaded.training
    x = torch.rand(5, *spec.input_shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.features(x), model.features(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META, WEIGHTS]  # no temporary files left behind


def test_trained_artifact_metadata(tiny_artifact: Path) -> None:
    """model.json holds what the artifact format promises: architecture and arguments, dataset, classes, input shape,
    normalisation, L-GM settings, split seed, history, metrics and the weights' sha256."""
    meta = load_meta(tiny_artifact)
    arch = meta["arch"]
    assert arch["backbone"] == "mnist_cnn" and arch["backbone_args"] == {"width": 8}
    assert arch["head"] == "lgm" and arch["feat_dim"] == 8 and arch["num_classes"] == 10
    assert arch["input_shape"] == [1, 8, 8]
    assert len(arch["mean"]) == 1 and len(arch["std"]) == 1 and arch["std"][0] > 0
    ds = meta["dataset"]
    assert (
        ds["name"] == "digits" and ds["split_seed"] == 0 and ds["class_names"] == [str(i) for i in range(10)]
    )
    assert ds["sizes"] == {"train": 1258, "calibration": 179, "test": 360}
    for key in (
        "variance",
        "lkd_form",
        "lam",
        "alpha",
        "alpha_every",
        "alpha_cap",
        "var_floor",
        "var_lr_mult",
    ):
        assert key in meta["lgm"]
    assert meta["train"]["epochs"] == 3 and meta["train"]["seed"] == 0
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    for h in meta["history"]:
        assert {"loss", "train_accuracy", "calibration_accuracy", "alpha", "lr", "seconds"} <= set(h)
    m = meta["metrics"]
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["calibration_accuracy"] <= 1.0
    assert m["test_accuracy"] > 0.3  # far above chance (0.1) after 3 tiny epochs
    assert meta["weights_sha256"] == sha256_bytes((tiny_artifact / WEIGHTS).read_bytes())
    assert meta["format_version"] == 1


def test_trained_artifact_reproduces_its_accuracy(tiny_artifact: Path) -> None:
    from training.data import load_dataset

    model, meta = load_artifact(tiny_artifact)
    test = load_dataset("digits", seed=meta["dataset"]["split_seed"]).test
    with torch.no_grad():
        acc = float((model(test.float()).argmax(1) == test.y).float().mean())
    assert acc == pytest.approx(meta["metrics"]["test_accuracy"], abs=1e-6)


def test_tampered_weights_are_refused(artifact_copy: Path) -> None:
    w = artifact_copy / WEIGHTS
    blob = bytearray(w.read_bytes())
    blob[-10] ^= 0xFF
    w.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 does not match") as exc:
        load_artifact(artifact_copy)
    assert "\n" not in str(exc.value) and str(w) in str(exc.value)


def test_truncated_weights_are_refused(artifact_copy: Path) -> None:
    w = artifact_copy / WEIGHTS
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated or tampered"):
        load_artifact(artifact_copy)


def test_weights_that_do_not_fit_are_refused(artifact_copy: Path) -> None:
    """A consistent hash does not help weights of another shape: clear error, not a traceback."""
    blob = st_save({"backbone.fc.weight": torch.zeros(2, 2)})
    (artifact_copy / WEIGHTS).write_bytes(blob)
    meta = json.loads((artifact_copy / META).read_text())
    meta["weights_sha256"] = sha256_bytes(blob)
    (artifact_copy / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not fit the architecture"):
        load_artifact(artifact_copy)


def test_pickled_weights_are_never_unpickled(artifact_copy: Path, tmp_path: Path) -> None:
    """torch.save (pickle) in place of safetensors, with a matching hash: refused without unpickling."""
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    w = artifact_copy / WEIGHTS
    torch.save({"x": Hostile()}, w)
    meta = json.loads((artifact_copy / META).read_text())
    meta["weights_sha256"] = sha256_bytes(w.read_bytes())
    (artifact_copy / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError):
        load_artifact(artifact_copy)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / META).write_text('{"arch": '), "not valid JSON"),
        (lambda d: (d / META).write_text("[1, 2]"), "must hold a JSON object"),
        (lambda d: (d / META).unlink(), "missing model metadata"),
        (lambda d: (d / WEIGHTS).unlink(), "missing weights file"),
        (
            lambda d: (d / META).write_text(json.dumps({"arch": {}, "dataset": {}})),
            "missing key 'weights_sha256'",
        ),
    ],
)
def test_damaged_metadata_gives_one_line(artifact_copy: Path, damage, expected: str) -> None:
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=expected) as exc:
        load_artifact(artifact_copy)
    assert "\n" not in str(exc.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such artifact folder"):
        load_artifact(tmp_path / "nothing")


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_bytes(p, b'{"a": 2}')
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]
