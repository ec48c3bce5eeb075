"""The results blocks of the training benchmarks (docs/results/training.md): ``bench/training/train.py`` (L-GM head against
softmax on mnist5k; ``--cifar-synthetic`` for the CIFAR ResNet timing), ``bench/training/stability.py`` (numerical safety)
and ``bench/training/robust_train.py`` (robust accuracy of adversarially trained models), each rendered by the benchmark's own table function from its
report.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]

REPORTS = {  # record -> the folder it is collected from (the benchmark's --out)
    name: f"reports/bench_{name}" for name in ("train", "train_cifar", "robust_train", "stability")
}


def _train(rec: Record) -> str:
    from bench.training import train

    return train.mnist_table(rec["report"])


def _train_cifar(rec: Record) -> str:
    from bench.training import train

    return train.cifar_table(rec["report"])


def _robust_train(rec: Record) -> str:
    from bench.training import robust_train

    return robust_train.table(rec["report"])


def _stability(rec: Record) -> str:
    from bench.training import stability

    return stability.table(rec["report"])


RENDERERS: dict[str, Callable[[Record], str]] = {
    "train.table": _train,
    "train_cifar.table": _train_cifar,
    "robust_train.table": _robust_train,
    "stability.table": _stability,
}
