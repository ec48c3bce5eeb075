"""The published records and the pages generated from them: ``results.py collect NAME DIR`` copies a
benchmark's ``report.json`` and ``provenance.json`` into ``docs/results/data/NAME.json``; ``results.py
build`` (``make results``) rewrites every generated block of README.md and docs/ from those records.
``results.py`` renders the detection records itself; each ``results_*.py`` names its benchmark family's
records, how each is collected, and which table function of the benchmark renders each block."""
