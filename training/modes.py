"""Run a network in eval mode for the length of a call, whatever mode its caller left it in.

Why every inference entry point needs this rather than one ``model.eval()`` at load: a module's mode is state
that anyone holding the module can change. An attack library that records and restores the mode of a wrapper
module it was handed, a user who calls ``model.train()`` to fine-tune, or a training loop that scores between
epochs all leave the network in training mode. In training mode BatchNorm normalises with the statistics of the
batch in hand (so a score depends on what else is in the batch) and, on every forward, moves its running mean
and variance towards them: the artifact's buffers change for good, and every later answer with them, even after
eval mode comes back. Dropout, where a backbone has it, would draw a random mask.

``eval_mode(module)`` puts every submodule in eval mode, runs the body, and then gives each submodule back its
own ``training`` flag (not one flag for all: a caller may have frozen some submodules and not others). It changes
no parameter and no buffer, nests (an inner block restores eval mode to the outer one) and costs a walk over the
submodules, microseconds beside a forward pass. It is the one mechanism the scoring, calibration and serving paths
use (``detector/statistics.py``, ``detector/layers.py``, ``detector/gradient.py``, ``training/model.py``).

The flags are module state shared by every thread that holds the module: a caller that trains a network on one
thread while another scores it gets no guarantee from this (the service runs every forward on one worker thread,
``service/engine.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """``with eval_mode(model): ...`` runs the body with ``model`` and all its submodules in eval mode and then
    restores each submodule's own mode, also when the body raises. Yields ``module``."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
