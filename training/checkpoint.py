"""Per-epoch training checkpoints without pickle: tensors in safetensors, everything else in JSON.

The optimizer's state_dict is flattened: tensors go to ``opt.<param index>.<name>`` keys, plain values and
``param_groups`` go to JSON. Written atomically, so a run killed mid-write keeps the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from training.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, read_json, sha256_bytes

CKPT_WEIGHTS = "checkpoint.safetensors"
CKPT_META = "checkpoint.json"


def save_checkpoint(
    out_dir: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = optim.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[name] = val
    blob = st_save(tensors)
    meta = dict(
        info, optimizer={"param_groups": sd["param_groups"], "plain_state": plain}, sha256=sha256_bytes(blob)
    )
    atomic_write_bytes(out_dir / CKPT_WEIGHTS, blob)
    atomic_write_json(out_dir / CKPT_META, meta)


def has_checkpoint(out_dir: Path) -> bool:
    return (out_dir / CKPT_WEIGHTS).is_file() and (out_dir / CKPT_META).is_file()


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place; returns the JSON info (epoch, history, config...)."""
    meta = read_json(out_dir / CKPT_META, "checkpoint metadata")
    blob = (out_dir / CKPT_WEIGHTS).read_bytes()
    if sha256_bytes(blob) != meta.get("sha256"):
        raise ArtifactError(
            f"{out_dir / CKPT_WEIGHTS}: checkpoint hash mismatch (truncated or tampered with)"
        )
    try:
        tensors = st_load(blob)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except Exception as exc:  # a checkpoint of another model: one line, not a traceback
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{out_dir / CKPT_WEIGHTS}: checkpoint does not fit this model ({msg})") from None
    device = next(model.parameters()).device
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
    for idx, st in meta["optimizer"]["plain_state"].items():
        state.setdefault(int(idx), {}).update(st)
    optim.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta
