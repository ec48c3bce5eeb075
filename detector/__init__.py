"""The L-GM adversarial-example detector: scoring, calibration, attacks, evaluation, baselines.

Public surface: ``Detector.load(DIR).score(x)`` scores a batch with a calibrated artifact (``Scores``: class,
posterior, log-likelihood, combined score, abnormality, flag); ``calibrate`` fits a detector to an artifact (what
``lgm calibrate`` runs); ``evaluate`` with an ``EvalConfig`` is ``lgm evaluate``.
"""

from detector.calibration import calibrate
from detector.evaluation import EvalConfig, evaluate
from detector.scoring import Detector, NotCalibratedError, Scores

__all__ = ["Detector", "EvalConfig", "NotCalibratedError", "Scores", "calibrate", "evaluate"]
