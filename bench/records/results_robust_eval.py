"""The results blocks of ``bench/detection/autoattack.py`` and ``bench/detection/detector_suite.py``: the shipped
robust MNIST model's (docs/mnist-benchmark.md) and the robust CIFAR-10 model's (docs/detector.md). Each renders
with the benchmark's own table function from its report.json, so the page and the script's output are the same
text. Both benchmarks merge cached chunks; the record holds whatever sample the chunks cover and every table
states its n.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.records import table_of

Record = dict[str, Any]
AA, DET = "bench.detection.autoattack", "bench.detection.detector_suite"

REPORTS = {  # record -> the folder it is collected from (the benchmark's --out)
    "autoattack": "reports/autoattack",
    "mnist_detector": "reports/mnist_detector",
    "autoattack_cifar10_robust": "reports/autoattack_cifar10-robust",
    "cifar10_robust_detector": "reports/cifar10-robust_detector",
}


RENDERERS: dict[str, Callable[[Record], str]] = {
    "autoattack.table": table_of(AA, "format_report"),
    "autoattack.target": table_of(AA, "target_row"),
    "mnist_detector.table": table_of(DET, "format_report"),
    "mnist_detector.targets": table_of(DET, "target_rows"),
    "autoattack_cifar10_robust.table": table_of(AA, "format_report"),
    "autoattack_cifar10_robust.target": table_of(AA, "target_row"),
    "cifar10_robust_detector.table": table_of(DET, "format_report"),
    "cifar10_robust_detector.targets": table_of(DET, "target_rows"),
}
