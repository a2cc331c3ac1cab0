"""``dinov3`` entry point: argument parsing and error handling shared by every sub-command.

Exit status: 0 success, 1 some inputs or checks failed, 2 bad command line or inputs, 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence

from ..extraction.errors import ExtractionError
from ._common import CLIError, library_version, restore_logging

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`~pkg.name` -> pkg.name
_LITERAL = re.compile(r"``([^`]+)``")  # ``code`` -> `code`


def plain_text(text: str) -> str:
    """Help text without reStructuredText markup (module docstrings double as ``--help`` descriptions)."""
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"\1", text))


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` layout for every command.

    - prose paragraphs are re-wrapped to the terminal; a paragraph with indented lines (examples) is kept as written;
    - reStructuredText markup is removed (:func:`plain_text`);
    - every option with a default that is not empty shows it, ``(default: X)``, unless its help already says it.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", plain_text(text).strip("\n")):
            lines = para.splitlines()
            if any(line[:1].isspace() for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out) + "\n"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help or "")
        default = action.default
        shows = "%(default)" in text or "default" in text.lower()
        if not action.option_strings or shows:
            return text
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(default, bool):
            return text + (" (default: on)" if default else " (default: off)")
        if action.nargs != 0 and default not in (None, False, "", [], argparse.SUPPRESS):  # not plain flags
            text += " (default: %(default)s)"
        return text


def _add_verbose(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, dest=dest, help="debug logging (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The ``dinov3`` parser with its sub-commands (``-v`` works before or after the sub-command)."""
    from . import convert_cmd, demo, export_cmd, extract, models_cmd, pca_cmd, selftest

    parser = argparse.ArgumentParser(
        prog="dinov3",
        description="DINOv3 from the command line: feature extraction, PCA pictures, models, checkpoint conversion.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dinov3-integration {library_version()}")
    _add_verbose(parser, "verbose")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (extract, pca_cmd, models_cmd, demo, selftest, convert_cmd, export_cmd):
        module.add_parser(sub)
    for sub_parser in sub.choices.values():
        sub_parser.formatter_class = HelpFormatter
        _add_verbose(sub_parser, "verbose_after_command")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``dinov3`` command line; ``args.verbose`` counts every ``-v``, before and after the sub-command."""
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose + getattr(args, "verbose_after_command", 0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dinov3`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = parse_args(argv)
    try:
        with restore_logging():
            return int(args.func(args) or 0)
    except (CLIError, ExtractionError) as exc:
        print(f"dinov3 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinov3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
