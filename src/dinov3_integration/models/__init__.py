"""The DINOv3 vision transformer, the model specs (pure data) and model information.

``create_model`` and the hub functions (``dinov3_vitl16(...)``) live in :mod:`dinov3_integration.factory`, which
joins the models with the weights hub; importing them from here still works (deprecated path, resolved lazily so
that this package does not depend on the hub).
"""

from __future__ import annotations

import importlib
from typing import Any

from .info import ModelInfo, count_flops, count_parameters, model_info
from .specs import (
    HUB_DEFAULTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAT_MEAN,
    SAT_STD,
    WEIGHT_TAGS,
    ModelSpec,
    get_model_spec,
    list_models,
    normalization_for,
)
from .vision_transformer import DinoVisionTransformer

_FACTORY_NAMES = (
    "create_model",
    "dinov3_vit7b16",
    "dinov3_vitb16",
    "dinov3_vitg16",
    "dinov3_vith16plus",
    "dinov3_vitl14",
    "dinov3_vitl16",
    "dinov3_vitl16plus",
    "dinov3_vits16",
    "dinov3_vits16plus",
)

__all__ = [
    "HUB_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAT_MEAN",
    "SAT_STD",
    "WEIGHT_TAGS",
    "DinoVisionTransformer",
    "ModelInfo",
    "ModelSpec",
    "count_flops",
    "count_parameters",
    "get_model_spec",
    "list_models",
    "model_info",
    "normalization_for",
    *_FACTORY_NAMES,
]


def __getattr__(name: str) -> Any:
    # Deprecated path (use dinov3_integration.factory): resolved on first use, by name, to keep models below hub.
    if name in _FACTORY_NAMES:
        value = getattr(importlib.import_module("dinov3_integration.factory"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
