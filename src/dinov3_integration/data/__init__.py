"""Data pipeline for feature extraction: input discovery, decoding (images, videos), preprocessing, batching."""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: input discovery (``inputs``, ``resolution``) needs no torch, so a complete rerun of
# ``dinov3 extract`` finds its inputs without importing it (issue 15 item 2).
_EXPORTS = {
    "IMAGE_EXTENSIONS": "inputs",
    "VIDEO_EXTENSIONS": "inputs",
    "InputError": "inputs",
    "InputItem": "inputs",
    "discover_inputs": "inputs",
    "shard": "inputs",
    "Resolution": "resolution",
    "parse_resolution": "resolution",
    "NORMALIZATIONS": "preprocess",
    "Normalization": "preprocess",
    "choose_normalization": "preprocess",
    "load_image": "preprocess",
    "normalize": "preprocess",
    "reference_transform": "preprocess",
    "resize_uint8": "preprocess",
    "target_size": "preprocess",
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "VIDEO_EXTENSIONS",
    "InputError",
    "InputItem",
    "Normalization",
    "Resolution",
    "choose_normalization",
    "discover_inputs",
    "load_image",
    "normalize",
    "parse_resolution",
    "reference_transform",
    "resize_uint8",
    "shard",
    "target_size",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
