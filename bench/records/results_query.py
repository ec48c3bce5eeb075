"""The results blocks of ``bench/query/attacks.py`` (docs/query-attacks.md), rendered from its report.json by the
table functions of ``bench/query/report.py``, the ones the benchmark prints with; and ``bench/query/fingerprints.py``'s
table (``fingerprints.table``), by its own function.

Four records: ``query_attacks``, the main run on the quick model (scenarios ``attacks,benign,sweep``),
``query_attacks_robust``, the same on the shipped robust model, and ``query_adaptive`` and
``query_adaptive_robust``, the runs of the attackers that know the defence (``adaptive,sweep``) on each. Each
has the blocks ``attacks`` (success and flags per attack), ``curve`` (success against queries) and ``sweep``;
the main runs also ``sybil`` (queries spread over K keys) and ``benign``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.records import table_of

Record = dict[str, Any]

RUNS = (
    "query_attacks",
    "query_attacks_robust",
    "query_adaptive",
    "query_adaptive_robust",
)  # each's --out: reports/NAME
REPORTS = {name: f"reports/{name}" for name in RUNS}  # record -> the folder it is collected from
REPORTS["fingerprints"] = "reports/bench_fingerprints"
BLOCKS = {
    "attacks": ("attacks", "attack_table"),
    "curve": ("attacks", "curve_table"),
    "sybil": ("sybil", "sybil_table"),
    "benign": ("benign", "benign_table"),
    "sweep": ("sweep", "sweep_table"),
}


def _block(key: str, fn: str) -> Callable[[Record], str]:
    def render(rec: Record) -> str:
        from bench.query import report as query_report

        rows = rec["report"].get(key)
        if not rows:
            return f"(this run measured no `{key}`: see its command in the stamp)"
        return getattr(query_report, fn)(rows)

    return render


RENDERERS: dict[str, Callable[[Record], str]] = {
    f"{name}.{block}": _block(key, fn) for name in RUNS for block, (key, fn) in BLOCKS.items()
}
RENDERERS["fingerprints.table"] = table_of("bench.query.fingerprints", "table")
