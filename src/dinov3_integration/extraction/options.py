"""Extraction options: their defaults (those of ``dinov3 extract``), parsing, and every check that can run before a
model is built or an input is read; the cheap identity of a request (weights by file identity, settings)."""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..utils.atomic import atomic_path
from ..utils.indices import parse_index_list, resolve_layer_indices
from .errors import ExtractionError

log = get_logger("extract")

DEFAULT_MODEL = "dinov3_vits16"
SAVE_KINDS = ("cls", "patch", "storage")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
OUTPUT_FORMATS = ("files", "shards")  # one safetensors file per input; shards + index.json (feature_shards)

# Every option of ``dinov3 extract`` (the namespace attribute names) and its default; ``tests/test_extraction_api``
# checks that the command's parser has the same defaults.
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "weights": None,
    "random_weights": False,
    "model_kwargs": None,
    "seed": 0,
    "device": "auto",
    "dtype": "float32",
    "resolution": "256",
    "interpolation": "bilinear",
    "normalization": "auto",
    "layers": "-1",
    "save": None,
    "save_dtype": "float32",
    "frames": None,
    "fps": None,
    "aggregate": False,
    "aggregator_kwargs": None,
    "aggregator_weights": None,
    "random_aggregator": False,
    "batch_size": 16,
    "num_workers": None,
    "resume": True,
    "overwrite": False,
    "quiet": False,
    "log_interval": 30.0,
    "dist_timeout": 86400.0,
    "format": "files",
    "shard_size": None,
}
_CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "interpolation": ("bilinear", "bicubic"),
    "normalization": ("auto", "imagenet", "sat493m"),
    "save_dtype": SAVE_DTYPES,
    "format": OUTPUT_FORMATS,
}


def library_version() -> str:
    """``dinov3_integration.__version__`` (``"unknown"`` if the package cannot tell)."""
    try:
        from .. import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - only while the package is half-written
        try:
            from importlib.metadata import version

            return version("dinov3-integration")
        except Exception:
            return "unknown"


def _kwargs_list(value: Any) -> Any:
    """A mapping of keyword arguments -> the command's ``["k=v,..."]`` form (values as Python literals)."""
    if isinstance(value, Mapping):
        return [",".join(f"{k}={v!r}" for k, v in value.items())] if value else None
    if isinstance(value, str):
        return [value]
    return list(value) if value is not None else None


def make_options(inputs: Any, out: str | os.PathLike[str] | None, **options: Any) -> argparse.Namespace:
    """The keyword arguments of :func:`dinov3_integration.extract` -> the namespace ``dinov3 extract`` parses.

    Python forms are accepted beside the command's: ``layers=[-4, -1]`` or ``-1``, ``save=["cls", "patch"]``,
    ``model_kwargs={"depth": 2}``, ``resolution=224`` or ``(224, 320)``, ``weights=Path(...)``.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ExtractionError(f"unknown extract() options {unknown}; the options are {sorted(DEFAULTS)}")
    values = {**DEFAULTS, **options}
    for name, choices in _CHOICES.items():
        if values[name] not in choices:
            raise ExtractionError(f"{name}={values[name]!r} is not one of {', '.join(choices)}")
    if values["frames"] is not None and values["fps"] is not None:
        raise ExtractionError("give frames= or fps=, not both")
    layers = values["layers"]
    if isinstance(layers, int) and not isinstance(layers, bool):
        values["layers"] = str(layers)
    elif layers is not None and not isinstance(layers, str):
        values["layers"] = ",".join(str(int(i)) for i in layers)
    save = values["save"]
    values["save"] = [save] if isinstance(save, str) else list(save) if save is not None else None
    values["model_kwargs"] = _kwargs_list(values["model_kwargs"])
    values["aggregator_kwargs"] = _kwargs_list(values["aggregator_kwargs"])
    resolution = values["resolution"]
    if isinstance(resolution, Sequence) and not isinstance(resolution, str):
        values["resolution"] = "x".join(str(int(v)) for v in resolution)
    else:
        values["resolution"] = str(resolution)
    for name in ("weights", "aggregator_weights"):
        if values[name] is not None:
            values[name] = os.fspath(values[name]) if isinstance(values[name], os.PathLike) else values[name]
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    values["inputs"] = [os.fspath(p) for p in inputs]
    if not values["inputs"]:
        raise ExtractionError("extract() needs at least one input (an image, a video, a folder or a .txt list)")
    values["out"] = os.fspath(out) if out is not None else None
    values["verbose"] = 0
    return argparse.Namespace(**values)


def parse_model_kwargs(values: Any, *, option: str = "--model-kwargs") -> dict[str, Any]:
    """``["depth=2,embed_dim=64", "num_heads=4"]`` -> ``{"depth": 2, "embed_dim": 64, "num_heads": 4}``.

    Values are Python literals (numbers, True/False/None, quoted strings); anything else stays a string. A mapping
    is returned as a copy.
    """
    if isinstance(values, Mapping):
        return dict(values)
    out: dict[str, Any] = {}
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ExtractionError(f"{option} {part!r} is not KEY=VALUE (example: {option} depth=2,embed_dim=64)")
            key, raw = part.split("=", 1)
            try:
                out[key.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = raw.strip()
    return out


def parse_save_kinds(values: Sequence[str] | None) -> list[str]:
    """``["cls,patch", "storage"]`` -> ``["cls", "patch", "storage"]`` (validated, ordered, unique)."""
    kinds: list[str] = []
    for value in values or ["cls,patch"]:
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SAVE_KINDS:
                raise ExtractionError(f"--save {part!r} is not one of {', '.join(SAVE_KINDS)}")
            if part not in kinds:
                kinds.append(part)
    if not kinds:
        raise ExtractionError(f"--save needs at least one of {', '.join(SAVE_KINDS)}")
    return [k for k in SAVE_KINDS if k in kinds]


def parse_layers(text: str | None, n_blocks: int) -> list[int]:
    """``"-1"`` -> ``[n_blocks - 1]``; ``"3,7,-1"`` -> sorted unique absolute block indices (:mod:`utils.indices`)."""
    text = (text or "-1").strip()
    try:
        return resolve_layer_indices(parse_index_list(text), n_blocks, what="--layers")
    except ValueError as exc:
        raise ExtractionError(f"{exc} (example: --layers 3,7,11 or --layers -4,-1)") from exc


def check_options(args: argparse.Namespace) -> None:
    """Everything about the options that can be checked before any model is built or input is read."""
    if args.frames is not None and args.frames < 1:
        raise ExtractionError(f"--frames must be at least 1, got {args.frames}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ExtractionError(f"--fps must be a positive finite number of frames per second, got {args.fps}")
    if args.batch_size < 1:
        raise ExtractionError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ExtractionError(f"--num-workers must be 0 (decode in this process) or more, got {args.num_workers}")
    if not args.aggregate and (args.aggregator_kwargs or args.aggregator_weights or args.random_aggregator):
        raise ExtractionError(
            "--aggregator-kwargs / --aggregator-weights / --random-aggregator only apply with --aggregate"
        )
    if args.aggregate and not args.aggregator_weights and not args.random_aggregator:
        raise ExtractionError(
            "--aggregate without --aggregator-weights would run a randomly initialised Aggregator: its outputs mean "
            "nothing. Pass --aggregator-weights FILE (a VGGT checkpoint), or --random-aggregator to do it anyway "
            "(testing only)"
        )
    if args.aggregate and args.aggregator_weights and args.random_aggregator:
        raise ExtractionError("give either --aggregator-weights or --random-aggregator, not both")
    if args.aggregate and args.save:
        log.warning("--save is ignored with --aggregate: the Aggregator outputs (aggregated.L) are saved")
    parse_save_kinds(args.save)
    parse_model_kwargs(args.model_kwargs)
    check_shard_options(args)


def check_shard_options(args: argparse.Namespace) -> None:
    """``--format`` is ``files`` or ``shards``; ``--shard-size`` a size (``1GB``...), only with ``--format shards``."""
    from ..feature_shards import parse_size

    fmt = getattr(args, "format", "files")
    size = getattr(args, "shard_size", None)
    if fmt not in OUTPUT_FORMATS:
        raise ExtractionError(f"--format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if size is not None and fmt != "shards":
        raise ExtractionError(
            f"--shard-size {size} only applies with --format shards (the default is one file per input)"
        )
    if size is not None:
        try:
            parse_size(size)
        except ValueError as exc:
            raise ExtractionError(f"--shard-size: {exc}") from exc


def check_output_folder(out: str) -> Path:
    """Create ``--out`` and prove it is writable, before any work: a clear :class:`ExtractionError` otherwise."""
    path = Path(out).resolve()
    if path.exists() and not path.is_dir():
        raise ExtractionError(f"--out {out!r} is an existing file, not a folder: choose a folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / ".dinov3-write-check", fsync=False) as tmp:
            tmp.write_bytes(b"")
        (path / ".dinov3-write-check").unlink(missing_ok=True)
    except OSError as exc:
        raise ExtractionError(
            f"--out {out!r} is not a writable folder ({exc.strerror or exc}): choose another --out or fix its "
            "permissions"
        ) from exc
    return path


_PROBE = 1 << 20  # bytes hashed at each end of a weights file for its cheap identity


def weights_identity(args: argparse.Namespace) -> str | None:
    """A cheap identity of the weights ``args`` ask for, or None when only loading them can tell (URLs, tags, hub
    names, folders). A local file is its real path, size, modification time and a hash of its first and last MiB."""
    if args.weights is None:
        return f"random(seed={args.seed})" if args.random_weights else None
    path = os.path.expanduser(str(args.weights))
    if not os.path.isfile(path):
        return None
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            h.update(fh.read(_PROBE))
            if st.st_size > 2 * _PROBE:
                fh.seek(-_PROBE, os.SEEK_END)
                h.update(fh.read(_PROBE))
    except OSError:
        return None
    return f"file:{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


def request_digest(args: argparse.Namespace, resolution: object) -> str | None:
    """A digest of everything in the options that decides an output's content, computed without building the
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
