"""What both feature output forms share (:mod:`features`: one file per input; :mod:`feature_shards`: shards).

Metadata encoding (safetensors metadata values are strings: anything else is stored as JSON and decoded on
reading), the SHA-256 ``data_digest`` over named tensors, and :class:`FeatureFileError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["FeatureFileError", "decode_metadata", "encode_metadata", "tensors_digest"]


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
