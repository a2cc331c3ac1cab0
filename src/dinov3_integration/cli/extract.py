"""``dinov3 extract``: batch feature extraction to one safetensors file per input.

The parser and the summary line; the job is the library's :func:`dinov3_integration.extraction.run_job` (the same
as :func:`dinov3_integration.extract` with ``out=``).

Outputs (under ``--out``):

* ``<key>.safetensors`` per input, where ``<key>`` mirrors the input's path below its argument
  (``photos/a/b.jpg`` -> ``a/b.jpg.safetensors``), in the format of :mod:`dinov3_integration.features`
  (tensors ``cls.L``/``patch.L``/``storage.L`` or ``aggregated.L``; metadata: model, depth, the (redacted) weights
  label and ``weights_digest`` (SHA-256 of the state dict that ran), resolution, size, grid, preprocessing, layers,
  library version, the source path, a ``config_digest`` used by ``--resume`` and a ``data_digest`` of the tensors).
  Read them back with :func:`dinov3_integration.read_features`.
* or, with ``--format shards``, ``shard-r{rank:03d}-{seq:05d}.safetensors`` shards of at most ``--shard-size``
  holding every input's tensors as rows, and ``index.json`` (input -> shard, row, offsets; rebuilt from the shards'
  headers by rank 0 at the end): :mod:`dinov3_integration.feature_shards`, read back with the same
  :func:`~dinov3_integration.read_features` (a :class:`~dinov3_integration.features.FeatureShards`) or any
  safetensors reader.
* ``manifest.jsonl``: one line per input (``input``, ``kind``, ``output``, ``status`` = ok / cached / failed,
  ``error``, ``frames``, and ``warning`` for a video that could only be decoded in part), sorted by input path.

Files are written atomically (temporary file in the same folder, then ``os.replace``), so a killed run leaves
only complete files; ``--resume`` (the default) skips inputs whose output is complete (its data matches its
checksum) and was made with the same settings and weights from the same source file, so restarting the same
command finishes the job without duplicates. An output made from another input (the same name from another
folder, in an earlier run) is never replaced silently: that input fails unless ``--overwrite`` is given.

Under ``torchrun --nproc_per_node N`` every rank takes inputs ``i % N == rank`` of the sorted list, runs on
``cuda:LOCAL_RANK`` (or the CPU), writes its own outputs and ``manifest.rank<r>.jsonl``; rank 0 merges them into
``manifest.jsonl`` after a barrier.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._logging import get_logger
from ..extraction.api import run_job
from ..extraction.engine import EXIT_AFTER_ENV, Extraction
from ..extraction.errors import ExtractionError
from ..extraction.options import (
    OUTPUT_FORMATS,
    SAVE_DTYPES,
    SAVE_KINDS,
    check_options,
    check_output_folder,
    parse_layers,
    parse_save_kinds,
)
from ..extraction.runners import AggregateRunner, BackboneRunner, Progress, build_aggregator
from ..extraction.settings import DEFAULT_VIDEO_FRAMES, Settings, source_signature
from ..extraction.sinks import MANIFEST
from ..feature_shards import DEFAULT_SHARD_SIZE
from ..features import FORMAT, read_features
from ._common import CLIError, accept_negative_lists, add_model_args, dist_env, setup_logging

# The names below moved to dinov3_integration.extraction; kept here for old imports.
__all__ = [
    "DEFAULT_VIDEO_FRAMES",
    "EXIT_AFTER_ENV",
    "FORMAT",
    "MANIFEST",
    "SAVE_DTYPES",
    "SAVE_KINDS",
    "AggregateRunner",
    "BackboneRunner",
    "Extraction",
    "Progress",
    "Settings",
    "add_parser",
    "build_aggregator",
    "check_options",
    "check_output_folder",
    "parse_layers",
    "parse_save_kinds",
    "read_features",  # re-exported: the reader lives in dinov3_integration.features
    "run",
    "source_signature",
    "summarize",
]

log = get_logger("extract")

EPILOG = """examples:
  dinov3 extract photos/ --out feats --weights ~/ckpt/dinov3_vits16_pretrain_lvd1689m-08c60483.pth
  dinov3 extract list.txt --out feats --weights lvd1689m --layers -4,-3,-2,-1 --save cls,patch --save-dtype float16
  dinov3 extract clip.mp4 --out feats --weights lvd1689m --fps 2
  torchrun --nproc_per_node 8 -m dinov3_integration extract data/ --out feats --weights lvd1689m
"""


# ---------------------------------------------------------------------------------------------------------- parser
def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``extract`` sub-parser (long: one ``add_argument`` per option, in the order ``--help`` shows them)."""
    p = sub.add_parser(
        "extract",
        help="extract DINOv3 features from images, folders, videos or a list file",
        description="Extract DINOv3 features to one safetensors file per input (or to shards: --format shards), "
        "plus a manifest.jsonl.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    accept_negative_lists(p)  # --layers -4,-1 as written
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, video files, folders (recursive) or .txt lists"
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_model_args(p, resolution="256")
    f = p.add_argument_group("features")
    f.add_argument(
        "--layers",
        default="-1",
        help="blocks to save, comma separated, 0-based, negatives count from the end (default -1 = last). Each is "
        "normed with the final norm, like get_intermediate_layers(norm=True). With --aggregate: Aggregator layers",
    )
    f.add_argument(
        "--save",
        action="append",
        metavar="KIND[,KIND]",
        help="what to save: cls, patch, storage (repeatable or comma list; default cls,patch)",
    )
    f.add_argument(
        "--save-dtype",
        choices=SAVE_DTYPES,
        default="float32",
        help="dtype of the saved tensors. numpy cannot read bfloat16 (safetensors.numpy fails on it): use float16 "
        "to halve the size of outputs read without torch",
    )
    o = p.add_argument_group("output layout")
    o.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="files",
        help="files: one <input>.safetensors per input; shards: a few safetensors shards of at most "
        "--shard-size holding every input's rows, plus index.json (input -> shard, row, offsets); README: "
        "'Sharded outputs'",
    )
    o.add_argument(
        "--shard-size",
        default=None,
        metavar="SIZE",
        help=f"with --format shards: the largest shard, e.g. 500MB, 1GB, 2GiB or bytes (default {DEFAULT_SHARD_SIZE})",
    )
    v = p.add_argument_group("videos and clips")
    sampling = v.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames", type=int, default=None, help=f"frames per video, spread uniformly (default {DEFAULT_VIDEO_FRAMES})"
    )
    sampling.add_argument("--fps", type=float, default=None, help="sample videos at this many frames per second")
    v.add_argument(
        "--aggregate",
        action="store_true",
        help="run each video, and each folder of frames, as one clip through the VGGT-style Aggregator (the model is "
        "its patch embedding) and save its outputs (aggregated.L) instead of per-frame backbone features; needs "
        "--aggregator-weights, or --random-aggregator",
    )
    v.add_argument(
        "--aggregator-kwargs",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="Aggregator constructor overrides (default: VGGT's, with the model's width and heads; e.g. depth=2)",
    )
    v.add_argument("--aggregator-weights", default=None, help="state dict (.pt/.pth/.safetensors) for the Aggregator")
    v.add_argument(
        "--random-aggregator",
        action="store_true",
        help="run --aggregate with a randomly initialised Aggregator (seeded by --seed); for testing only",
    )
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    r.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data loader processes decoding inputs while the model runs (default: CPU cores per process - 1, max 8)",
    )
    r.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip inputs whose output is complete and made with the same settings (default on)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that hold another input's features (same output name; refused by default)",
    )
    r.add_argument("--quiet", "-q", action="store_true", help="no progress output (errors are still reported)")
    r.add_argument(
        "--log-interval", type=float, default=30.0, help="seconds between progress lines when not on a terminal"
    )
    r.add_argument("--dist-timeout", type=float, default=86400.0, help="torchrun: seconds ranks wait for each other")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 extract``: the job is :func:`dinov3_integration.extraction.run_job`; this prints.

    Under torchrun a command-line problem is reported by rank 0 only (the other ranks exit with status 2
    silently), and failed inputs end the job with rank 0's summary and exit status 1.
    """
    ctx = dist_env()
    setup_logging(verbose=getattr(args, "verbose", 0), quiet=args.quiet, rank=ctx.rank if ctx.world_size > 1 else None)
    try:
        report = run_job(args, ctx=ctx)
    except (CLIError, ExtractionError) as exc:
        if ctx.is_main:
            raise
        log.debug("rank %d: %s (reported by rank 0)", ctx.rank, exc)
        return 2
    return summarize(report)


def summarize(report: Any) -> int:
    """Log the job's summary line (and up to 10 failures) on rank 0; the exit status: 1 if any input failed."""
    if not report.is_main:
        return 0  # rank 0 reports the job's summary and exit status (one line, not one per rank)
    if report.counts["failed"]:
        log.warning("%s", report.summary())
        for rec in report.failed[:10]:
            log.warning("  failed: %s: %s", rec["input"], rec["error"])
        return 1
    log.info("%s", report.summary())
    return 0
