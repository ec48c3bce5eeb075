"""The results blocks of ``bench/detection/autoattack.py`` and ``bench/detection/detector_suite.py``: the shipped
robust MNIST model's (docs/mnist-benchmark.md) and the robust CIFAR-10 model's (docs/detector.md). Each renders
with the benchmark's own table function from its report.json, so the page and the script's output are the same
text. Both benchmarks merge cached chunks; the record holds whatever sample the chunks cover and every table
states its n.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]

REPORTS = {  # record -> the folder it is collected from (the benchmark's --out)
    "autoattack": "reports/autoattack",
    "mnist_detector": "reports/mnist_detector",
    "autoattack_cifar10_robust": "reports/autoattack_cifar10-robust",
    "cifar10_robust_detector": "reports/cifar10-robust_detector",
}


def _aa(fn: str) -> Callable[[Record], str]:
    def render(rec: Record) -> str:
        from bench.detection import autoattack

        return getattr(autoattack, fn)(rec["report"])

    return render


def _det(fn: str) -> Callable[[Record], str]:
    def render(rec: Record) -> str:
        from bench.detection import detector_suite

        return getattr(detector_suite, fn)(rec["report"])

    return render


RENDERERS: dict[str, Callable[[Record], str]] = {
    "autoattack.table": _aa("format_report"),
    "autoattack.target": _aa("target_row"),
    "mnist_detector.table": _det("format_report"),
    "mnist_detector.targets": _det("target_rows"),
    "autoattack_cifar10_robust.table": _aa("format_report"),
    "autoattack_cifar10_robust.target": _aa("target_row"),
    "cifar10_robust_detector.table": _det("format_report"),
    "cifar10_robust_detector.targets": _det("target_rows"),
}
