"""Deprecated: the old home of the model registry, kept as a thin re-export.

The registry was split: pure data in :mod:`dinov3_integration.models.specs`, parameter and FLOP counts in
:mod:`dinov3_integration.models.info`, and ``create_model`` with the hub functions (``dinov3_vitl16(...)``) in
:mod:`dinov3_integration.factory`. Import from those (or from :mod:`dinov3_integration.models`).
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
    register,
)

__all__ = [
    "HUB_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAT_MEAN",
    "SAT_STD",
    "WEIGHT_TAGS",
    "ModelInfo",
    "ModelSpec",
    "count_flops",
    "count_parameters",
    "get_model_spec",
    "list_models",
    "model_info",
    "normalization_for",
    "register",
]


def __getattr__(name: str) -> Any:
    # Deprecated path: create_model and the hub functions live in the factory, above the hub (no import cycle).
    factory = importlib.import_module("dinov3_integration.factory")
    if name in factory.__all__:
        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
