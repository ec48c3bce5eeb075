"""The served FGSM (``detector/gradient.py``): the float64 logit path keeps a gradient where float32 loses it,
and the step is the one torchattacks takes on the same path."""

from __future__ import annotations

import pytest
import torch

from detector.gradient import Float64Logits, fgsm
from training.data import load_dataset
from training.lgm import LGMHead
from training.model import Classifier


class FarApart(torch.nn.Module):
    """A toy net whose predicted class leads by 30 nats: in float32 its softmax probability rounds to exactly 1,
    so the cross-entropy's gradient loses the term that pushes that logit down (here the only term)."""

    training = False

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, 16).reshape(1, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1) * self.w).sum(1, keepdim=True)
        return torch.cat([30.0 + s, 0.0 * s, 0.0 * s], 1)  # (N, 3): only the leading logit depends on x


def test_float32_cross_entropy_has_no_gradient_where_float64_has_one() -> None:
    net = FarApart()
    x = torch.full((2, 1, 4, 4), 0.5, requires_grad=True)
    y = torch.zeros(2, dtype=torch.long)
    (g32,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), x)
    (g64,) = torch.autograd.grad(torch.nn.functional.cross_entropy(Float64Logits(net)(x), y), x)
    assert g32.abs().max() == 0.0 and g64.abs().max() > 0.0  # what made the float32 demo a no-op
    x_adv = fgsm(net, x.detach(), 0.1)  # type: ignore[arg-type]
    assert torch.allclose((x_adv - x.detach()).abs(), torch.full_like(x_adv, 0.1))


def test_fgsm_matches_torchattacks_on_the_same_path(tiny_artifact) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    from training.artifacts import load_artifact

    model, meta = load_artifact(tiny_artifact, torch.device("cpu"))
    assert isinstance(model, Classifier) and isinstance(model.head, LGMHead)
    d = meta["dataset"]
    x = load_dataset(d["name"], d.get("root"), int(d.get("split_seed", 0))).test.x[:16].float() / 255.0
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = fgsm(model, x, 0.2)
    theirs = torchattacks.FGSM(Float64Logits(model), eps=0.2)(x, y)
    assert ours.shape == x.shape and (ours - x).abs().max() <= 0.2 + 1e-6
    torch.testing.assert_close(ours, theirs)
    assert not model.training
