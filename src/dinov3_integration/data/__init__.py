"""Data pipeline for feature extraction: input discovery, decoding (images, videos), preprocessing, batching."""

from __future__ import annotations

from ..utils.lazy import lazy_exports as _lazy_exports

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


__getattr__, __dir__ = _lazy_exports(globals(), _EXPORTS)
