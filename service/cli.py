"""The ``lgm`` console command. It lives in the outermost package (service -> detector -> training) so that the
one-way imports hold; each package registers its own subcommands.

User mistakes (bad paths, bad options, malformed files) print one line and exit 2; set LGM_DEBUG=1 for the
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence

from detector import cli as detector_cli
from service import score_cli, serve_cli
from training import cli as training_cli


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (argparse prints the whole usage block first, which for
    ``lgm train`` is twenty lines above the message that matters). Subcommand parsers inherit the class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="lgm",
        description="Adversarial-example detection with L-GM networks (Wan et al., CVPR 2018).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (training_cli, detector_cli, serve_cli, score_cli):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what report.md quotes as the exact command
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lgm: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as exc:
        if os.environ.get("LGM_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"lgm {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
