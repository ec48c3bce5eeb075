"""Adversarial sets for ``lgm evaluate``: generated in chunks spread over torchrun ranks, saved, reused.

Inputs are cut into fixed chunks of ``batch_size``; chunk c runs on rank c % world_size with a seed derived from
(seed, attack, network, c), so a ``torchrun`` run gathers exactly what one process computes. Every set is saved
as safetensors with the models' hashes, the budget, the seed and the inputs' indices in its metadata; ``reuse``
loads a saved set only when all of these match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from detector.harness.attacks import AttackTarget, run_attack
from detector.harness.budgets import Budgets
from training.distributed import DistInfo


def chunk_seed(seed: int, attack: str, network: str, chunk: int) -> int:
    h = hashlib.sha256(f"{seed}/{attack}/{network}/{chunk}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def sharded_attack(
    name: str,
    target: AttackTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    b: Budgets,
    seed: int,
    batch_size: int,
    device: torch.device,
    info: DistInfo,
    progress: bool,
) -> torch.Tensor:
    """Attack x (N, C, H, W) chunk by chunk, chunks spread over ranks; every rank returns the full result."""
    n_chunks = (len(x) + batch_size - 1) // batch_size
    mine = list(range(info.rank, n_chunks, info.world_size))
    results: dict[int, torch.Tensor] = {}
    bar = tqdm(
        mine,
        desc=f"{name:>10s} on {target.name}",
        disable=not (progress and info.is_main),
        leave=False,
        unit="batch",
    )
    for c in bar:
        sl = slice(c * batch_size, (c + 1) * batch_size)
        seed_c = chunk_seed(seed, name, target.name, c)
        results[c] = run_attack(name, target, x[sl].to(device), y[sl].to(device), b, seed_c).cpu()
    if info.enabled:
        gathered: list[dict[int, torch.Tensor] | None] = [None] * info.world_size
        dist.all_gather_object(gathered, results)
        for part in gathered:
            results.update(part or {})
    if not results:
        return x[:0].clone()
    return torch.cat([results[c] for c in range(n_chunks)])


@dataclass
class AdversarialSet:
    """One attack's adversarials against each network, aligned with the attacked inputs."""

    name: str
    budget: dict[str, Any]
    by_network: dict[str, torch.Tensor]  # network name -> (N, C, H, W)
    seconds: float = 0.0


def set_metadata(
    name: str, budget: dict[str, Any], hashes: dict[str, str], seed: int, batch_size: int, idx: torch.Tensor
) -> dict[str, str]:
    """What must match for a saved set to be reused."""
    meta = {
        "attack": name,
        "budget": json.dumps(budget, sort_keys=True),
        "seed": str(seed),
        "batch_size": str(batch_size),
        "index_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest(),
    }
    meta.update({f"{net}_sha256": h for net, h in hashes.items()})
    return meta


def load_saved(path: Path, expect: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The tensors saved at ``path`` if its metadata matches ``expect``, else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if any(meta.get(k) != v for k, v in expect.items()):
        return None
    return load_file(str(path))


def load_agreed(
    path: Path, expect: dict[str, str], reuse: bool, info: DistInfo
) -> dict[str, torch.Tensor] | None:
    """``load_saved`` decided once, on rank 0, for every rank: ranks that disagreed on reusing a set would wait
    for each other in different collectives."""
    use = [reuse and load_saved(path, expect) is not None] if info.is_main else [False]
    if info.enabled:
        dist.broadcast_object_list(use, src=0)
    return load_file(str(path)) if use[0] else None


def save_set(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
