"""The results blocks of ``bench/serving/serve.py`` (docs/results/serving.md, docs/protocols.md, docs/query-attacks.md),
rendered by bench/serving/report.py's tables, the ones the benchmark prints, from each run's report.json.

One record per run a page quotes; the folder each is collected from is the run's ``--out``:

- ``serve``: the load test over layouts (``--layouts 1x1,2x1``), blocks ``serve.table``;
- ``serve_soak``: the 10-minute soak (``--soak 600``, the defence on, 100 clients), ``serve_soak.soak``, quoted
  by the serving results and the query-attack page alike;
- ``serve_protocols``: ``--protocols`` with the peers, ``serve_protocols.table`` and ``.targets``;
- ``serve_protocols_off``: ``--protocols --servers lgm`` with the query-attack defence off, ``.table``;
- ``serve_query``: ``--query-policies off,flag`` (the defence's cost), ``.table``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.records import table_of

Record = dict[str, Any]
SERVE = "bench.serving.report"

REPORTS = {  # record -> the folder it is collected from (the run's --out)
    name: f"reports/bench_{name}"
    for name in (
        "serve",
        "serve_soak",
        "serve_protocols",
        "serve_protocols_off",
        "serve_query",
    )
}


RENDERERS: dict[str, Callable[[Record], str]] = {
    "serve.table": table_of(SERVE, "load_table"),
    "serve_soak.soak": table_of(SERVE, "soak_text"),
    "serve_protocols.table": table_of(SERVE, "protocols_table"),
    "serve_protocols.targets": table_of(SERVE, "protocols_targets"),
    "serve_protocols_off.table": table_of(SERVE, "protocols_table"),
    "serve_query.table": table_of(SERVE, "load_table"),
}
