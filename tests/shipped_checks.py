"""Checks shared by the tests of the shipped models (models/*): the recorded training line made the weights, the
recorded calibration line the detector."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any


def recorded_config(train_command: str) -> Any:
    """The TrainConfig that the recorded ``lgm train`` line (no --out) yields under lgm's own parser."""
    from service.cli import build_parser
    from training.config import TrainConfig
    from training.configargs import from_args

    argv = shlex.split(train_command)
    assert argv[:2] == ["lgm", "train"]
    assert "--out" not in argv  # make reproduce chooses the folder
    return from_args(TrainConfig, build_parser().parse_args([*argv[1:], "--out", "unused"]))


def assert_trained_with(trained: dict[str, Any], cfg: Any) -> None:
    """model.json's ``train`` entry is ``cfg``; options added to lgm after the model was trained must sit at
    their defaults, which reproduce the behaviour it was trained with."""
    from training.config import TrainConfig

    now = json.loads(json.dumps(cfg.to_dict()))
    added = set(now) - set(trained)
    assert all(now[k] == getattr(TrainConfig(), k) for k in added), added
    assert trained == {k: v for k, v in now.items() if k not in added}


def assert_calibrated_as_recorded(shipped: Path) -> None:
    """The recorded ``lgm calibrate`` line, parsed by lgm's own parser, gives the settings detector.json was
    calibrated with, and ``models/recorded.py`` (what ``make reproduce`` runs) aims it at another folder."""
    from models.recorded import command
    from service.cli import build_parser

    argv = shlex.split(command(shipped, "calibrate", "elsewhere"))
    assert argv[:3] == ["lgm", "calibrate", "elsewhere"] and shipped.name not in argv
    given = vars(build_parser().parse_args(argv[1:]))
    config = json.loads((shipped / "detector.json").read_text())["config"]
    assert {k: v for k, v in config.items() if k in given} == {k: given[k] for k in config if k in given}
    assert "statistics" in given and "statistics" in config
