"""Data pipeline for feature extraction: input discovery, decoding (images, videos), preprocessing, batching."""

from .inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputError, InputItem, discover_inputs, shard
from .preprocess import (
    NORMALIZATIONS,
    Normalization,
    Resolution,
    choose_normalization,
    load_image,
    normalize,
    parse_resolution,
    reference_transform,
    resize_uint8,
    target_size,
)

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
