"""The benchmarks: each script measures one part of the project, prints its tables and writes ``report.json``
and ``provenance.json`` into its ``--out`` folder under ``reports/``, which ``bench/records/results.py
collect`` publishes as a record in ``docs/results/data/`` and the pages generated from it.

- ``detection/``: the detector against attacks (``detect.py``, ``detect_scores.py``, ``robust.py``) and the
  full-test-set benchmarks of a shipped model (``autoattack.py``, ``detector_suite.py``);
- ``training/``: training itself: L-GM against softmax (``train.py``), numerical safety (``stability.py``),
  adversarial training (``robust_train.py``);
- ``serving/``: ``lgm serve`` under load, its request formats against other servers, a soak (``serve.py``);
- ``query/``: attacks through the HTTP API and the stateful defence against them (``attacks.py``,
  ``fingerprints.py``);
- ``records/``: the records and the generated pages (``results.py collect`` and ``build``, the renderers);
- ``provenance.py``: the stamp every benchmark writes (date, commit, machine, command).

Run a script from the repository root as ``python bench/<folder>/<script>.py``. Every module imports the
others by full name (``bench.serving.wrk``); a script run that way puts the repository root in place of its
own folder at the head of ``sys.path``, so the same imports work when the tests import it as a module, and no
file here shadows a library. Imports go one way: ``records`` -> the four benchmark folders -> ``provenance``;
bench imports the project, the project never imports bench (the import-linter contracts in
``pyproject.toml``).
"""
