"""Training L-GM networks: the L-GM head and loss, backbones, datasets, trainer and model artifacts.

This package depends on nothing else in the project (imports go service -> detector -> training). Its public
surface, for use in your own PyTorch code:

- ``LGMHead`` and ``lgm_loss`` (Wan et al., CVPR 2018): a drop-in for a last linear layer and cross-entropy;
  ``AlphaSchedule`` for the margin's step-up.
- ``TrainConfig`` and ``train``: what ``lgm train`` runs; ``load_artifact`` to read a trained model back.
"""

from training.artifacts import load_artifact
from training.config import TrainConfig
from training.lgm import LGMHead
from training.loss import AlphaSchedule, lgm_loss
from training.trainer import train

__all__ = ["AlphaSchedule", "LGMHead", "TrainConfig", "lgm_loss", "load_artifact", "train"]
