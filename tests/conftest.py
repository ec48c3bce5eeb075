"""Shared fixtures: one tiny trained model (sklearn 8x8 digits, a few seconds on a CPU) for the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from training.config import TrainConfig

# Apps built by the tests serve no gRPC unless a test asks for a port: the default (8001) is shared with
# SO_REUSEPORT, so test runs in parallel checkouts would otherwise answer each other's calls.
os.environ.setdefault("LGM_GRPC_PORT", "0")


def tiny_config(**overrides) -> TrainConfig:
    """A TrainConfig that trains in about a second on the CPU: digits, narrow CNN, 8-d features.

    One torch thread, always: CPU training is bit-for-bit deterministic for a seed only at a fixed thread count
    (the reduction order of a convolution's backward pass depends on it), and other tests change the count."""
    base = dict(
        dataset="digits", epochs=2, feat_dim=8, width=8, batch_size=64, device="cpu", quiet=True, threads=1
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_config_factory():
    """``tiny_config_factory(**overrides) -> TrainConfig`` for a model that trains in about a second."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a trained L-GM artifact (model.safetensors + model.json) on the digits set; treat as read-only."""
    from training.trainer import train

    out = tmp_path_factory.mktemp("tiny_artifact")
    train(tiny_config(epochs=3), out)
    return out


# The server's query-attack defence keeps its history in SQLite, by default in the temp folder under a name of its
# port: keep the test session's apps on their own file, so tests never share state with a server on this machine.
os.environ.setdefault(
    "LGM_QUERY_STORE", "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="lgm-test-"), "queries.sqlite3")
)
