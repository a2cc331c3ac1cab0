"""``dinov3 extract``: batch feature extraction to one safetensors file per input.

Outputs (under ``--out``):

* ``<key>.safetensors`` per input, where ``<key>`` mirrors the input's path below its argument
  (``photos/a/b.jpg`` -> ``a/b.jpg.safetensors``), in the format of :mod:`dinov3_integration.features`
  (tensors ``cls.L``/``patch.L``/``storage.L`` or ``aggregated.L``; metadata: model, depth, the (redacted) weights
  label and ``weights_digest`` (SHA-256 of the state dict that ran), resolution, size, grid, preprocessing, layers,
  library version, the source path, a ``config_digest`` used by ``--resume`` and a ``data_digest`` of the tensors).
  Read them back with :func:`dinov3_integration.read_features`.
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
import time
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..features import FORMAT, read_features
from ..utils.redact import redact_text
from ._common import (
    CLIError,
    accept_negative_lists,
    add_model_args,
    dist_env,
    format_seconds,
    init_distributed,
    read_jsonl,
    resolve_device,
    setup_logging,
    write_jsonl,
)
from ._extract_engine import DEFAULT_VIDEO_FRAMES, EXIT_AFTER_ENV, Extraction, Settings, source_signature
from ._extract_options import (
    SAVE_DTYPES,
    SAVE_KINDS,
    check_options,
    check_output_folder,
    parse_layers,
    parse_save_kinds,
)
from ._extract_runners import AggregateRunner, BackboneRunner, Progress, build_aggregator

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
    "finish",
    "parse_layers",
    "parse_save_kinds",
    "read_features",  # re-exported: the reader lives in dinov3_integration.features
    "run",
    "source_signature",
]

log = get_logger("extract")

MANIFEST = "manifest.jsonl"

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
        description="Extract DINOv3 features to one safetensors file per input, plus a manifest.jsonl.",
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
        help="dtype of the saved tensors; numpy cannot read bfloat16: use float16 to halve the size",
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


# ---------------------------------------------------------------------------------------------------------- output
def _rank_manifest(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"manifest.rank{rank}-of-{world}.jsonl"


def _write_manifest(path: Path, records: list[dict[str, Any]]) -> None:
    try:
        write_jsonl(path, records)
    except OSError as exc:
        raise CLIError(
            f"cannot write the manifest {path} ({exc.strerror or exc}); the feature files written so far are "
            "complete: free space (or fix permissions) and run the same command again to finish"
        ) from exc


def finish(ext: Extraction) -> int:
    """Write this rank's manifest; rank 0 merges all of them into ``manifest.jsonl``. Returns the exit status."""
    ctx = ext.ctx
    records = sorted(ext.records.values(), key=lambda r: r["input"])
    if ctx.world_size > 1:
        _write_manifest(_rank_manifest(ext.out_dir, ctx.rank, ctx.world_size), records)
        ctx.barrier()
        failed_total = ctx.all_sum(sum(r["status"] == "failed" for r in records))
        if not ctx.is_main:
            return 0  # rank 0 reports the job's summary and exit status (one line, not one per rank)
        merged: list[dict[str, Any]] = []
        for r in range(ctx.world_size):
            path = _rank_manifest(ext.out_dir, r, ctx.world_size)
            merged.extend(read_jsonl(path))
        records = sorted(merged, key=lambda rec: rec["input"])
        _write_manifest(ext.out_dir / MANIFEST, records)
        for r in range(ctx.world_size):
            _rank_manifest(ext.out_dir, r, ctx.world_size).unlink(missing_ok=True)
        assert failed_total == sum(r["status"] == "failed" for r in records)
    else:
        _write_manifest(ext.out_dir / MANIFEST, records)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "cached", "failed")}
    elapsed = time.monotonic() - ext.start
    summary = (
        f"extract: {len(records)} inputs: {counts['ok']} written, {counts['cached']} already complete, "
        f"{counts['failed']} failed in {format_seconds(elapsed)}; manifest: {ext.out_dir / MANIFEST}"
    )
    if counts["failed"]:
        log.warning("%s", summary)
        for rec in [r for r in records if r["status"] == "failed"][:10]:
            log.warning("  failed: %s: %s", rec["input"], rec["error"])
        return 1
    log.info("%s", summary)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 extract``.

    Under torchrun a command-line problem is reported by rank 0 only (the other ranks exit with status 2
    silently), and failed inputs end the job with rank 0's summary and exit status 1.
    """
    ctx = dist_env()
    setup_logging(verbose=getattr(args, "verbose", 0), quiet=args.quiet, rank=ctx.rank if ctx.world_size > 1 else None)
    try:
        return _run(args, ctx)
    except CLIError as exc:
        if ctx.is_main:
            raise
        log.debug("rank %d: %s (reported by rank 0)", ctx.rank, exc)
        return 2


def _run(args: argparse.Namespace, ctx: Any) -> int:
    from ..data.preprocess import parse_resolution

    check_options(args)
    try:
        resolution = parse_resolution(args.resolution)
    except ValueError as exc:
        raise CLIError(f"--resolution: {exc}") from exc
    check_output_folder(args.out)  # every rank: each then fails alike, and rank 0 says why
    device = resolve_device(args.device, ctx)
    init_distributed(ctx, device, args.dist_timeout)
    try:
        ext = Extraction(args, ctx, device)
        ext.resolution = resolution
        ext.discover()
        if ext.resume_without_model():
            return finish(ext)
        ext.setup()
        ext.out_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            log.info(
                "extract: %d inputs%s, model %s (%s), resolution %s, device %s",
                ext.total_inputs,
                f" over {ctx.world_size} ranks" if ctx.world_size > 1 else "",
                ext.loaded.name,
                redact_text(ext.loaded.weights),
                ext.settings.resolution,
                device,
            )
            if args.aggregate and args.random_aggregator:
                log.warning("--random-aggregator: the Aggregator has random weights; its outputs are for testing only")
        ext.run()
        return finish(ext)
    finally:
        ctx.close()
