"""``dinov3`` entry point: argument parsing and error handling shared by every sub-command.

Exit status: 0 success, 1 some inputs or checks failed, 2 bad command line or inputs, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._common import CLIError, library_version, restore_logging


def build_parser() -> argparse.ArgumentParser:
    """The ``dinov3`` parser with its sub-commands."""
    from . import convert_cmd, demo, extract, models_cmd, pca_cmd, selftest

    parser = argparse.ArgumentParser(
        prog="dinov3",
        description="DINOv3 from the command line: feature extraction, PCA pictures, models, checkpoint conversion.",
    )
    parser.add_argument("--version", action="version", version=f"dinov3-integration {library_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    extract.add_parser(sub)
    pca_cmd.add_parser(sub)
    models_cmd.add_parser(sub)
    demo.add_parser(sub)
    selftest.add_parser(sub)
    convert_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dinov3`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with restore_logging():
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"dinov3 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinov3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
