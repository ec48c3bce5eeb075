"""The detector's statistics of one input, and how they combine into one score. Torch, differentiable.

For an input x with logits z, last-layer feature f(x), tapped block outputs h_1(x)..h_L(x) (averaged over space)
and predicted class k = argmax z, each statistic is larger when x looks less like a clean input of class k:

- ``likelihood``: -log N(f(x); mu_k, Sigma_k), the feature's log-likelihood under class k's Gaussian, negated
  (Wan et al. 2018 score with the head's Gaussians; by default the Gaussians are refitted to the features, see
  ``detector/gaussians.py``);
- ``boundary``: -log(z_k - max_{j != k} z_j), the log of the posterior log-odds between the two most probable
  classes, negated. Minimal-perturbation attacks (Carlini & Wagner 2017, DeepFool) stop just across a decision
  boundary, between two Gaussians, where the likelihood is only mildly low but the odds are close to even;
- ``layer<l>``: -log N(h_l(x); mu^l_k, Sigma^l), the likelihood of block l's output under class k's Gaussian
  (Lee et al. 2018's feature ensemble, scored under the predicted class rather than the closest one: early
  layers of an adversarial input still look like its true class).
- ``layers-joint`` (opt-in, instead of ``layers``): one statistic, ``layers``, the likelihood under class k of
  the tapped outputs concatenated, [h_1(x), .., h_L(x)], with one Gaussian (tied covariance) over the whole
  vector: the feature ensemble pooled into a single Mahalanobis test, so that the max below tests one layer
  statistic, not L, at its share of the false-positive rate;
- ``stability`` (opt-in): how much of the predicted class's logit margin m(x) = z_k(x) - max_{j != k} z_j(x)
  the input loses under small fixed noise, mean_i (m(x) - m(clip(x + n_i))) / (|m(x)| + 1), for M noise patterns
  n_i ~ N(0, sigma^2 I) drawn once at calibration and stored with the detector (so the score is deterministic and
  exportable). Adversarial inputs found by small-budget attacks sit just past a decision boundary, in a region
  the attack made and noise leaves (the instability that Hu et al. 2019, "A New Defense Against Adversarial
  Images: Turning a Weakness into a Strength", and Roth et al. 2019, "The Odds are Odd", test for); clean
  inputs keep their margin. It costs M more forward passes per input.

Each statistic s_i becomes a surprise -log P_clean(S_i > s_i) (``detector/tails.py``), and the score is
- ``max`` (clean mode): the largest surprise, i.e. flag on the most extreme statistic. Its threshold is set on
  clean calibration inputs only, at the target false-positive rate, so each statistic is tested at its share of
  that rate and no attack is needed to fit anything;
- ``logistic`` (roc mode): w . surprises + b, a logistic regression fitted on attacks generated on the
  calibration split (Lee et al. 2018; Ma et al. 2018 combine their per-layer scores the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from detector.gaussians import ClassGaussians
from detector.layers import forward_with_layers
from detector.tails import TailModel, TailStack
from training.model import Classifier
from training.modes import eval_mode

GROUPS = ("likelihood", "boundary", "layers", "layers-joint", "stability")
DEFAULT_GROUPS = ("likelihood", "boundary", "layers")  # what `lgm calibrate` scores unless told
COMBINERS = ("max", "logistic")
MIN_ODDS = 1e-6  # log-odds floor of the boundary statistic (caps it at -log(1e-6) = 13.8)


def statistic_names(groups: list[str], n_layers: int) -> list[str]:
    """Names in the order the statistics are computed: likelihood, boundary, layer1..layerL."""
    names = [g for g in ("likelihood", "boundary") if g in groups]
    if "layers" in groups:
        names += [f"layer{i + 1}" for i in range(n_layers)]
    if "layers-joint" in groups:
        names.append("layers")
    if "stability" in groups:
        names.append("stability")
    return names


def taps_layers(groups: list[str]) -> bool:
    """Whether these statistics need the tapped blocks' outputs."""
    return "layers" in groups or "layers-joint" in groups


def pooled_layers(groups: list[str], layers: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block outputs as the layer Gaussians see them: each on its own (``layers``), all concatenated into
    one (N, sum C_l) vector (``layers-joint``), or none."""
    if "layers-joint" in groups:
        return [torch.cat(layers, dim=1)]
    return layers if "layers" in groups else []


def margin(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """z_k - max_{j != k} z_j per row: the log-odds of class k against the runner-up."""
    other = logits.masked_fill(torch.nn.functional.one_hot(k, logits.shape[1]).bool(), float("-inf"))
    return _at(logits, k) - other.amax(1)


def stability(
    model: Classifier, x: torch.Tensor, logits: torch.Tensor, k: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """mean_i (m(x) - m(clip(x + n_i))) / (|m(x)| + 1) for the noise patterns ``noise`` (M, C, H, W); ``logits``
    are the network's at x, k the class the margins are taken for. One batched pass over the N * M noisy copies
    (the caller runs the network in eval mode)."""
    n, m = x.shape[0], noise.shape[0]
    noisy = (
        (x.unsqueeze(1) + noise.to(x.dtype).unsqueeze(0)).clamp(0.0, 1.0).flatten(0, 1)
    )  # (N * M, C, H, W)
    zn = model(noisy).float().reshape(n, m, -1)
    m0 = margin(logits, k)
    mn = margin(zn.flatten(0, 1), k.repeat_interleave(m)).reshape(n, m)
    return ((m0.unsqueeze(1) - mn) / (m0.abs().unsqueeze(1) + 1.0)).mean(1)


def _at(t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return t.gather(1, cls[:, None]).squeeze(1)


@dataclass
class ScoreModel:
    """Everything the score needs besides the network: Gaussians, tail models and the combination."""

    groups: list[str]
    gaussians: ClassGaussians  # last-layer feature
    layer_gaussians: list[ClassGaussians]  # one per tapped block (empty without the ``layers`` group)
    tails: list[TailModel] = field(default_factory=list)  # one per statistic, in statistic_names order
    combine: str = "max"
    weights: list[float] | None = None  # logistic combination
    bias: float = 0.0
    noise: torch.Tensor | None = None  # (M, C, H, W): the ``stability`` statistic's fixed noise patterns
    _stack: TailStack | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        return statistic_names(self.groups, len(self.layer_gaussians))

    def to(self, device: torch.device | str) -> ScoreModel:
        return ScoreModel(
            self.groups,
            self.gaussians.to(device),
            [g.to(device) for g in self.layer_gaussians],
            self.tails,
            self.combine,
            self.weights,
            self.bias,
            None if self.noise is None else self.noise.to(device),
        )

    # -- statistics --------------------------------------------------------------------------------------------
    def forward(
        self, model: Classifier, x: torch.Tensor, cls: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) in [0, 1] -> logits (N, K), log-likelihoods of the last-layer feature under every
        class (N, K), statistics (N, m). The statistics are taken for class ``cls`` (N,) when given (an attack
        aiming at a class), else for the predicted class. The network runs in eval mode whatever mode the
        caller left it in, and is given its mode back (``training/modes.py``): every score and every calibration
        statistic goes through here."""
        with eval_mode(model):
            if taps_layers(self.groups):
                logits, feats, layers = forward_with_layers(model, x)
                layers = pooled_layers(self.groups, layers)
            else:
                logits, feats = model(x, return_features=True)
                layers = []
            logits = logits.float()
            k = logits.argmax(1) if cls is None else cls
            if "stability" in self.groups:
                if self.noise is None:
                    raise ValueError("the stability statistic needs its noise patterns (ScoreModel.noise)")
                unstable = stability(model, x, logits, k, self.noise)
        ll = self.gaussians.log_density(feats)  # (N, K)
        cols = []
        if "likelihood" in self.groups:
            cols.append(-_at(ll, k))
        if "boundary" in self.groups:
            cols.append(-torch.log(margin(logits, k).clamp(min=MIN_ODDS)))
        for g, h in zip(self.layer_gaussians, layers, strict=True):
            cols.append(-_at(g.log_density(h), k))
        if "stability" in self.groups:
            cols.append(unstable)
        return logits, ll, torch.stack([c.to(ll.dtype) for c in cols], dim=1)

    # -- combination -------------------------------------------------------------------------------------------
    def surprises(self, stats: torch.Tensor) -> torch.Tensor:
        """(N, m) statistics -> (N, m) surprises -log P_clean(S_i > s_i)."""
        # built once; rebuilt if the tail models are replaced (calibration assigns them after construction)
        if self._stack is None or self._stack.tails is not self.tails:
            self._stack = TailStack(self.tails)
        return self._stack.surprise(stats)

    def combined(self, surprises: torch.Tensor) -> torch.Tensor:
        """(N, m) surprises -> (N,) score, larger = more abnormal."""
        if self.combine == "max":
            return surprises.amax(1)
        w = torch.tensor(self.weights, dtype=surprises.dtype, device=surprises.device)
        return surprises @ w + self.bias

    def likelihood_threshold(self, score_threshold: float) -> float:
        """The log-likelihood (nats) below which an input is flagged even when every other statistic is as
        typical as it can be (surprise 0): what the ``threshold`` field reports."""
        i = self.names.index("likelihood") if "likelihood" in self.groups else None
        if i is None:
            return float("-inf")
        if self.combine == "max":
            level = score_threshold
        else:
            w = (self.weights or [])[i]
            if w <= 0:
                return float("-inf")  # the likelihood alone never flags
            level = (score_threshold - self.bias) / w
        return -self.tails[i].value_at(max(level, 0.0))
