"""What both feature output forms share (:mod:`features`: one file per input; :mod:`feature_shards`: shards).

Metadata encoding (safetensors metadata values are strings: anything else is stored as JSON and decoded on
reading), the SHA-256 ``data_digest`` over named tensors (from the tensors, or from a file's raw bytes without
torch), a torch-free safetensors header reader, and :class:`FeatureFileError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "FeatureFileError",
    "decode_metadata",
    "encode_metadata",
    "raw_tensors_digest",
    "read_safetensors_header",
    "tensors_digest",
]


class FeatureFileError(ValueError):
    """A feature file (or shard, or shard index) is unreadable, damaged, or not in its format."""


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` over ``tensors`` sorted by name: each name, dtype, shape and raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Strings stay as they are; every other value becomes JSON (what :func:`decode_metadata` decodes)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """The inverse of :func:`encode_metadata`: each value that parses as JSON is decoded, the rest stay strings."""
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value
    return meta


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


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    """A safetensors file's header, parsed without torch: ``(metadata, {name: entry}, data start offset)``.

    Each entry has ``dtype``, ``shape`` and ``data_offsets`` ``[begin, end]`` (relative to the data start); checked
    for types only here (:func:`raw_tensors_digest` checks them against the data).
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


def raw_tensors_digest(path: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]], start: int) -> str:
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
