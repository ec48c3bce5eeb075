"""The results block of ``bench/detection/detect_scores.py`` (docs/results/detection.md): the detector variants re-scored on
a ``bench/detection/detect.py`` run's saved adversarial sets, rendered by the script's own table function from its
report.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]

REPORTS = {"detect_scores": "reports/bench_detect_scores"}  # record -> the folder it is collected from


def _table(rec: Record) -> str:
    from bench.detection import detect_scores

    return detect_scores.table(rec["report"])


RENDERERS: dict[str, Callable[[Record], str]] = {"detect_scores.table": _table}
