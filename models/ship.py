"""Copy a trained and calibrated artifact into the repository and record how it was made.

    .venv/bin/python models/ship.py artifacts/mnist-robust models/mnist-robust \
        --train-command "lgm train --dataset mnist ..." --wall-seconds 3900

Writes DEST/{model.safetensors, model.json, detector.safetensors, detector.json} (each written to a temporary
name and renamed) and DEST/provenance.json: the exact ``lgm train`` and ``lgm calibrate`` lines, the sha256 of
every file, and the software and machine it was trained with. ``tests/test_shipped_model.py`` checks the files
against it and parses the training line with lgm's own parser; ``make reproduce`` runs that line again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path

FILES = ("model.safetensors", "model.json", "detector.safetensors", "detector.json")


def atomic_copy(src: Path, dst: Path) -> str:
    data = src.read_bytes()
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="artifact folder (trained and calibrated)")
    p.add_argument("dest", type=Path, help="folder in the repository")
    p.add_argument("--train-command", required=True, help="the lgm train line that made the model (no --out)")
    p.add_argument("--calibrate-command", default="lgm calibrate {dest}", help="the lgm calibrate line")
    p.add_argument("--wall-seconds", type=float, default=None, help="wall time of the training run")
    args = p.parse_args(argv)
    if "--out" in shlex.split(args.train_command):
        p.error("--train-command: leave out --out (make reproduce chooses the folder)")
    missing = [n for n in FILES if not (args.source / n).is_file()]
    if missing:
        p.error(f"{args.source}: missing {', '.join(missing)} (train and calibrate it first)")
    import torch

    meta = json.loads((args.source / "model.json").read_text())
    args.dest.mkdir(parents=True, exist_ok=True)
    digests = {n: atomic_copy(args.source / n, args.dest / n) for n in FILES}
    provenance = {
        "train_command": args.train_command,
        "calibrate_command": args.calibrate_command.format(dest=args.dest),
        "files": digests,
        "training": {
            "wall_seconds": args.wall_seconds,
            "seconds_per_epoch": meta["metrics"]["seconds_per_epoch"],
            "epochs": len(meta["history"]),
            "device": meta["device"],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
        "metrics": meta["metrics"],
    }
    tmp = args.dest / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=2) + "\n")
    os.replace(tmp, args.dest / "provenance.json")
    print(
        f"shipped {args.source} -> {args.dest} ({sum((args.dest / n).stat().st_size for n in FILES)} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
