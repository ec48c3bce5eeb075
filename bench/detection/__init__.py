"""Benchmarks of the detector against attacks.

- ``detect.py``: ``lgm evaluate`` on the default attack suite, the deployed detector against five baselines
  (AUROC with intervals); ``detect_scores.py`` re-scores its saved adversarial sets under other detector
  settings;
- ``robust.py``: detect-or-correct against attackers who know the detector, on an adversarially trained and a
  quick model; ``robust_report.py`` holds its tables (also rendered on the results pages);
- ``autoattack.py``: AutoAttack (Croce & Hein 2020) on a model's full test split, chunked and resumable;
  ``autoattack_rows.py`` holds the rows published per dataset (MNIST, CIFAR-10) and its tables;
- ``detector_suite.py``: the deployed detector of any calibrated artifact on its dataset's full test split:
  clean figures, the detector-aware adaptive attacks, gradient-masking checks; chunked and resumable.
"""
