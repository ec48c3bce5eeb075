"""One batched forward for every caller: images in, model outputs out, in batches, on the model's device.

``batched(fn, x)`` cuts x (N, ...) into batches, moves each to the device, turns uint8 images into floats in
[0, 1] (float images pass through as float32), calls ``fn`` under ``torch.no_grad()`` (``grad=True`` leaves
autograd on, for a function that takes its own input gradient) and concatenates what it returns along the
first axis: a tensor, a tuple or list of them (nested too: ``(logits, feats, [layer, ...])``) or a dict of them.
Results come back detached, on the CPU unless ``to_cpu=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

Out = TypeVar("Out")


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; anything else -> float32 as it is."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat(list(col)) for col in zip(*parts, strict=True))
    raise TypeError(f"batched: cannot concatenate {type(first).__name__} outputs")


def _detach(out: Any, to_cpu: bool) -> Any:
    if torch.is_tensor(out):
        out = out.detach()
        return out.cpu() if to_cpu else out
    if isinstance(out, dict):
        return {k: _detach(v, to_cpu) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_detach(v, to_cpu) for v in out)
    raise TypeError(f"batched: {type(out).__name__} is not a tensor, tuple, list or dict of tensors")


def batched(
    fn: Callable[[torch.Tensor], Out],
    x: torch.Tensor,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    *,
    grad: bool = False,
    to_cpu: bool = True,
) -> Out:
    """``fn`` over x (N, ...) in batches of ``batch_size`` on ``device`` (default: the CPU), outputs concatenated
    along the first axis. An empty x calls ``fn`` once on the empty batch, so the outputs keep their shapes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    parts = []
    for i in range(0, max(len(x), 1), batch_size):
        xb = unit_float(x[i : i + batch_size].to(dev))
        with torch.set_grad_enabled(grad):
            parts.append(_detach(fn(xb), to_cpu))
    return _cat(parts) if len(parts) > 1 else parts[0]
