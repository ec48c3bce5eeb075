"""``lgm train`` and ``lgm plot-features`` from the command line: one-line errors with exit code 2, and a plot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LGM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_subprocess_bad_data_root_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    proc = run_cli("train", "--dataset", "mnist", "--data-root", str(missing), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lgm train: error:") and str(missing) in lines[0]
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_subprocess_malformed_file_is_named(tmp_path: Path) -> None:
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x00\x01\x02")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"GIF89a not an idx file")
    proc = run_cli(
        "train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "train-images-idx3-ubyte") in lines[0] and "IDX" in lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--var-floor", "2"], "--var-floor must be in (0, 1)"),
        (["--dataset", "cifar10"], "pass --data-root"),
        (["--device", "cuda:7"] if not shutil.which("nvidia-smi") else ["--lam", "-1"], ""),
    ],
)
def test_in_process_errors_are_one_line(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    rc = main(["train", "--out", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lgm train: error:") and expected in lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [(["--epochs", "ten"], "invalid int value: 'ten'"), (["--variance", "full"], "invalid choice: 'full'")],
)
def test_argparse_errors_exit_2(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err  # no usage block above the message
    assert (
        lines[0].startswith("lgm train: error:") and expected in lines[0] and "lgm train --help" in lines[0]
    )


def test_plot_features_missing_artifact(tmp_path: Path, capsys) -> None:
    rc = main(["plot-features", str(tmp_path / "none")])
    assert rc == 2
    assert "no such artifact folder" in capsys.readouterr().err


def test_plot_features_writes_png(tiny_artifact: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plots" / "f.png"
    assert main(["plot-features", str(tiny_artifact), "--out", str(out), "--device", "cpu"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 400 and im.size[1] > 400
        assert len(im.getcolors(1 << 20) or range(1000)) > 20  # not blank: many colours (classes, ellipses)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # written atomically, no temp file left


def test_plot_features_two_dimensional_and_softmax(tiny_config_factory, tmp_path: Path) -> None:
    """2-D features are plotted directly (with the Gaussians); a softmax head gets the scatter only."""
    import numpy as np

    from training.plots import ellipse_params, pca_projection, plot_features
    from training.trainer import train

    train(tiny_config_factory(epochs=1, feat_dim=2, variance="diagonal"), tmp_path / "lgm2")
    p = plot_features(tmp_path / "lgm2", split="calibration", device="cpu")
    assert p == tmp_path / "lgm2" / "features.png" and p.stat().st_size > 10_000
    train(tiny_config_factory(epochs=1, head="softmax"), tmp_path / "sm")
    assert plot_features(tmp_path / "sm", tmp_path / "sm.png", device="cpu").stat().st_size > 10_000
    with pytest.raises(ValueError, match="split must be one of"):
        plot_features(tmp_path / "sm", split="validation")
    # the geometry helpers: identity for D = 2; ellipse axes from the covariance's eigenvalues
    m, proj, _ = pca_projection(np.random.default_rng(0).normal(size=(50, 2)))
    assert np.array_equal(proj, np.eye(2)) and np.array_equal(m, np.zeros(2))
    w, h, ang = ellipse_params(np.array([[4.0, 0.0], [0.0, 1.0]]), 2.0)
    assert (w, h) == pytest.approx((8.0, 4.0)) and abs(ang) % 180 == pytest.approx(0.0, abs=1e-6)
    m, proj, ratio = pca_projection(np.random.default_rng(0).normal(size=(200, 5)) * [5, 1, 1, 1, 0.1])
    assert abs(proj[0, 0]) > 0.99 and ratio[0] > ratio[1]


def test_train_help_lists_every_option_by_group_with_defaults(capsys) -> None:
    """One flag per TrainConfig field, in its group, with its default; adversarial training among them."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    groups = ["data:", "model:", "L-GM:", "optimisation:", "adversarial training:", "run:"]
    assert all(g in text for g in groups) and sorted(groups, key=text.index) == groups
    for expected in (
        "--lkd-form {paper,center}",
        "(default: center)",
        "--adversarial {none,pgd,trades}",
        "--adv-eps ADV_EPS L-inf radius",
        "(default: 0.3)",
        "--adv-lkd {pull,push}",
        "--learn-priors, --no-learn-priors",
    ):
        assert expected in text, expected


def test_cli_adversarial_option_errors_are_one_line(tmp_path: Path, capsys) -> None:
    rc = main(
        ["train", "--out", str(tmp_path / "o"), "--adversarial", "pgd", "--epochs", "2", "--adv-warmup", "2"]
    )
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "lgm train: error: --adv-warmup must be below --epochs (eps would never reach --adv-eps), got 2"
    ]
    assert not (tmp_path / "o").exists()
