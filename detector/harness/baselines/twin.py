"""The softmax twin: the same backbone, data and training settings as the L-GM artifact, with a softmax head.

Every baseline detector runs on it, so that "the L-GM detector against a baseline" compares like with like.
``ensure_twin`` trains it with ``training.trainer.train`` from the artifact's own config (``head=softmax``) into
ARTIFACT/softmax_twin/, once: ``lgm evaluate`` calls it before anything else.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.artifacts import has_artifact, load_meta
from training.config import LGM_KEYS, RUN_ONLY, TrainConfig

TWIN_DIR = "softmax_twin"
# Settings that do not concern a softmax head or do not change what a run learns.
TWIN_IRRELEVANT = {"head", *RUN_ONLY, *LGM_KEYS}


@contextlib.contextmanager
def _single_process_env():
    """Hide torchrun's variables so that train() runs as one process inside a multi-rank evaluation."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def twin_dir(art_dir: str | Path) -> Path:
    return Path(art_dir) / TWIN_DIR


def twin_matches(tdir: Path, meta: dict[str, Any]) -> bool:
    """Whether the twin in ``tdir`` was trained with the L-GM artifact's config (L-GM-only settings aside)."""
    try:
        tmeta = load_meta(tdir)
    except ValueError:
        return False
    # Both through TrainConfig, so that an option added after either was trained counts at its default.
    a, b = (asdict(TrainConfig.from_dict(m.get("train", {}))) for m in (tmeta, meta))
    keys = set(a) - TWIN_IRRELEVANT
    return tmeta.get("arch", {}).get("head") == "softmax" and all(a.get(k) == b.get(k) for k in keys)


def twin_ready(art_dir: str | Path, meta: dict[str, Any]) -> bool:
    """Whether ARTIFACT/softmax_twin/ holds a twin trained like the artifact (L-GM-only settings aside)."""
    out = twin_dir(art_dir)
    return has_artifact(out) and twin_matches(out, meta)


def ensure_twin(art_dir: str | Path, meta: dict[str, Any], quiet: bool = True) -> Path:
    """Train the softmax twin into ARTIFACT/softmax_twin/ unless it is there. Returns its folder."""
    out = twin_dir(art_dir)
    if twin_ready(art_dir, meta):
        return out
    from training.trainer import train

    cfg = TrainConfig.from_dict(dict(meta["train"]))
    cfg.head = "softmax"
    cfg.quiet = quiet
    cfg.device = "auto"
    with _single_process_env():
        train(cfg, out)
    return out
