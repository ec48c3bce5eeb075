"""The L-GM adversarial-example detector as it is served: statistics, Gaussians, tails, scoring, store and
clean-mode calibration.

Public surface: ``Detector.load(DIR).score(x)`` scores a batch with a calibrated artifact (``Scores``: class,
posterior, log-likelihood, combined score, abnormality, flag); ``calibrate`` fits a detector to an artifact (what
``lgm calibrate`` runs).

The offline evaluation harness (attacks, baselines, ``lgm evaluate``, its report) is the subpackage
``detector.harness``, which this module never imports: a server process loads only what the deployed rule needs.
"""

from detector.calibration import calibrate
from detector.scoring import Detector, NotCalibratedError, Scores

__all__ = ["Detector", "NotCalibratedError", "Scores", "calibrate"]
