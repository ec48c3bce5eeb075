"""Local Intrinsic Dimensionality (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle, Bailey,
ICLR 2018, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality") on the softmax twin.

The maximum-likelihood LID estimate of a point x against a reference sample (their eq. 3, Amsaleg et al. 2015):

    LID(x) = -( (1/k) sum_{i=1..k} log(r_i(x) / r_k(x)) )^-1

with r_i(x) the distance from x to its i-th nearest neighbour in the reference sample. It is computed on the
flattened activations of every tapped block, the penultimate features and the logits, and the per-layer
estimates are combined by a logistic regression fitted on clean against adversarial inputs.

Their protocol estimates each input's LID against the other clean inputs of its test minibatch. A deployed
detector cannot depend on which other inputs arrive with it, and nothing here is fitted on test inputs, so the
reference is fixed: ``n_batches`` minibatches of ``batch`` clean *training* inputs (their minibatch of 100 and
k = 20 by default), and an input's estimate is the mean over those minibatches (averaging only lowers the
estimate's variance). The regression is fitted on attacks generated on the calibration split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from detector.harness.baselines.base import FitData, Forward
from detector.layers import forward_with_layers
from training.batched import batched, model_device
from training.data import Split
from training.model import Classifier


def mle_lid(points: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """MLE LID of each row of ``points`` (N, D) against ``reference`` (M, D), M >= k; -> (N,) float64.
    A point identical to a reference point (distance 0) is skipped as its own neighbour."""
    d = torch.cdist(points.double(), reference.double())  # (N, M)
    d = d.masked_fill(d <= 1e-12, float("inf"))  # exact duplicates carry no information about the dimension
    r = d.topk(k, dim=1, largest=False).values.clamp_min(1e-12)  # (N, k), ascending
    mean_log = torch.log(r / r[:, -1:]).mean(1)  # <= 0
    return -1.0 / mean_log.clamp(max=-1e-12)


def activations(model: Classifier, x: torch.Tensor, batch_size: int = 250) -> list[torch.Tensor]:
    """Flattened activations of every tapped block, then features, then logits: a list of (N, D_l), CPU."""

    def one(xb: torch.Tensor) -> list[torch.Tensor]:
        logits, feats, layers = forward_with_layers(model, xb, pooling="flat")
        return [t.float() for t in [*layers, feats, logits]]

    return batched(one, x, batch_size, model_device(model))


@dataclass
class LID:
    """Reference activations, the neighbourhood size and the fitted regression."""

    reference: list[list[torch.Tensor]]  # [minibatch][layer] -> (batch, D_l)
    k: int
    regression: object | None = None

    @classmethod
    def from_training(
        cls, model: Classifier, train: Split, k: int = 20, batch: int = 100, n_batches: int = 5, seed: int = 0
    ) -> LID:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train), generator=gen)[: batch * n_batches]
        acts = activations(model, train.x[idx])
        ref = [[a[j * batch : (j + 1) * batch] for a in acts] for j in range(n_batches)]
        return cls(ref, k)

    def features(self, model: Classifier, x: torch.Tensor) -> np.ndarray:
        """(N, L) LID estimates per layer, averaged over the reference minibatches."""
        acts = activations(model, x)
        per_batch = [
            torch.stack([mle_lid(a, r, self.k) for a, r in zip(acts, ref, strict=True)], 1)
            for ref in self.reference
        ]
        return torch.stack(per_batch).mean(0).numpy()

    def fit(self, model: Classifier, clean: torch.Tensor, adversarial: torch.Tensor, seed: int = 0) -> LID:
        from detector.harness.baselines.mahalanobis import logistic_regression, quiet_fit

        xs = np.concatenate([self.features(model, clean), self.features(model, adversarial)])
        ys = np.concatenate([np.zeros(len(clean)), np.ones(len(adversarial))])
        self.regression = quiet_fit(logistic_regression(seed), xs, ys)
        return self

    def score(self, model: Classifier, x: torch.Tensor) -> np.ndarray:
        """(N,) logistic score, larger = more adversarial."""
        if self.regression is None:
            raise RuntimeError("LID detector not fitted: call fit() on calibration inputs first")
        return self.regression.decision_function(self.features(model, x))  # type: ignore[attr-defined]


class LIDBaseline:
    """``lid``: per-layer LID estimates combined by a regression fitted on calibration adversarials. Not
    differentiable for the adaptive attacks: its nearest-neighbour search over 25k-dimensional activations is
    too slow to follow for hundreds of steps on a CPU."""

    name = "lid"
    needs_attacks = True
    differentiable = False

    def fit(self, data: FitData) -> None:
        self.model, adv = data.model, data.adversarial_for(self.name)
        self.state = LID.from_training(self.model, data.ds.train, seed=data.seed).fit(
            self.model, data.clean, adv, data.seed
        )

    def score(self, out: Forward) -> torch.Tensor:
        return torch.from_numpy(self.state.score(self.model, out.x))

    def attack_score(self, out: Forward, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("lid is not differentiable here (see the class docstring)")

    def describe(self) -> dict[str, Any]:
        ref = self.state.reference
        return {"k": self.state.k, "reference": f"{len(ref)} x {len(ref[0][0])} training inputs"}
