"""The network's loss gradient on the float64 logit path, and the web page's one-step FGSM demo.

An L-GM head's logits are minus half squared distances, often tens of nats apart. Once the predicted class leads
by more than about 17 nats its float32 softmax probability rounds to exactly 1, and the cross-entropy's gradient
loses the term that pushes that logit down: a gradient attack stalls or steps the wrong way. In float64 the
term survives up to a lead of about 37 nats.
``Float64Logits`` gives an attack the logits in float64 (every attack of the evaluation harness goes through
it) and ``fgsm`` is FGSM on that path. It lives outside ``detector/harness/`` so that the service's
``POST /v1/perturb`` needs no attack library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from training.model import Classifier
from training.modes import eval_mode


class Float64Logits(torch.nn.Module):
    """The network with its logits in float64, for attacks whose loss is a softmax cross-entropy."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model
        # a new Module starts in training mode; torchattacks restores that mode after an attack
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).double()


def fgsm(model: Classifier, x: torch.Tensor, eps: float, y: torch.Tensor | None = None) -> torch.Tensor:
    """FGSM (Goodfellow, Shlens, Szegedy, ICLR 2015, "Explaining and Harnessing Adversarial Examples"):

        x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)

    with f's logits in float64 and y the model's own prediction unless given. x (N, C, H, W) in [0, 1]; returns
    x' detached, same shape and device. The model is used in eval mode and left in the mode it was in."""
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().float().clone().requires_grad_(True)
        logits = Float64Logits(model)(xg)  # (N, K) float64
        target = logits.argmax(1).detach() if y is None else y.to(logits.device)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, target), xg)
    return (xg + eps * g.sign()).clamp(0.0, 1.0).detach()
