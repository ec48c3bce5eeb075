"""How surprising a statistic's value is among clean inputs: ``surprise(v) = -log P_clean(S > v)``.

Each detector statistic S (larger = more abnormal) gets a model of its upper tail, fitted on the clean
calibration split and nothing else:

- the bulk, up to the ``u`` quantile (0.9 by default): the empirical distribution, as a piecewise-linear CDF
  through its quantiles at levels 0, 0.01, ..., u;
- beyond it: an exponential tail, P(S > v) = (1 - u) exp(-(v - q_u) / beta) with beta the mean excess over q_u.
  This is the peaks-over-threshold model with a generalised Pareto shape of 0 (Pickands 1975; Balkema & de Haan
  1974), the usual default when the shape cannot be estimated from a few dozen exceedances.

Why not the plain empirical tail probability: it cannot go below 1/n, so every input more extreme than all
clean calibration inputs ties at the top, and the detector could not rank them (an attack that moves a
statistic ten times further than any clean input would look no worse than the most unusual clean input). The
exponential tail keeps ranking them and is continuous and strictly increasing past q_u, so it can be inverted
(``value_at``) and differentiated (adaptive attacks follow it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

BULK_LEVEL = 0.9  # quantile where the exponential tail takes over
STEP = 0.01  # spacing of the stored bulk quantile levels


@dataclass
class TailModel:
    """Quantile knots of the bulk (``values`` at ``levels``, the last level being u) and the tail's ``beta``."""

    levels: list[float]
    values: list[float]
    beta: float

    @classmethod
    def fit(cls, clean: np.ndarray, bulk_level: float = BULK_LEVEL) -> TailModel:
        """Fit to a statistic's clean calibration values (N,), N >= 2."""
        v = np.asarray(clean, dtype=np.float64).reshape(-1)
        if len(v) < 2 or not np.isfinite(v).all():
            raise ValueError("a tail model needs at least two finite clean values")
        levels = np.round(np.arange(0.0, bulk_level + STEP / 2, STEP), 6)
        values = np.maximum.accumulate(np.quantile(v, levels))
        q_u = values[-1]
        excess = v[v > q_u] - q_u
        scale = float(np.std(v)) or 1.0
        beta = float(excess.mean()) if len(excess) else 0.0
        beta = max(beta, 1e-6 * scale, 1e-12)
        return cls([float(x) for x in levels], [float(x) for x in values], beta)

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "values": self.values, "beta": self.beta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TailModel:
        return cls([float(x) for x in d["levels"]], [float(x) for x in d["values"]], float(d["beta"]))

    @property
    def u(self) -> float:
        return self.levels[-1]

    def surprise(self, v: torch.Tensor) -> torch.Tensor:
        """-log P_clean(S > v), elementwise, >= 0; differentiable wherever the CDF has a slope."""
        return TailStack([self]).surprise(v.reshape(-1, 1)).reshape(v.shape)

    def value_at(self, surprise: float) -> float:
        """The statistic's value whose surprise is ``surprise`` (the inverse of ``surprise``; bulk ties resolve to
        the lowest such value)."""
        if surprise <= 0.0:
            return float(self.values[0])
        tail_start = -math.log1p(-self.u)
        if surprise >= tail_start:
            return float(self.values[-1] + (surprise - tail_start) * self.beta)
        cdf = -math.expm1(-surprise)
        return float(np.interp(cdf, self.levels, self.values))


class TailStack:
    """Several statistics' tail models evaluated together, one set of tensor operations for all of them.

    The detector scores every request through all its statistics' tail models; one batched pass instead of one
    pass per statistic keeps a single image's score cheap (the small tensor operations, not arithmetic, are the
    cost at batch size 1). The models must share their bulk levels, as models fitted with the same ``bulk_level``
    do. The knot tensors are built once per dtype and device.
    """

    def __init__(self, tails: list[TailModel]) -> None:
        if not tails:
            raise ValueError("a tail stack needs at least one tail model")
        if any(t.levels != tails[0].levels for t in tails):
            raise ValueError("tail models stacked together must share their bulk levels")
        self.tails = tails
        self._tensors: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def _knots(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (dtype, device)
        if key not in self._tensors:
            knots = torch.tensor([t.values for t in self.tails], dtype=dtype, device=device)  # (m, L)
            levels = torch.tensor(self.tails[0].levels, dtype=dtype, device=device)  # (L,)
            beta = torch.tensor([t.beta for t in self.tails], dtype=dtype, device=device)  # (m,)
            self._tensors[key] = (knots, levels, beta)
        return self._tensors[key]

    def surprise(self, v: torch.Tensor) -> torch.Tensor:
        """(N, m) statistics -> (N, m) surprises -log P_clean(S_i > v_i): the bulk's piecewise-linear CDF up to
        q_u, the exponential tail beyond it."""
        knots, levels, beta = self._knots(v.dtype, v.device)
        u = self.tails[0].u
        vt = v.t()  # (m, N)
        q_u = knots[:, -1:]
        tail = -math.log1p(-u) + (vt - q_u) / beta[:, None]
        vb = torch.minimum(torch.maximum(vt, knots[:, :1]), q_u)  # bulk part, clamped to the knots
        hi = torch.searchsorted(knots, vb.detach().contiguous(), right=True).clamp(1, knots.shape[1] - 1)
        x0, x1 = knots.gather(1, hi - 1), knots.gather(1, hi)
        l0, l1 = levels[hi - 1], levels[hi]
        width = x1 - x0
        frac = torch.where(width > 0, (vb - x0) / torch.where(width > 0, width, torch.ones_like(width)), 1.0)
        cdf = l0 + frac * (l1 - l0)
        bulk = -torch.log1p(-cdf.clamp(max=u))
        return torch.where(vt > q_u, tail, bulk).t()
