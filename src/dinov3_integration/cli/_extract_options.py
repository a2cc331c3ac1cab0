"""``dinov3 extract`` options: parsing and every check that can run before a model is built or an input read."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from .._logging import get_logger
from ..utils.atomic import atomic_path
from ..utils.indices import parse_index_list, resolve_layer_indices
from ._common import CLIError, library_version, parse_model_kwargs, weights_identity

log = get_logger("extract")

SAVE_KINDS = ("cls", "patch", "storage")
SAVE_DTYPES = ("float32", "float16", "bfloat16")


# --------------------------------------------------------------------------------------------------------- options
def parse_save_kinds(values: Sequence[str] | None) -> list[str]:
    """``["cls,patch", "storage"]`` -> ``["cls", "patch", "storage"]`` (validated, ordered, unique)."""
    kinds: list[str] = []
    for value in values or ["cls,patch"]:
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SAVE_KINDS:
                raise CLIError(f"--save {part!r} is not one of {', '.join(SAVE_KINDS)}")
            if part not in kinds:
                kinds.append(part)
    if not kinds:
        raise CLIError(f"--save needs at least one of {', '.join(SAVE_KINDS)}")
    return [k for k in SAVE_KINDS if k in kinds]


def parse_layers(text: str | None, n_blocks: int) -> list[int]:
    """``"-1"`` -> ``[n_blocks - 1]``; ``"3,7,-1"`` -> sorted unique absolute block indices (:mod:`utils.indices`)."""
    text = (text or "-1").strip()
    try:
        return resolve_layer_indices(parse_index_list(text), n_blocks, what="--layers")
    except ValueError as exc:
        raise CLIError(f"{exc} (example: --layers 3,7,11 or --layers -4,-1)") from exc


def check_options(args: argparse.Namespace) -> None:
    """Everything about the command line that can be checked before any model is built or input is read."""
    if args.frames is not None and args.frames < 1:
        raise CLIError(f"--frames must be at least 1, got {args.frames}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise CLIError(f"--fps must be a positive finite number of frames per second, got {args.fps}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise CLIError(f"--num-workers must be 0 (decode in this process) or more, got {args.num_workers}")
    if not args.aggregate and (args.aggregator_kwargs or args.aggregator_weights or args.random_aggregator):
        raise CLIError("--aggregator-kwargs / --aggregator-weights / --random-aggregator only apply with --aggregate")
    if args.aggregate and not args.aggregator_weights and not args.random_aggregator:
        raise CLIError(
            "--aggregate without --aggregator-weights would run a randomly initialised Aggregator: its outputs mean "
            "nothing. Pass --aggregator-weights FILE (a VGGT checkpoint), or --random-aggregator to do it anyway "
            "(testing only)"
        )
    if args.aggregate and args.aggregator_weights and args.random_aggregator:
        raise CLIError("give either --aggregator-weights or --random-aggregator, not both")
    if args.aggregate and args.save:
        log.warning("--save is ignored with --aggregate: the Aggregator outputs (aggregated.L) are saved")
    parse_save_kinds(args.save)


def check_output_folder(out: str) -> Path:
    """Create ``--out`` and prove it is writable, before any work: a clear :class:`CLIError` otherwise."""
    path = Path(out).resolve()
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out!r} is an existing file, not a folder: choose a folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / ".dinov3-write-check", fsync=False) as tmp:
            tmp.write_bytes(b"")
        (path / ".dinov3-write-check").unlink(missing_ok=True)
    except OSError as exc:
        raise CLIError(
            f"--out {out!r} is not a writable folder ({exc.strerror or exc}): choose another --out or fix its "
            "permissions"
        ) from exc
    return path


def request_digest(args: argparse.Namespace, resolution: object) -> str | None:
    """A digest of everything in the command line that decides an output's content, computed without building the
    model (issue 15: a rerun whose outputs are all complete skips the model). None when the weights have no cheap
    identity or with ``--aggregate`` (then the model is built and the outputs compared by ``config_digest``)."""
    identity = weights_identity(args)
    if identity is None or args.aggregate:
        return None
    try:
        layers = parse_index_list(args.layers or "-1")
    except ValueError:
        return None
    request = {
        "library_version": library_version(),
        "model": args.model,
        "model_kwargs": parse_model_kwargs(args.model_kwargs),
        "weights": identity,
        "resolution": str(resolution),
        "interpolation": args.interpolation,
        "normalization": args.normalization,
        "layers": layers,
        "save": parse_save_kinds(args.save),
        "save_dtype": args.save_dtype,
        "dtype": args.dtype,
        "frames": args.frames,
        "fps": args.fps,
    }
    blob = json.dumps(request, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()
