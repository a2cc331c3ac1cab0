"""``dinov3_integration.extract``: feature extraction from Python, in memory or written like ``dinov3 extract``."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .._logging import get_logger
from ..feature_shards import DEFAULT_SHARD_SIZE
from ..utils.redact import redact_text
from .dist import DistContext, dist_env, init_distributed, resolve_device
from .engine import Extraction
from .errors import ExtractionError
from .options import DEFAULT_MODEL, check_options, make_options
from .results import ExtractionReport, ExtractionResult
from .shard_sink import ShardSink
from .sinks import FileSink, Sink

__all__ = ["extract", "run_job"]

log = get_logger("extract")

PathLike = str | os.PathLike[str]


def _resolution(text: str) -> Any:
    from ..data.resolution import parse_resolution

    try:
        return parse_resolution(text)
    except ValueError as exc:
        raise ExtractionError(f"--resolution: {exc}") from exc


def extract(
    inputs: PathLike | Sequence[PathLike],
    *,
    model: str = DEFAULT_MODEL,
    weights: PathLike | None = None,
    layers: str | int | Sequence[int] = -1,
    save: str | Sequence[str] | None = None,
    resolution: int | str | Sequence[int] = 256,
    batch_size: int = 16,
    device: Any = "auto",
    out: PathLike | None = None,
    **options: Any,
) -> Iterator[ExtractionResult] | ExtractionReport:
    """Extract DINOv3 features from images, videos, folders (searched recursively) or ``.txt`` lists.

    Args:
        inputs: a path or a list of paths, as ``dinov3 extract INPUT...`` takes them.
        model: a registered model name (``dinov3 models``).
        weights: a weights file, folder, URL, ``hf-hub:ID``, timm name or tag (``lvd1689m``); None with
            ``random_weights=True`` for random weights (testing only).
        layers: blocks to save (0-based, negatives from the end): ``-1``, ``[-4, -1]`` or ``"3,7,11"``.
        save: ``"cls,patch"`` (default), or a list of ``cls``, ``patch``, ``storage``.
        resolution: short side in pixels (aspect ratio kept), or ``(H, W)`` / ``"HxW"``; rounded to the patch size.
        batch_size: frames per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        out: None: nothing is written, an iterator of results is returned. A folder: the job is written exactly as
            ``dinov3 extract ... --out FOLDER`` writes it (one ``<key>.safetensors`` per input, or with
            ``format="shards"`` shards of ``shard_size`` plus ``index.json``; ``manifest.jsonl``, resume of complete
            outputs) and an :class:`ExtractionReport` is returned.
        **options: every other option of ``dinov3 extract`` by its Python name, with the command's defaults:
            ``random_weights``, ``model_kwargs`` (a dict), ``seed``, ``dtype``, ``interpolation``, ``normalization``,
            ``save_dtype``, ``frames``, ``fps``, ``aggregate``, ``aggregator_kwargs`` (a dict),
            ``aggregator_weights``, ``random_aggregator``, ``num_workers``, ``resume``, ``overwrite``, ``quiet``,
            ``log_interval``, ``dist_timeout``, ``format`` (``"files"`` or ``"shards"``), ``shard_size``
            (``"1GB"`` by default with shards).

    Returns:
        With ``out=None``, an iterator of :class:`ExtractionResult` in the order inputs finish (inputs that fail
        give a result with ``status="failed"`` and the error); per result ``tensors`` holds, for each saved block
        ``L``: ``cls.L`` ``[D]``, ``patch.L`` ``[h, w, D]``, ``storage.L`` ``[R, D]`` for an image, ``[T, ...]``
        for a video (plus ``frame_indices``/``frame_times`` ``[T]``), ``aggregated.L`` ``[S, P, 2C]`` with
        ``aggregate=True``. The model is built, and the options checked, before this function returns.
        With ``out``, the :class:`ExtractionReport` (records, counts, summary).

    Raises:
        ExtractionError: a bad option or input (the message of the command's check: it names the fix).

    Example::

        for r in dinov3_integration.extract("photos/", weights="ckpt.pth", layers=[-1], resolution=224):
            cls, grid = r.tensors["cls.11"], r.tensors["patch.11"]  # [384], [14, 14, 384] for ViT-S/16
    """
    args = make_options(
        inputs,
        out,
        model=model,
        weights=weights,
        layers=layers,
        save=save,
        resolution=resolution,
        batch_size=batch_size,
        device=device,
        **options,
    )
    if out is not None:
        return run_job(args)
    return _in_memory(args)


def _in_memory(args: argparse.Namespace) -> Iterator[ExtractionResult]:
    """Check and set up now (errors at the call); compute lazily while the caller iterates."""
    check_options(args)
    ctx = dist_env()  # under torchrun: this rank's share of the inputs (no process group needed)
    ext = Extraction(args, ctx, None, _resolution(args.resolution))
    ext.discover()
    ext.setup(resolve_device(args.device, ctx))
    return ext.results()


def run_job(args: argparse.Namespace, *, ctx: DistContext | None = None, sink: Sink | None = None) -> ExtractionReport:
    """The whole written job ``dinov3 extract`` runs, for a namespace of its options (``args.out`` a folder).

    Checks the options, prepares the sink (default :class:`FileSink`, or :class:`ShardSink` for
    ``args.format == "shards"``), finds the inputs, skips the model when every
    output is complete (``resume``), otherwise builds it and runs; writes the manifest. Under torchrun every rank
    calls it; rank 0's report has the whole job's records.
    """
    ctx = ctx or dist_env()
    check_options(args)
    resolution = _resolution(args.resolution)
    if args.out is None:
        raise ExtractionError("run_job needs args.out, the output folder")
    if sink is None and getattr(args, "format", "files") == "shards":
        sink = ShardSink(args.out, shard_size=args.shard_size or DEFAULT_SHARD_SIZE, rank=ctx.rank)
    sink = sink or FileSink(args.out)
    sink.prepare()  # every rank: each then fails alike, and rank 0 says why
    device = None
    try:
        if ctx.world_size > 1:
            device = resolve_device(args.device, ctx)
            init_distributed(ctx, device, args.dist_timeout)
        ext = Extraction(args, ctx, sink, resolution)
        ext.discover()
        if not ext.resume_without_model():
            ext.setup(device if device is not None else resolve_device(args.device, ctx))
            if ctx.is_main:
                log.info(
                    "extract: %d inputs%s, model %s (%s), resolution %s, device %s",
                    ext.total_inputs,
                    f" over {ctx.world_size} ranks" if ctx.world_size > 1 else "",
                    ext.loaded.name,
                    redact_text(ext.loaded.weights),
                    ext.settings.resolution,
                    ext.device,
                )
                if args.aggregate and args.random_aggregator:
                    log.warning(
                        "--random-aggregator: the Aggregator has random weights; its outputs are for testing only"
                    )
            ext.run()
        merged = sink.finish(list(ext.records.values()), ctx)
        return _report(sink, ext, merged)
    finally:
        ctx.close()


def _report(sink: Sink, ext: Extraction, merged: list[dict[str, Any]] | None) -> ExtractionReport:
    records = merged if merged is not None else sorted(ext.records.values(), key=lambda r: r["input"])
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "cached", "failed")}
    return ExtractionReport(
        out=sink.root,
        records=records,
        counts=counts,
        seconds=time.monotonic() - ext.start,
        is_main=merged is not None,
        manifest=sink.manifest,
    )
