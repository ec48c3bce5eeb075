"""models/recorded.py: the commands make reproduce runs, read from a shipped model's provenance.json."""

from __future__ import annotations

import json
from pathlib import Path

from models import recorded


def _shipped(tmp_path: Path, calibrate: str) -> Path:
    (tmp_path / "provenance.json").write_text(
        json.dumps({"train_command": "lgm train --epochs 2", "calibrate_command": calibrate})
    )
    return tmp_path


def test_calibrate_line_keeps_its_options_and_changes_the_folder(tmp_path, capsys) -> None:
    shipped = _shipped(tmp_path, "lgm calibrate models/x --statistics likelihood,boundary --target-fpr 0.01")
    assert recorded.main([str(shipped), "calibrate", "artifacts/y z"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "lgm calibrate 'artifacts/y z' --statistics likelihood,boundary --target-fpr 0.01"
    assert recorded.command(shipped, "train") == "lgm train --epochs 2"


def test_a_line_not_of_the_shipped_form_is_one_clear_error(tmp_path, capsys) -> None:
    shipped = _shipped(tmp_path, "lgm calibrate --statistics likelihood")
    assert recorded.main([str(shipped), "calibrate", "elsewhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not 'lgm calibrate FOLDER [OPTIONS]'" in err
    assert recorded.main([str(tmp_path / "missing"), "train"]) == 1
