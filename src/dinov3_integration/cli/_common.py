"""Pieces shared by the ``dinov3`` sub-commands: logging, model options, devices, atomic writes, torchrun."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .._logging import get_logger
from ..extraction.dist import DistContext, dist_env, init_distributed, resolve_device
from ..extraction.errors import ExtractionError
from ..extraction.model import _MODEL_CACHE as _MODEL_CACHE  # the same dict: clearing it here clears it there
from ..extraction.model import LoadedModel, autocast, build_model, compute_dtype, state_dict_digest
from ..extraction.options import DEFAULT_MODEL, library_version, parse_model_kwargs, weights_identity
from ..extraction.runners import format_seconds
from ..extraction.sinks import read_jsonl, write_jsonl
from ..utils import atomic as _atomic

# DEFAULT_MODEL, library_version, parse_model_kwargs, weights_identity, LoadedModel, build_model, state_dict_digest,
# compute_dtype, autocast, DistContext, dist_env, resolve_device, init_distributed, read_jsonl, write_jsonl and
# format_seconds moved to dinov3_integration.extraction (the library); re-exported here for the commands' imports.
__all__ = [
    "DEFAULT_MODEL",
    "CLIError",
    "accept_negative_lists",
    "add_model_args",
    "assets_dir",
    "atomic_path",
    "atomic_write_text",
    "remove_stale_temps",
    "restore_logging",
    "setup_logging",
    "DistContext",
    "ExtractionError",
    "LoadedModel",
    "autocast",
    "build_model",
    "compute_dtype",
    "dist_env",
    "format_seconds",
    "init_distributed",
    "library_version",
    "parse_model_kwargs",
    "read_jsonl",
    "resolve_device",
    "state_dict_digest",
    "weights_identity",
    "write_jsonl",
]

log = get_logger("cli")


class CLIError(Exception):
    """A problem with the command line or its inputs; ``main`` prints it and exits with status 2 (as it does
    :class:`~dinov3_integration.extraction.ExtractionError`, the library's)."""


# ------------------------------------------------------------------------------------------------------- logging
class _TqdmHandler(logging.StreamHandler):
    """Write log records with ``tqdm.write`` so they do not break a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(*, verbose: int = 0, quiet: bool = False, rank: int | None = None) -> None:
    """Send the ``dinov3`` logger to stderr: INFO by default, WARNING with ``quiet``, DEBUG with ``-v``."""
    logger = logging.getLogger("dinov3")
    for handler in list(logger.handlers):
        if getattr(handler, "_dinov3_cli", False):
            logger.removeHandler(handler)
    handler: logging.Handler = _TqdmHandler(sys.stderr) if sys.stderr.isatty() else logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if rank is not None else ""
    handler.setFormatter(logging.Formatter(f"dinov3: {prefix}%(message)s"))
    handler._dinov3_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@contextmanager
def restore_logging() -> Iterator[None]:
    """Undo :func:`setup_logging` afterwards (``main`` may be called in-process, e.g. from tests or notebooks)."""
    logger = logging.getLogger("dinov3")
    handlers, level = list(logger.handlers), logger.level
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
        logger.setLevel(level)


# --------------------------------------------------------------------------------------------------- argument parsing
# A value made of comma-separated integers, negatives included ("-4,-1"), is a value, not an option.
_NEGATIVE_LIST = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(\s*,\s*-?\d+)+$")


def accept_negative_lists(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take ``--layers -4,-1`` as written (argparse alone reads ``-4,-1`` as an unknown option).

    argparse treats an argument that starts with ``-`` as a value only when it looks like a negative number; this
    widens "negative number" to comma lists of integers (``parser`` must have no option that looks like one).
    """
    parser._negative_number_matcher = _NEGATIVE_LIST  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------- model options
def add_model_args(parser: argparse.ArgumentParser, *, resolution: str, random_help: str | None = None) -> None:
    """``--model --weights --random-weights --model-kwargs --device --dtype --resolution ...`` for a sub-command."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL}; see `dinov3 models`)"
    )
    g.add_argument(
        "--weights",
        default=None,
        help="weights: a tag (lvd1689m, sat493m), a .pth/.safetensors file, a folder, a URL, an hf-hub:ID or a timm "
        "name; passed to create_model(..., pretrained=True, weights=...). Without it the model's default weights are "
        "looked up by the hub",
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help=random_help or "use randomly initialised weights (seeded by --seed); for testing only",
    )
    g.add_argument(
        "--model-kwargs",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="architecture overrides passed to create_model (e.g. depth=2,embed_dim=64,num_heads=4 for a tiny model)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    g.add_argument(
        "--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1, mps"
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype; bfloat16 runs the model under autocast (float16 is not supported by DINOv3)",
    )
    p = parser.add_argument_group("preprocessing")
    p.add_argument(
        "--resolution",
        default=resolution,
        help=f"short side in pixels (aspect ratio kept) or HxW; rounded to the patch size (default {resolution})",
    )
    p.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic"),
        default="bilinear",
        help="antialiased resize of the uint8 image; bilinear is the reference README transform (default)",
    )
    p.add_argument(
        "--normalization",
        choices=("auto", "imagenet", "sat493m"),
        default="auto",
        help="mean/std: auto = satellite statistics for sat493m weights, ImageNet otherwise",
    )


# ---------------------------------------------------------------------------------------------------- file output
# Atomic writes have one owner, dinov3_integration.utils.atomic; these names stay for the commands' old imports.
atomic_path = _atomic.atomic_path
atomic_write_text = _atomic.atomic_write_text
remove_stale_temps = _atomic.remove_stale_temps


def assets_dir() -> Path:
    """The folder of bundled demo data (``dinov3_integration/assets``)."""
    return Path(__file__).resolve().parent.parent / "assets"
