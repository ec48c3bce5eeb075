"""The results block of ``bench/detection/detect_scores.py`` (docs/results/detection.md): the detector variants re-scored on
a ``bench/detection/detect.py`` run's saved adversarial sets, rendered by the script's own table function from its
report.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.records import table_of

Record = dict[str, Any]

REPORTS = {"detect_scores": "reports/bench_detect_scores"}  # record -> the folder it is collected from


RENDERERS: dict[str, Callable[[Record], str]] = {
    "detect_scores.table": table_of("bench.detection.detect_scores", "table")
}
