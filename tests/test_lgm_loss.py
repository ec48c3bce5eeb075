"""The L-GM head and loss (Wan et al., CVPR 2018): reductions, margin, gradients, likelihood, numerical safety."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal

from training.lgm import VARIANCE_MODES, LGMHead, SoftmaxHead
from training.loss import LKD_FORMS, AlphaSchedule, lgm_loss, likelihood_term


def _batch(n: int = 16, d: int = 5, k: int = 4, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("variance", VARIANCE_MODES)
def test_reduces_to_softmax_cross_entropy(variance: str) -> None:
    """alpha = 0, lambda = 0, identity variances, equal priors: L_GM is the CE of -0.5 ||x - mu_k||^2 logits."""
    torch.manual_seed(0)
    head = LGMHead(5, 4, variance=variance).train()
    x, y = _batch()
    logits = head(x, y, alpha=0.0)
    total, cls, lkd = lgm_loss(head, x, logits, y, lam=0.0, form="paper")
    ref_logits = -0.5 * (x[:, None, :] - head.means[None]).pow(2).sum(-1)  # (N, K)
    torch.testing.assert_close(head.variances(), torch.ones(4, 5))
    torch.testing.assert_close(total, F.cross_entropy(ref_logits, y))
    torch.testing.assert_close(cls, total)
    assert float(lkd) == 0.0
    # log|Lambda| = 0 and equal priors shift every logit by the same constant
    torch.testing.assert_close(logits - logits[:, :1], ref_logits - ref_logits[:, :1])


def test_margin_only_in_training_with_labels() -> None:
    torch.manual_seed(0)
    head = LGMHead(5, 4, variance="fixed")
    x, y = _batch()
    alpha = 0.3
    head.train()
    plain = head(x)
    with_margin = head(x, y, alpha)
    d = head.half_mahalanobis(x)
    expected = plain.clone()
    expected[torch.arange(len(y)), y] -= alpha * d[torch.arange(len(y)), y]  # -d_y (1 + alpha)
    torch.testing.assert_close(with_margin, expected)
    assert not torch.allclose(with_margin, plain)
    torch.testing.assert_close(head(x, None, alpha), plain)  # training, no labels: no margin
    head.eval()
    torch.testing.assert_close(head(x, y, alpha), plain)  # eval, labels given: no margin
    torch.testing.assert_close(head(x, y, 0.0), plain)


@pytest.mark.parametrize("variance", VARIANCE_MODES)
@pytest.mark.parametrize("form", LKD_FORMS)
def test_gradients_match_finite_differences(variance: str, form: str) -> None:
    """torch.autograd.gradcheck (float64) of L_GM with respect to the features, means and variances."""
    torch.manual_seed(0)
    head = LGMHead(3, 4, variance=variance, learn_priors=True).double().train()
    with torch.no_grad():  # move away from the symmetric initial point
        head.log_var_raw.add_(0.3 * torch.randn_like(head.log_var_raw))
        head.prior_logits.add_(0.2 * torch.randn(4, dtype=torch.float64))
    x, y = _batch(6, 3, 4, dtype=torch.float64)
    names = ["means", "prior_logits"] + (["log_var_raw"] if variance != "fixed" else [])
    params = [getattr(head, n).detach().clone().requires_grad_(True) for n in names]

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            logits = self.head(feats, y, 0.2)
            return lgm_loss(self.head, feats, logits, y, lam=0.7, form=form)[0]  # type: ignore[arg-type]

    loss_mod = Loss()

    def f(feats: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = {f"head.{n}": p for n, p in zip(names, ps, strict=True)}
        return torch.func.functional_call(loss_mod, state, (feats,))

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True), *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variance", VARIANCE_MODES)
def test_log_likelihood_matches_multivariate_normal(variance: str) -> None:
    torch.manual_seed(1)
    head = LGMHead(4, 3, variance=variance).double()
    if variance != "fixed":
        with torch.no_grad():
            head.log_var_raw.copy_(torch.randn_like(head.log_var_raw))
    x, _ = _batch(10, 4, 3, dtype=torch.float64)
    got = head.log_likelihood(x)  # (N, K)
    var = head.variances()
    for k in range(3):
        ref = MultivariateNormal(head.means[k], covariance_matrix=torch.diag(var[k])).log_prob(x)
        torch.testing.assert_close(got[:, k], ref)
    # and the paper-form likelihood term is -loglik_y up to the constant D/2 log(2 pi)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    lkd = likelihood_term(head, x, y, "paper")
    torch.testing.assert_close(lkd, -(got[torch.arange(10), y]).mean() - 0.5 * 4 * math.log(2 * math.pi))


def test_center_form_is_euclidean() -> None:
    head = LGMHead(4, 3, variance="diagonal")
    with torch.no_grad():
        head.log_var_raw.fill_(2.0)  # variances far from 1: the center form must ignore them
    x, y = _batch(8, 4, 3)
    torch.testing.assert_close(
        likelihood_term(head, x, y, "center"), 0.5 * (x - head.means[y]).pow(2).sum(1).mean()
    )


def test_variances_stay_positive_and_start_at_one() -> None:
    head = LGMHead(6, 5, variance="diagonal", var_floor=1e-2)
    torch.testing.assert_close(head.variances(), torch.ones(5, 6))
    with torch.no_grad():
        head.log_var_raw.fill_(-1e4)  # an optimiser gone wild: variance falls to the floor, never 0 or below
    assert torch.all(head.variances() >= 1e-2)
    assert torch.isfinite(head.log_det()).all()
    assert torch.isfinite(head(torch.randn(3, 6))).all()


def test_no_nan_over_many_steps_with_learned_diagonal_variances() -> None:
    """Paper form, learned diagonal variances and priors, a large learning rate: 500 steps without NaN or inf.

    The paper-form L_lkd is unbounded below without the floor (scale x, mu by s and Lambda by s^2: d is unchanged,
    log|Lambda| falls), so this run drives the variances down onto the floor, the regime where the MXNet port
    hit -inf and NaN, and checks that everything stays finite there.
    """
    torch.manual_seed(0)
    d, k, floor = 4, 5, 1e-2
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, d))
    head = LGMHead(d, k, variance="diagonal", learn_priors=True, var_floor=floor)
    opt = torch.optim.AdamW(
        [
            {"params": net.parameters()},
            {"params": [head.means, head.prior_logits]},
            {"params": [head.log_var_raw], "lr": 0.02},
        ],
        lr=0.05,
        weight_decay=0.0,
    )
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, 10, generator=g) * 3
    schedule = AlphaSchedule(0.1, 2.0, 200, 0.3)
    for step in range(500):
        y = torch.randint(0, k, (32,), generator=g)
        x = centres[y] + 0.5 * torch.randn(32, 10, generator=g)
        feats = net(x)
        logits = head(feats, y, schedule(step))
        loss, _, _ = lgm_loss(head, feats, logits, y, lam=1.0, form="paper")
        assert torch.isfinite(loss), f"loss {loss.item()} at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in [*net.parameters(), *head.parameters()]:
        assert torch.isfinite(p).all()
    var = head.variances().detach()
    assert torch.all(var >= floor)
    assert float(var.min()) < 2 * floor  # the run really reached the floor, where NaN used to appear
    head.eval()
    assert torch.isfinite(head.log_likelihood(net(centres))).all()


def test_alpha_schedule_step_up() -> None:
    official = AlphaSchedule(initial=0.1, factor=2.0, every=5000, cap=0.3)
    got = [official(i) for i in (0, 4999, 5000, 9999, 10000, 50000)]
    assert got == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    constant = AlphaSchedule(initial=0.25, every=0)
    assert [constant(i) for i in (0, 10**6)] == [0.25, 0.25]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="variance"):
        LGMHead(2, 2, variance="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="var_floor"):
        LGMHead(2, 2, var_floor=0.0)
    head = LGMHead(2, 2)
    x, y = torch.zeros(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="likelihood form"):
        likelihood_term(head, x, y, "euclid")  # type: ignore[arg-type]


def test_softmax_head_shapes() -> None:
    head = SoftmaxHead(7, 3)
    assert head(torch.randn(5, 7)).shape == (5, 3)
