"""Adversarial training objectives for the L-GM (or softmax) classifier, on images in [0, 1].

- ``pgd``: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018. A fraction ``1 - adv_clean_fraction`` of each batch is replaced by its L-inf PGD examples,
  made against the current network (cross-entropy ascent, random start in the ball, signed-gradient steps of
  ``adv_step_frac * eps / adv_steps``, projection), and the whole batch is trained with the usual loss. One
  step is FGSM with a random start (Wong, Rice, Kolter, "Fast is better than free", ICLR 2020); with
  ``adv_start_frac = 2``, ``adv_step_frac = 1`` and no projection it is N-FGSM (de Jorge et al., NeurIPS 2022).
- ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between Robustness
  and Accuracy", ICML 2019. The clean loss plus ``trades_beta * KL(p(x) || p(x'))`` where x' maximises that KL
  in the ball (the same PGD, started uniformly in the ball rather than at x + 0.001 N(0, 1)).

Adapted to the L-GM head (Wan et al., CVPR 2018): the attacks ascend the head's own cross-entropy (logits
-d_k - 0.5 log|Lambda_k| + log pi_k, no margin); the training loss keeps the margin and the likelihood term.
The likelihood term of an adversarial feature f' of class y (``adv_lkd``):

- ``pull``: L_lkd(f', y), exactly as for a clean feature, pulling f' onto its true class's Gaussian;
- ``push`` (default): that, plus lambda * max(0, D/2 - min_{k != y} d_k(f')), pushing f' out of the nearest
  wrong class's Gaussian until it is as far from that mean as a typical sample of that Gaussian is from its
  own (E[d_k] = D/2 for a sample of class k); a hinge, so that the means cannot drift apart without bound.

Why ``push``: on ``mnist5k`` it beat ``pull`` in accuracy under PGD and in detect-or-correct under a
likelihood-aware PGD at the same clean accuracy, in every pair of runs ``bench/robust_train.py`` compared; the
figures, with their intervals, are in docs/results/training.md, not here.

Eps grows linearly from 0 to ``adv_eps`` over the first ``adv_warmup`` epochs (per iteration), a pure function
of (epoch, step) like the learning rate, so resumed runs replay exactly. The random start draws from the
epoch's CPU generator, so a CPU run stays bit-identical for a seed at a fixed thread count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.lgm import LGMHead
from training.loss import lgm_loss, likelihood_term
from training.model import Classifier
from training.modes import eval_mode


def pgd_linf(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    random_start: bool = True,
    start_frac: float = 1.0,
    project: bool = True,
) -> torch.Tensor:
    """Projected gradient ascent of ``loss_fn`` (x' (N, C, H, W) -> scalar) in {x' : |x' - x|_inf <= eps} n [0, 1].

    The random start is uniform in the ball of radius ``start_frac * eps``, drawn on the CPU from ``generator``
    (reproducible on any device). ``project=False`` keeps only the [0, 1] box, so x' may leave the eps-ball:
    with one step of size eps and ``start_frac=2`` this is N-FGSM (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez,
    Dokania, "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022), whose
    larger noise and missing projection avoid the catastrophic overfitting of FGSM with a random start (Wong,
    Rice, Kolter, ICLR 2020) at the same cost; |x' - x|_inf <= 3 eps then.
    Returns x' (N, C, H, W), detached; x itself when eps or steps is 0."""
    x = x.detach()
    if eps <= 0 or steps <= 0:
        return x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = (x + (2 * noise - 1) * (start_frac * eps)).clamp(0.0, 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        if project:
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
        x_adv = x_adv.clamp(0.0, 1.0)
    return x_adv.detach()


def eps_at(cfg: TrainConfig, iteration: int, steps_per_epoch: int) -> float:
    """The training eps at a global iteration: linear from adv_eps / warm-up steps to adv_eps, then constant."""
    warm = cfg.adv_warmup * steps_per_epoch
    if warm <= 0:
        return cfg.adv_eps
    return cfg.adv_eps * min(1.0, (iteration + 1) / warm)


def push_term(head: LGMHead, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of max(0, D/2 - min_{k != y} d_k(f)) over the batch: feats (N, D), y (N,) -> scalar."""
    d = head.half_mahalanobis(feats)  # (N, K)
    wrong = d.masked_fill(F.one_hot(y, head.num_classes).bool(), float("inf")).amin(dim=1)  # (N,)
    return torch.relu(0.5 * head.feat_dim - wrong).mean()


class AdversarialObjective:
    """The loss of one training batch under ``cfg.adversarial`` (``none``, ``pgd`` or ``trades``).

    ``model`` is what the loss runs through (the DistributedDataParallel wrapper under torchrun); ``core`` is
    the bare Classifier, which the attack uses in eval mode so that it neither syncs gradients across ranks
    nor moves BatchNorm's running statistics. ``autocast`` is a context factory (mixed precision on CUDA).
    """

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, core: Classifier, autocast) -> None:
        self.cfg, self.model, self.core, self.autocast = cfg, model, core, autocast

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, alpha: float, eps: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1], y (B,) -> (loss, logits (B, K) of the inputs trained on)."""
        if self.cfg.adversarial == "pgd" and eps > 0:
            n_clean = round(len(x) * self.cfg.adv_clean_fraction)
            x_adv = self._attack(x[n_clean:], y[n_clean:], eps, gen, self._ce)
            x = torch.cat([x[:n_clean], x_adv])
            return self._loss(x, y, alpha, n_clean)
        if self.cfg.adversarial == "trades" and eps > 0:
            return self._trades(x, y, alpha, eps, gen)
        return self._loss(x, y, alpha, len(x))

    # -- attacks ----------------------------------------------------------------------------------------
    def _ce(self, x_adv: torch.Tensor, y: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.core(x_adv).float(), y, reduction="sum")

    def _kl(self, x_adv: torch.Tensor, _y: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(self.core(x_adv).float(), 1), p_clean, reduction="sum")

    def _attack(self, x, y, eps: float, gen: torch.Generator, objective, p_clean=None) -> torch.Tensor:
        if len(x) == 0:
            return x
        cfg = self.cfg
        with eval_mode(self.core), self.autocast():
            return pgd_linf(
                lambda xa: objective(xa, y, p_clean),
                x,
                eps,
                cfg.adv_steps,
                cfg.adv_step_frac * eps / cfg.adv_steps,
                gen,
                start_frac=cfg.adv_start_frac,
                project=cfg.adv_project,
            )

    # -- losses -----------------------------------------------------------------------------------------
    def _objective(self, logits, feats, y, n_cls: int, n_clean: int) -> torch.Tensor:
        """Cross-entropy over rows ..n_cls and, for the L-GM head, lambda * L_lkd over every row (adversarial
        rows n_clean.. included: ``pull``), plus lambda * the hinge over rows n_clean.. with ``push``."""
        if not self.core.is_lgm:
            return F.cross_entropy(logits[:n_cls].float(), y[:n_cls])
        head, cfg = self.core.head, self.cfg
        assert isinstance(head, LGMHead)
        if n_cls == len(y):
            loss, _, _ = lgm_loss(head, feats.float(), logits, y, cfg.lam, cfg.lkd_form)  # type: ignore[arg-type]
        else:
            loss = F.cross_entropy(logits[:n_cls].float(), y[:n_cls])
            if cfg.lam > 0:
                loss = loss + cfg.lam * likelihood_term(head, feats.float(), y, cfg.lkd_form)  # type: ignore[arg-type]
        if cfg.adv_lkd == "push" and n_clean < len(y) and cfg.lam > 0:
            loss = loss + cfg.lam * push_term(head, feats[n_clean:].float(), y[n_clean:])
        return loss

    def _loss(self, x, y, alpha: float, n_clean: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits, feats = self.model(x, y, alpha, return_features=True)
        return self._objective(logits, feats, y, len(y), n_clean), logits

    def _trades(
        self, x, y, alpha: float, eps: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TRADES: the clean rows' loss + beta * KL(p(x) || p(x')), one forward over clean and adversarial."""
        n = len(x)
        with eval_mode(self.core), torch.no_grad(), self.autocast():
            p_clean = F.softmax(self.core(x).float(), 1)
        x_adv = self._attack(x, y, eps, gen, self._kl, p_clean)
        yy = torch.cat([y, y])
        with self.autocast():
            logits, feats = self.model(
                torch.cat([x, x_adv]), yy, alpha, return_features=True
            )  # (2B, K), (2B, D)
        kl = F.kl_div(
            F.log_softmax(logits[n:].float(), 1), F.softmax(logits[:n].float(), 1), reduction="batchmean"
        )
        return self._objective(logits, feats, yy, n, n) + self.cfg.trades_beta * kl, logits[:n]
