"""The L-GM adversarial-example detector: scoring, calibration, attacks, evaluation, baselines."""

from detector.scoring import Detector, NotCalibratedError, Scores

__all__ = ["Detector", "NotCalibratedError", "Scores"]
