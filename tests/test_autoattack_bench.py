"""bench/detection/autoattack.py really attacks: on a tiny model its ensemble lowers accuracy, each attack
only on the inputs the earlier ones failed on, and the chunked runs merge into one report; on a tiny colour
(CIFAR-shaped) artifact the budget, the targets, the data and the published rows follow its dataset."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.detection import autoattack as aa

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("torchattacks")


def test_fab_runs_on_the_l_gm_network(tiny_artifact: Path) -> None:
    """FAB-T gets the float32 network (torchattacks' FAB fails on float64 logits) and returns valid images."""
    from training.artifacts import load_artifact
    from training.data import load_dataset

    model, _ = load_artifact(tiny_artifact)
    test = load_dataset("digits", seed=0).test
    x, y = test.float()[:8], test.y[:8]
    x_adv = aa.make_attacks(model, 0.3, 10, 0, 3, 10)["fab-t"](x, y)
    assert x_adv.shape == x.shape and float((x_adv - x).abs().amax()) <= 0.3 + 1e-5


def test_autoattack_lowers_a_tiny_models_accuracy(tiny_artifact: Path) -> None:
    from training.artifacts import load_artifact
    from training.data import load_dataset

    torch.set_num_threads(1)
    model, _ = load_artifact(tiny_artifact)
    test = load_dataset("digits", seed=0).test
    x, y = test.float()[:40], test.y[:40]
    res = aa.run_autoattack(model, x, y, eps=0.3, steps=5, queries=30, batch=20)
    clean, robust = sum(res["clean"]), sum(res["robust"])
    assert clean >= 15  # the tiny model (3 epochs) gets most clean digits right
    assert robust < clean // 2  # and the ensemble breaks most of them at eps 0.3
    after = [res["robust_after"][a] for a in aa.ATTACKS]
    assert after == sorted(after, reverse=True) and after[-1] == robust  # cumulative, each on the survivors
    assert all(res["robust"][i] <= res["clean"][i] for i in range(len(y)))
    assert {b for b in res["broken_by"] if b} <= set(aa.ATTACKS)


def test_chunks_merge_into_one_report(tiny_artifact: Path, tmp_path: Path) -> None:
    common = [str(tiny_artifact), "--n", "24", "--steps", "3", "--queries", "20", "--threads", "1"]
    common += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    aa.main([*common, "--start", "0", "--limit", "10"])
    first = json.loads((tmp_path / "out" / "report.json").read_text())
    assert first["n"] == 10 and first["first_n_contiguous"]
    aa.main([*common, "--start", "10"])  # the rest of the 24
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["n"] == 24 and rep["robust_accuracy"] <= rep["clean_accuracy"]
    lo, hi = rep["robust_interval"]
    assert lo <= rep["robust_accuracy"] <= hi
    with pytest.raises(SystemExit):
        aa.main([*common, "--start", "30"])


# ---- colour images: a tiny CIFAR-shaped artifact (3x32x32, 4 classes, an image folder) ---------------------
COLOUR_CLASSES = ("cat", "dog", "eel", "fox")
TINTS = ((0.2, 0, 0), (0, 0.2, 0), (0, 0, 0.2), (-0.15, -0.15, -0.15))  # each class a tint of grey noise


def write_colour_folder(root: Path, n_train: int = 16, n_test: int = 8) -> Path:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, 32x32 RGB, as in a CIFAR-10 folder copy."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        for name, tint in zip(COLOUR_CLASSES, TINTS, strict=True):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                a = np.clip(0.5 + np.array(tint) + rng.normal(0, 0.05, (32, 32, 3)), 0, 1)  # (H, W, 3)
                img = Image.fromarray((255 * a).astype(np.uint8), mode="RGB")
                img.save(root / part / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def colour_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_config_factory) -> Path:
    """A ResNet-20 (width 8) L-GM artifact on the colour folder; trains in about 2 s; treat as read-only."""
    from training.trainer import train

    root = write_colour_folder(tmp_path_factory.mktemp("colour_data"))
    out = tmp_path_factory.mktemp("colour_artifact")
    train(tiny_config_factory(dataset="folder", data_root=str(root), epochs=6, batch_size=8), out)
    return out


def copy_artifact(art: Path, dest: Path, **card) -> Path:
    """The artifact's files under ``dest``, its card's dataset entry updated with ``card``."""
    dest.mkdir(parents=True)
    shutil.copy(art / "model.safetensors", dest / "model.safetensors")
    meta = json.loads((art / "model.json").read_text())
    meta["dataset"].update(card)
    (dest / "model.json").write_text(json.dumps(meta))
    return dest


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_colour_budget_and_data_root_come_from_the_card(colour_artifact: Path, tmp_path: Path) -> None:
    """No --eps on a colour dataset: 8/255; the permutation spans the test split's own size; a card whose
    recorded root is relative (moved) loads through --data-root."""
    from training.data import DataError

    card = json.loads((colour_artifact / "model.json").read_text())["dataset"]
    assert aa.default_eps(card) == 8 / 255
    moved = copy_artifact(colour_artifact, tmp_path / "moved", root="data/moved-away")
    common = [str(moved), "--limit", "6", "--steps", "2", "--queries", "10", "--threads", "1"]
    common += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    with pytest.raises(DataError, match="data/moved-away"):
        aa.main(common)
    aa.main([*common, "--data-root", card["root"]])
    rep = read_report(tmp_path / "out")
    assert rep["eps"] == 8 / 255 and rep["n"] == 6 and rep["n_asked"] == 32  # N: at most the 32 test images
    assert rep["order"] == "numpy.random.default_rng(0).permutation(32)"
    assert (rep["split"], rep["items"], rep["target"]) == ("folder test split", "images", None)
    assert rep["published"] == []  # no published rows for an unknown dataset
    assert rep["architecture"] == "resnet-20, lgm head" and rep["params"] > 1000


@pytest.mark.parametrize(("model", "classes"), [("colour", 4), ("digits", 10)])
def test_targets_are_the_other_classes(model: str, classes: int, colour_artifact, tiny_artifact) -> None:
    from training.artifacts import load_artifact

    net, _ = load_artifact(colour_artifact if model == "colour" else tiny_artifact)
    assert net.spec.num_classes == classes
    attacks = aa.make_attacks(net, 0.3, classes, 0, 3, 10)
    assert attacks["apgd-t"].n_target_classes == attacks["fab-t"].n_target_classes == classes - 1
    many = aa.make_attacks(net, 0.3, 100, 0, 3, 10)  # CIFAR-100: the standard version's 9 targets, not 99
    assert many["apgd-t"].n_target_classes == many["fab-t"].n_target_classes == 9
    with pytest.raises(ValueError, match="at least 4 classes"):
        aa.make_attacks(net, 0.3, 3, 0, 3, 10)


@pytest.fixture(scope="module")
def colour_test(colour_artifact: Path):
    from training.artifacts import load_artifact
    from training.data import load_card_dataset

    model, meta = load_artifact(colour_artifact)
    test = load_card_dataset(meta["dataset"]).test
    return model, test.float()[:12], test.y[:12]


@pytest.mark.parametrize("attack", aa.ATTACKS)
def test_each_attack_stays_in_the_ball_and_the_image(attack: str, colour_test) -> None:
    model, x, y = colour_test
    torch.set_num_threads(1)
    x_adv = aa.make_attacks(model, 0.3, 4, 0, 5, 50)[attack](x, y).detach()
    assert x_adv.shape == x.shape == (12, 3, 32, 32)
    assert float((x_adv - x).abs().amax()) <= 0.3 + 1e-5
    assert float(x_adv.amin()) >= 0.0 and float(x_adv.amax()) <= 1.0


def test_the_chain_breaks_an_undefended_colour_model(colour_artifact: Path, tmp_path: Path) -> None:
    argv = [str(colour_artifact), "--eps", "0.3", "--limit", "16", "--steps", "5", "--queries", "50"]
    aa.main([*argv, "--threads", "1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    rep = read_report(tmp_path / "out")
    assert rep["n"] == 16 and rep["clean_accuracy"] >= 0.75  # the tints are easy to tell apart clean
    assert rep["robust_accuracy"] < rep["clean_accuracy"]  # and easy to swap at eps 0.3
    assert list(rep["robust_after"].values()) == sorted(rep["robust_after"].values(), reverse=True)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["command"].endswith(
        f"--report-only --n 32 --eps 0.3 --cache {tmp_path / 'cache'} --out {tmp_path / 'out'}"
    )


CIFAR = {"name": "cifar10", "class_names": aa.rows.CIFAR10_CLASSES}
CIFAR_FOLDER = {"name": "folder", "class_names": aa.rows.CIFAR10_CLASSES}
OTHER_FOLDER = {"name": "folder", "class_names": list(COLOUR_CLASSES)}
MNIST = {"name": "mnist", "class_names": [str(i) for i in range(10)]}
ROBUSTBENCH = ("Wong et al. 2020", "Engstrom et al. 2019", "Rice et al. 2020")


@pytest.mark.parametrize(
    ("card", "eps", "rows", "split", "folder"),
    [
        (CIFAR, None, ROBUSTBENCH, "CIFAR-10 test split", "autoattack_cifar10"),
        (CIFAR_FOLDER, None, ROBUSTBENCH, "CIFAR-10 test split", "autoattack_cifar10"),
        (CIFAR, 4 / 255, (), "CIFAR-10 test split", "autoattack_cifar10"),  # the rows are at 8/255 only
        (OTHER_FOLDER, None, (), "folder test split", "autoattack_folder"),
        (MNIST, None, ("Madry et al. 2018", "TRADES"), "MNIST official test set", "autoattack"),
    ],
    ids=["cifar10", "cifar10-folder", "cifar10-4/255", "other-folder", "mnist"],
)
def test_published_rows_follow_the_dataset(card, eps, rows, split, folder, colour_artifact, tmp_path, capsys):
    """A CIFAR-10 card (the loader's or a folder copy) prints RobustBench's rows with each network's size
    beside ours; an unknown dataset, or another budget, prints ours alone; MNIST keeps its table."""
    art = copy_artifact(colour_artifact, tmp_path / "art", **card)
    eps = eps or aa.default_eps(card)
    args = argparse.Namespace(artifact=str(art), eps=eps, seed=0, steps=100, queries=5000)
    args.cache = tmp_path / "c"
    chunk = aa.cache_dir(args) / "chunk-00000-00004.json"
    chunk.parent.mkdir(parents=True)
    chunk.write_text(
        json.dumps(
            {
                "start": 0,
                "clean": [True, True, True, False],
                "robust": [True, False, False, False],
                "broken_by": [None, "apgd-ce", "square", None],
                "seconds": dict.fromkeys(aa.ATTACKS, 1.0),
                "wall_seconds": 4.0,
            }
        )
    )
    extra = [] if eps == aa.default_eps(card) else ["--eps", str(eps)]
    aa.main([str(art), "--report-only", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), *extra])
    table = capsys.readouterr().out
    rep = read_report(tmp_path / "o")
    assert rep["split"] == split and aa.rows.default_out(card, [3, 32, 32]) == Path("reports") / folder
    assert [r for r in rows if r not in table] == [] and ("published |" in table) == bool(rows)
    assert len(rep["published"]) == (3 if rows else 0)
    if card["name"] == "mnist":  # MNIST's table keeps its four columns and its target
        assert "| model | clean accuracy |" in table and "Target robust accuracy >= 93%" in table
        assert "(above TRADES' 92.81%) | 25.00%" in aa.target_row(rep)
    else:
        assert f"| this project: {art} | resnet-20, lgm head (" in table
        # CIFAR-10's target is set at the published rows' budget, 8/255, and nowhere else
        assert ("Target robust accuracy >= 40%: not decided at this sample size" in table) == bool(rows)
        assert ("Target" in table) == bool(rows)
    if rows == ROBUSTBENCH:
        assert "| AutoAttack robust accuracy >= 40% (set for an adversarially trained" in aa.target_row(rep)
        for arch in ("PreAct ResNet-18 (11.2M)", "ResNet-50 (23.5M)", "WideResNet-34-20 (184.5M)"):
            assert arch in table
        assert "L-inf 8/255, CIFAR-10 test split: 4 images" in table
        assert "83.34% | 43.21% | 10,000 |" in table and "Published rows: RobustBench's CIFAR-10" in table
