"""YAML configuration for :class:`~dinov3_integration.integrated.DINOv3IntegratedModel`: pure data.

``load_config`` reads a file (or the packaged default and its variants, ``config/presets/``), applies dotted
overrides and validates; ``save_config`` writes one back (``model.to_config()`` gives the config of a built
model). Nothing here builds a model: :func:`dinov3_integration.build_model` (``integrated.build_model``) does.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .loader import (
    deep_merge,
    default_config_path,
    list_variants,
    load_config,
    parse_override,
    save_config,
)
from .schema import (
    AggregatorConfig,
    BackboneConfig,
    ConfigError,
    DINOv3Config,
    ModelConfig,
    ResolvedArchitecture,
    config_from_dict,
    validate_config,
)

__all__ = [
    "AggregatorConfig",
    "BackboneConfig",
    "ConfigError",
    "DINOv3Config",
    "ModelConfig",
    "ResolvedArchitecture",
    "config_from_dict",
    "deep_merge",
    "default_config_path",
    "list_variants",
    "load_config",
    "parse_override",
    "save_config",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    # Deprecated: ``config.build_model`` moved to ``dinov3_integration.build_model`` (``integrated``); the config
    # package builds nothing, so it may not import the model (a string import keeps the layering).
    if name == "build_model":
        warnings.warn(
            "dinov3_integration.config.build_model is deprecated; use dinov3_integration.build_model",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("dinov3_integration.integrated").build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
