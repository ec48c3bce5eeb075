"""The offline evaluation harness of the detector: attacks, attack budgets, adversarial sets, baselines,
calibration's roc mode, ``lgm evaluate``, its metrics, bootstrap intervals, plots and report.

Why a subpackage of ``detector`` and not a sibling package: the project's top-level layout (``training/``,
``detector/``, ``service/``) stays as it is, while everything outside ``detector/harness/`` is the served
answer: a reviewer of the deployed rule reads ``detector/*.py`` and nothing here. ``detector/__init__.py`` never
imports this package, and the import-linter contracts in ``pyproject.toml`` forbid the served modules and the
service from importing it, so a server process never loads an attack, a baseline, tqdm or torch.distributed.
Imports go one way: the harness uses the served detector, never the reverse.
"""
