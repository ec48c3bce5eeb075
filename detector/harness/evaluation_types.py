"""What the stages of ``lgm evaluate`` pass each other: its configuration (``EvalConfig``), the loaded detector,
dataset and twin (``Context``) and the selected test inputs (``TestInputs``).

They live apart from the stages (``detector/harness/evaluation.py``) so that the report's assembly
(``detector/harness/assemble.py``), which the stages call, can name them without importing the stages back:
imports in the harness go one way, ``evaluation -> assemble -> evaluation_types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from detector.harness.attacks import attacks_help
from detector.harness.baselines import CHOICES, FIT_ATTACKS, resolve_baselines
from detector.scoring import Detector, Scores
from training.configargs import check_options, option
from training.data import Dataset


@dataclass
class EvalConfig:
    """What ``lgm evaluate`` can be told: the artifact and report folder, then options that each declare their
    flag, help, group and bounds (``training/configargs.py`` builds the command line from them)."""

    artifact: str
    out: str
    attacks: list[str] = option(
        ["default"],
        attacks_help(),
        group="evaluation",
    )
    limit: int | None = option(
        None, "evaluate the first N inputs of the shuffled test split", group="evaluation", ge=1
    )
    reuse: bool = option(
        False, "re-score adversarial sets saved in OUT instead of re-attacking", group="evaluation"
    )
    baselines: list[str] = option(
        ["all"],
        "baseline detectors to run on the softmax twin, a comma list; 'all' runs every one, 'none' runs none "
        "and trains or loads no twin (the L-GM detector alone)",
        group="evaluation",
        choices=CHOICES,
    )
    fit_attacks: list[str] = option(
        list(FIT_ATTACKS),
        "attacks made on the calibration split to fit mahalanobis_full and lid ('' leaves those two out); "
        "made only when a chosen baseline needs them",
        group="evaluation",
    )
    maha_noise: float = option(
        0.0, "one-layer Mahalanobis input pre-processing step (0: off)", group="evaluation", ge=0, le=1
    )
    n_boot: int = option(
        1000,
        "bootstrap replicates of the 95%% intervals",
        group="evaluation",
        flag="--bootstrap",
        ge=10,
        le=100_000,
    )
    seed: int = option(0, "seed of the input order and the attacks", group="run")
    batch_size: int = option(
        100, "inputs per attack chunk (also the sharding unit)", group="run", ge=1, le=100_000
    )
    device: str = option("auto", "auto (CUDA when present) | cpu | cuda", group="run")
    budgets: dict[str, Any] = field(default_factory=dict)  # ``detector/harness/budgets.py``'s flags
    quiet: bool = False
    command: str = ""

    def validate(self) -> None:
        check_options(self)
        resolve_baselines(self.baselines)

    @property
    def baseline_names(self) -> list[str]:
        """The baselines to run, in registry order ([] for ``none``)."""
        return resolve_baselines(self.baselines)


@dataclass
class Context:
    """What ``prepare`` loads for every later stage: the detector, the dataset and the softmax twin."""

    det: Detector
    ds: Dataset
    twin: torch.nn.Module | None  # None with ``--baselines none``
    twin_meta: dict[str, Any] | None


@dataclass
class TestInputs:
    """The selected test inputs, their clean scores, and the attacked subset (correct on both networks, or on
    the L-GM network alone when no baseline runs: ``twin_clean`` is None then)."""

    idx: torch.Tensor  # (n,) indices into the test split
    y_all: torch.Tensor  # (n,)
    lgm_clean: Scores
    twin_clean: dict[str, torch.Tensor] | None
    correct: torch.Tensor  # (n,) bool
    x: torch.Tensor  # (N, C, H, W) attacked inputs
    y: torch.Tensor  # (N,)

    @property
    def attacked_idx(self) -> torch.Tensor:
        return self.idx[self.correct]
