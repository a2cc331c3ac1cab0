"""The feature-file format written by ``dinov3 extract`` (and :func:`dinov3_integration.extract`), and its reader.

One safetensors file per input. Tensors, for each saved block ``L``:

- ``cls.L`` ``[D]``, ``patch.L`` ``[h, w, D]`` (row-major patch grid), ``storage.L`` ``[R, D]`` for an image;
- the same with a leading frame axis ``[T, ...]`` for a video or a clip, plus ``frame_indices`` ``[T]`` (int64)
  and ``frame_times`` ``[T]`` (float64, seconds) for a video;
- ``aggregated.L`` ``[S, P, 2C]`` for each kept Aggregator layer ``L`` (``extract --aggregate``).

Metadata values are strings (safetensors' rule); anything that is not a string is stored as JSON and decoded by
:func:`read_features`. ``format`` is :data:`FORMAT`; ``data_digest`` is a SHA-256 over the tensors (names, dtypes,
shapes, bytes) so a file whose data section was damaged behind an intact header is detected
(:func:`verify_features`). Files are written atomically (:mod:`dinov3_integration.utils.atomic`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .feature_codec import FeatureFileError, encode_metadata, tensors_digest
from .feature_codec import decode_metadata as _decode
from .feature_shard_reader import FeatureShards
from .feature_shards import INDEX_NAME, SHARD_FORMAT
from .utils.atomic import atomic_path, remove_stale_temps

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "FeatureFileError",
    "FeatureShards",
    "encode_metadata",
    "read_features",
    "read_metadata",
    "tensors_digest",
    "verify_features",
    "write_features",
]

FORMAT = "dinov3_integration.features/1"


def write_features(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> None:
    """Write one feature file atomically: ``tensors`` plus ``metadata`` (encoded), ``format`` and ``data_digest``.

    Temporaries a killed earlier writer left beside ``path`` are removed first (matched literally).
    """
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, **dict(metadata), "data_digest": tensors_digest(contiguous)}
    remove_stale_temps(path)
    with atomic_path(path) as tmp:
        save_file(contiguous, os.fspath(tmp), metadata=encode_metadata(meta))


# safetensors dtype codes -> the torch dtype as :func:`tensors_digest` writes it, and bytes per element.
_DTYPES = {
    "BOOL": ("torch.bool", 1),
    "U8": ("torch.uint8", 1),
    "I8": ("torch.int8", 1),
    "I16": ("torch.int16", 2),
    "U16": ("torch.uint16", 2),
    "I32": ("torch.int32", 4),
    "U32": ("torch.uint32", 4),
    "I64": ("torch.int64", 8),
    "U64": ("torch.uint64", 8),
    "F16": ("torch.float16", 2),
    "BF16": ("torch.bfloat16", 2),
    "F32": ("torch.float32", 4),
    "F64": ("torch.float64", 8),
    "F8_E4M3": ("torch.float8_e4m3fn", 1),
    "F8_E5M2": ("torch.float8_e5m2", 1),
}
_MAX_HEADER = 100_000_000  # bytes; safetensors' own limit


def _read_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    """A safetensors file's header, parsed without torch: ``(metadata, {name: entry}, data start offset)``.

    Each entry has ``dtype``, ``shape`` and ``data_offsets`` ``[begin, end]`` (relative to the data start); checked
    for types only here (:func:`verify_features` checks them against the data).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                raise ValueError("shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > _MAX_HEADER:
                raise ValueError(f"header length {n} is implausible")
            blob = fh.read(n)
            if len(blob) != n:
                raise ValueError("the header is cut short")
        header = json.loads(blob)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ is not a mapping of strings")
        for key, entry in header.items():
            shape, offsets = entry.get("shape"), entry.get("data_offsets")
            if not (
                isinstance(entry.get("dtype"), str)
                and isinstance(shape, list)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list)
                and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]
            ):
                raise ValueError(f"the entry of {key!r} is malformed")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise FeatureFileError(f"{name} is not a readable safetensors file: {exc}") from exc
    return meta, header, 8 + n


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, str], set[str]]:
    """The raw (undecoded) metadata and the tensor names of a feature file, without reading the tensors (nor
    importing torch).

    Raises:
        FeatureFileError: the file is not a readable safetensors file.
    """
    meta, entries, _ = _read_header(path)
    return dict(meta), set(entries)


def _raw_digest(path: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]], start: int) -> str:
    """:func:`tensors_digest` of the file's tensors computed from its raw bytes with hashlib (no torch): the same
    names, dtypes, shapes and little-endian bytes. Raises ValueError when the data section does not fit the
    header (cut short, holes, trailing bytes, unknown dtype)."""
    import mmap

    with open(os.fspath(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        spans = sorted((e["data_offsets"][0], e["data_offsets"][1]) for e in entries.values())
        end = 0
        for begin, stop in spans:
            if begin != end:
                raise ValueError("the tensors do not tile the data section")
            end = stop
        if start + end != size:
            raise ValueError(f"the data section holds {size - start} bytes, the header describes {end}")
        h = hashlib.sha256()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else contextlib.nullcontext(b"") as data:
            view = memoryview(data)
            try:
                for name in sorted(entries):
                    entry = entries[name]
                    if entry["dtype"] not in _DTYPES:
                        raise ValueError(f"{name}: unknown dtype {entry['dtype']}")
                    dtype, itemsize = _DTYPES[entry["dtype"]]
                    shape = tuple(entry["shape"])
                    begin, stop = entry["data_offsets"]
                    numel = math.prod(shape)
                    if stop - begin != numel * itemsize:
                        raise ValueError(f"{name}: {stop - begin} bytes for {numel} x {itemsize}")
                    h.update(f"{name}|{dtype}|{shape}\n".encode())
                    if numel:
                        h.update(view[start + begin : start + stop])
            finally:
                view.release()
    return "sha256:" + h.hexdigest()


def verify_features(path: str | os.PathLike[str], expected_keys: Iterable[str] = ()) -> dict[str, str]:
    """Check that ``path`` is a complete feature file; return its raw metadata.

    Complete means: readable, ``format`` is :data:`FORMAT`, every name of ``expected_keys`` is present, and the
    tensors hash to the stored ``data_digest`` (the whole data section is read). Torch is not imported: the
    checksum is computed over the raw bytes with hashlib (equal to :func:`tensors_digest` of the tensors).

    Raises:
        FeatureFileError: naming what is wrong.
    """
    meta, entries, start = _read_header(path)
    if meta.get("format") != FORMAT:
        raise FeatureFileError(f"{os.fspath(path)} is not a {FORMAT} file (format {meta.get('format')!r})")
    missing = sorted(set(expected_keys) - set(entries))
    if missing:
        raise FeatureFileError(f"{os.fspath(path)} lacks the tensors {missing}")
    stored = meta.get("data_digest")
    if not stored:
        raise FeatureFileError(f"{os.fspath(path)} has no data_digest (written by an older version)")
    try:
        digest = _raw_digest(path, entries, start)
    except (OSError, ValueError) as exc:
        raise FeatureFileError(f"{os.fspath(path)}: the data section is unreadable: {exc}") from exc
    if digest != stored:
        raise FeatureFileError(f"{os.fspath(path)}: the data section does not match its data_digest (damaged)")
    return dict(meta)


def read_features(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | FeatureShards:
    """Load ``dinov3 extract``'s output: a feature file -> ``(tensors, metadata)`` (JSON metadata values decoded);
    a shard folder (``--format shards``), its ``index.json`` or one shard -> a :class:`FeatureShards`.

    Example: ``tensors, meta = read_features("feats/photos/a.jpg.safetensors")``; ``tensors["patch.11"]`` is
    ``[h, w, D]`` for an image, ``[T, h, w, D]`` for a video; ``meta["grid"] == [h, w]``. With shards:
    ``shards = read_features("feats")``; ``tensors, meta = shards["photos/a.jpg"]`` (the same tensors and
    metadata), ``shards.stack("cls.11")`` is the ``[N, D]`` CLS matrix of N images.
    """
    from safetensors import safe_open

    if Path(path).is_dir() or Path(path).name == INDEX_NAME:
        return FeatureShards(path)
    with safe_open(os.fspath(path), framework="pt") as fh:
        raw = fh.metadata() or {}
        if raw.get("format") == SHARD_FORMAT:
            return FeatureShards(path)
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    return tensors, _decode(raw)
