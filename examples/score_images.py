"""Score image files with a trained and calibrated artifact inside your own process, no server needed.

The numbers are those ``POST /v1/predict`` returns: class, log-likelihood of the feature under that class's
Gaussian, abnormality (the share of clean calibration inputs of that class that score lower) and the deployed
decision. Run from the repository root after ``make run`` (or ``make calibrate``):

    python examples/score_images.py
"""

import numpy as np
import torch
from PIL import Image

from detector import Detector

det = Detector.load("models/mnist-robust", device="cpu")  # checks the weights' and the detector files' sha256
paths = ["examples/digit_7.png", "examples/adversarial_7.png"]  # 28x28 grey, like the model's inputs


def load(path: str) -> torch.Tensor:  # a 28x28 grey PNG -> (1, 28, 28) floats in [0, 1]
    return torch.from_numpy(np.asarray(Image.open(path).convert("L"), np.float32) / 255)[None]


s = det.score(torch.stack([load(p) for p in paths]))  # (N, 1, 28, 28)
rows = zip(paths, s.pred, s.log_likelihood, s.abnormality, s.is_adversarial, strict=True)
for path, k, ll, abnormal, flagged in rows:
    flag = "FLAGGED" if flagged else ""
    print(path, det.class_names[k], f"log-likelihood {ll:.1f}", f"abnormality {abnormal:.2f}", flag)
