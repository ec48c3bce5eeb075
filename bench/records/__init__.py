"""The published records and the pages generated from them: ``results.py collect NAME DIR`` copies a
benchmark's ``report.json`` and ``provenance.json`` into ``docs/results/data/NAME.json``; ``results.py
build`` (``make results``) rewrites every generated block of README.md and docs/ from those records.
``results.py`` renders the detection records itself; each ``results_*.py`` names its benchmark family's
records, how each is collected, and which table function of the benchmark renders each block."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def table_of(module: str, fn: str) -> Callable[[dict[str, Any]], str]:
    """A block's renderer: ``module.fn`` applied to the record's ``report``, the benchmark's own table function.
    The module is imported when a block is rendered, not when the records are listed, so ``results.py`` starts
    without importing every benchmark (and torch with them). An import by name is invisible to import-linter; the
    edge it hides (records -> a benchmark) is the allowed direction of pyproject.toml's bench layers."""

    def render(rec: dict[str, Any]) -> str:
        return getattr(importlib.import_module(module), fn)(rec["report"])

    return render
