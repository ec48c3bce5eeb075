"""The results blocks of the training benchmarks (docs/results/training.md): ``bench/training/train.py`` (L-GM head against
softmax on mnist5k; ``--cifar-synthetic`` for the CIFAR ResNet timing), ``bench/training/stability.py`` (numerical safety)
and ``bench/training/robust_train.py`` (robust accuracy of adversarially trained models), each rendered by the benchmark's own table function from its
report.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.records import table_of

Record = dict[str, Any]

REPORTS = {  # record -> the folder it is collected from (the benchmark's --out)
    name: f"reports/bench_{name}" for name in ("train", "train_cifar", "robust_train", "stability")
}


RENDERERS: dict[str, Callable[[Record], str]] = {
    "train.table": table_of("bench.training.train", "mnist_table"),
    "train_cifar.table": table_of("bench.training.train", "cifar_table"),
    "robust_train.table": table_of("bench.training.robust_train", "table"),
    "stability.table": table_of("bench.training.stability", "table"),
}
