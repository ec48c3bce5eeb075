"""Which softmax twin ``lgm evaluate`` reuses (``detector/harness/baselines/twin.py``): one trained with the L-GM
artifact's settings, where an option added to ``lgm train`` after either was trained counts at its default."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from detector.harness.baselines.twin import twin_matches
from training.artifacts import FORMAT_VERSION
from training.config import TrainConfig


def _meta(head: str, **train) -> dict:
    cfg = asdict(TrainConfig(**train))
    return {
        "format_version": FORMAT_VERSION,
        "arch": {"head": head},
        "weights_sha256": "0" * 64,
        "dataset": {"name": "digits"},
        "train": cfg,
    }


def _twin(tmp_path: Path, meta: dict) -> Path:
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return tmp_path


def test_twin_trained_alike_matches_and_run_only_or_lgm_settings_do_not_count(tmp_path):
    lgm = _meta("lgm", lr=0.1, lam=0.01, threads=2)
    assert twin_matches(_twin(tmp_path, _meta("softmax", lr=0.1, lam=0.1, threads=1, cpu_bf16=True)), lgm)


def test_an_option_missing_from_an_older_card_counts_at_its_default(tmp_path):
    lgm = _meta("lgm", lr=0.1)
    del lgm["train"]["keep_best"], lgm["train"]["best_check_inputs"]  # trained before these options existed
    assert twin_matches(_twin(tmp_path, _meta("softmax", lr=0.1)), lgm)
    # ...but not when the twin set it away from the default
    assert not twin_matches(_twin(tmp_path, _meta("softmax", lr=0.1, best_check_inputs=7)), lgm)


def test_a_different_training_setting_or_head_does_not_match(tmp_path):
    lgm = _meta("lgm", lr=0.1)
    assert not twin_matches(_twin(tmp_path, _meta("softmax", lr=0.05)), lgm)
    assert not twin_matches(_twin(tmp_path, _meta("lgm", lr=0.1)), lgm)
