"""One registry per kind of thing: attacks (``detector/harness/attacks``) and baselines
(``detector/harness/baselines``). A malformed entry fails at import; the report's columns, the suites, the
budgets and the literature column all come from the registries."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from detector.harness import attacks as atk
from detector.harness import baselines as bl
from detector.harness.baselines.base import FitData, Forward
from detector.harness.budgets import Budgets
from detector.harness.report import table
from training.artifacts import load_artifact
from training.data import load_dataset


# -- attacks ------------------------------------------------------------------------------------------------
def test_every_attack_has_a_budget_and_the_help_names_every_attack() -> None:
    b = Budgets()
    for name in atk.SPECS:
        assert atk.budget_of(name, b)["norm"] in ("Linf", "L2")
        assert name in atk.attacks_help()
    assert atk.parse_attack_list("all") == list(dict.fromkeys([*atk.DEFAULT_SUITE, *atk.SPECS]))
    assert set(atk.parse_attack_list("robust")) >= set(atk.ADAPTIVE)
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        atk.parse_attack_list("fgsm,nope")


def test_a_spec_without_a_family_or_a_budget_fails_at_import() -> None:
    good = atk.SPECS["fgsm"]
    no_cifar = dataclasses.replace(good, literature={"grey": "89%"})
    with pytest.raises(TypeError, match="literature must name every family"):
        atk._check_specs({"fgsm": no_cifar})
    with pytest.raises(TypeError, match="must state a norm"):
        atk._check_specs({"fgsm": dataclasses.replace(good, budget=lambda b: {"eps": b.eps})})


def test_the_literature_column_follows_the_dataset_family() -> None:
    mnist = {n: atk.literature_of(n, "mnist5k") for n in atk.SPECS}
    cifar = {n: atk.literature_of(n, "cifar10") for n in atk.SPECS}
    assert "Goodfellow 2015" in (mnist["fgsm"] or "")
    for name, figure in cifar.items():  # no MNIST-only figure in a CIFAR report
        assert figure is None or "maxout" not in figure, name
        assert figure is None or figure != mnist[name] or "Carlini" in figure or "Moosavi" in figure, name


def _report(dataset: str) -> dict[str, Any]:
    """A report.json with one attack, as ``assemble.build_report`` writes it (only what the table reads)."""
    m = {"success_rate": 0.9, "auroc": 0.99, "auroc_ci": [0.98, 1.0]}
    return {
        "detectors": {"lgm": {}, "msp": {}},
        "attacks": {
            "fgsm": {
                "success_rate": 0.9,
                "literature": atk.literature_of("fgsm", dataset),
                "detectors": {"lgm": m, "msp": m},
            }
        },
        "worst_case": {"all": {"lgm": m, "msp": m}},
    }


def test_report_table_prints_the_family_figure() -> None:
    assert "Goodfellow 2015" in table(_report("mnist"))
    assert "Goodfellow 2015" not in table(_report("cifar10")) and "Madry 2018" in table(_report("cifar10"))


# -- baselines ----------------------------------------------------------------------------------------------
def test_registry_lists_are_derived_from_one_registry() -> None:
    assert tuple(c.name for c in bl.REGISTRY) == bl.BASELINES
    assert set(bl.NEEDS_ATTACKS) == {"mahalanobis_full", "lid"}
    assert "lid" not in bl.ADAPTIVE_BASELINES and "msp" in bl.ADAPTIVE_BASELINES
    for cls in bl.REGISTRY:
        assert isinstance(cls(), bl.Baseline)


def test_a_malformed_baseline_fails_at_import() -> None:
    class NoScore:
        name = "broken"
        needs_attacks = False
        differentiable = False

        def fit(self, data: FitData) -> None: ...

    with pytest.raises(TypeError, match="lacks score, attack_score, describe"):
        bl._check_registry((*bl.REGISTRY, NoScore))
    with pytest.raises(TypeError, match="unique"):
        bl._check_registry((bl.MSPBaseline, bl.MSPBaseline))


class Energy:
    """A baseline added in one class: the negative free energy -logsumexp(logits) (Liu et al. 2020)."""

    name = "energy"
    needs_attacks = False
    differentiable = True

    def fit(self, data: FitData) -> None:
        self.fitted_on = len(data.ds.train)

    def score(self, out: Forward) -> torch.Tensor:
        return -torch.logsumexp(out.logits.double(), 1)

    def attack_score(self, out: Forward, t: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(out.logits.double(), 1)

    def describe(self) -> dict[str, Any]:
        return {"fitted_on": self.fitted_on}


def test_adding_a_baseline_is_one_registry_entry(tiny_artifact, monkeypatch) -> None:
    model, meta = load_artifact(tiny_artifact, torch.device("cpu"))
    d = meta["dataset"]
    ds = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0)))
    monkeypatch.setattr(bl, "REGISTRY", (bl.MSPBaseline, Energy))
    base = bl.fit_baselines(model, meta, ds, target_fpr=0.1)
    assert base.names == ["msp", "energy"]
    assert base.describe()["energy"] == {
        "network": "twin",
        "fitted_on": len(ds.train),
        "threshold": base.thresholds["energy"],
    }
    s = base.scores(ds.calibration.float())
    assert (
        float((s["energy"] > base.thresholds["energy"]).double().mean()) <= 0.1
    )  # its clean calibration FPR
    x = ds.test.float()[:4].requires_grad_(True)
    scores = base.attack_scores(x, torch.zeros(4, dtype=torch.long))
    assert set(scores) == {"msp", "energy"}
    (g,) = torch.autograd.grad(scores["energy"].sum(), x)
    assert g.abs().sum() > 0
