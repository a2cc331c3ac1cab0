"""YAML configuration for :class:`~dinov3_integration.integrated.DINOv3IntegratedModel`.

``load_config`` reads a file (or the packaged default and its variants), applies dotted overrides and validates;
``build_model`` turns a config into a model; ``save_config`` writes one back (``model.to_config()`` gives the config
of a built model).
"""

from .loader import (
    build_model,
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
    "build_model",
    "config_from_dict",
    "deep_merge",
    "default_config_path",
    "list_variants",
    "load_config",
    "parse_override",
    "save_config",
    "validate_config",
]
