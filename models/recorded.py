"""Print a command that a shipped model's provenance.json records, aimed at another folder: what ``make reproduce``
runs to retrain and recalibrate it.

    python models/recorded.py models/cifar10 train                   # the lgm train line (make adds --out)
    python models/recorded.py models/cifar10 calibrate artifacts/x   # the lgm calibrate line, on artifacts/x

The calibrate line is ``lgm calibrate FOLDER [OPTIONS]`` (``models/ship.py`` writes it so, FOLDER the shipped
one); here FOLDER is swapped for the one given, and every other option (e.g. ``--statistics``) is kept, so a
reproduction is calibrated as shipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def command(shipped: Path, which: str, folder: str | None = None) -> str:
    """The recorded ``lgm train`` line, or the ``lgm calibrate`` line aimed at ``folder``."""
    line = json.loads((shipped / "provenance.json").read_text())[f"{which}_command"]
    if which == "train":
        return line
    argv = shlex.split(line)
    if argv[:2] != ["lgm", "calibrate"] or len(argv) < 3 or argv[2].startswith("-") or folder is None:
        raise ValueError(f"{shipped}/provenance.json: {line!r} is not 'lgm calibrate FOLDER [OPTIONS]'")
    return shlex.join([*argv[:2], folder, *argv[3:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shipped", type=Path, help="shipped model folder (with provenance.json)")
    p.add_argument("which", choices=("train", "calibrate"))
    p.add_argument("folder", nargs="?", help="calibrate: the folder to calibrate instead of the shipped one")
    args = p.parse_args(argv)
    if args.which == "calibrate" and not args.folder:
        p.error("calibrate needs the folder to calibrate")
    try:
        print(command(args.shipped, args.which, args.folder))
    except (OSError, KeyError, ValueError) as e:
        print(f"recorded.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
