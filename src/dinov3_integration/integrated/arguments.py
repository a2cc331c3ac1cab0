"""The two spellings of one integrated model: constructor arguments and a configuration.

``DINOv3IntegratedModel(...)`` takes flat keyword arguments; a :class:`~dinov3_integration.config.DINOv3Config`
nests the same values under ``model.backbone`` / ``model.aggregator``. This module converts between them, so the
constructor and ``from_config`` validate with the same code and an error names the argument the caller wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.schema import ConfigError, DINOv3Config, Origins, ResolvedArchitecture, config_from_dict, validate_config

ARGS_SOURCE = "DINOv3IntegratedModel(...)"

# config key path -> constructor argument
ARG_FOR_KEY = {
    "model.backbone.dinov3_model": "dinov3_model",
    "model.backbone.img_size": "img_size",
    "model.backbone.pretrained": "pretrained",
    "model.backbone.weights": "weights",
    "model.backbone.intermediate_layers": "intermediate_layers",
    "model.backbone.normalize": "normalize",
    "model.backbone.overrides": "backbone_overrides",
    "model.aggregator.enabled": "use_aggregator",
    "model.aggregator.embed_dim": "aggregator_embed_dim",
    "model.aggregator.depth": "aggregator_depth",
    "model.aggregator.num_heads": "aggregator_num_heads",
    "model.aggregator.mlp_ratio": "aggregator_mlp_ratio",
    "model.aggregator.num_register_tokens": "aggregator_num_register_tokens",
    "model.aggregator.aa_order": "aa_order",
    "model.aggregator.aa_block_size": "aa_block_size",
    "model.aggregator.qk_norm": "qk_norm",
    "model.aggregator.rope_freq": "rope_freq",
    "model.aggregator.init_values": "init_values",
    "model.aggregator.qkv_bias": "aggregator_qkv_bias",
    "model.aggregator.proj_bias": "aggregator_proj_bias",
    "model.aggregator.ffn_bias": "aggregator_ffn_bias",
    "model.aggregator.output_layers": "output_layers",
    "model.aggregator.frames_chunk_size": "frames_chunk_size",
    "model.freeze_backbone": "freeze_backbone",
    "model.gradient_checkpointing": "gradient_checkpointing",
}


def argument_name(key_path: str) -> str:
    """The constructor argument for a config key path (``model.aggregator.depth`` -> ``aggregator_depth``)."""
    if key_path.startswith("model.backbone.overrides."):
        return f"backbone_overrides[{key_path.rsplit('.', 1)[1]!r}]"
    return ARG_FOR_KEY.get(key_path, key_path)


def _as_list(value: Any) -> Any:
    return value if isinstance(value, str) else list(value)


def config_from_arguments(args: Mapping[str, Any]) -> tuple[DINOv3Config, ResolvedArchitecture]:
    """Validate constructor arguments (``{argument name: value}``, every argument) as a configuration.

    Raises:
        ConfigError: naming the constructor argument (``aggregator_num_heads = 5: ...``), not the key path.
    """
    tree: dict[str, Any] = {"backbone": {}, "aggregator": {}}
    for key_path, name in ARG_FOR_KEY.items():
        value = args[name]
        if name in ("intermediate_layers", "output_layers"):
            value = _as_list(value)
        elif name == "aa_order":
            value = [value] if isinstance(value, str) else list(value)
        elif name == "weights":
            value = None if value is None else str(value)
        elif name == "backbone_overrides":
            value = dict(value or {})
        parts = key_path.split(".")[1:]
        node = tree
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    try:
        config = config_from_dict({"model": tree}, Origins(ARGS_SOURCE))
        resolved = validate_config(config, Origins(ARGS_SOURCE))
    except ConfigError as err:
        raise ConfigError(err.source, argument_name(err.key_path), err.value, err.problem) from None
    return config, resolved


def kwargs_from_config(config: DINOv3Config) -> dict[str, Any]:
    """Constructor arguments equivalent to ``config`` (its architecture declarations are checked, not passed)."""
    out: dict[str, Any] = {}
    for key_path, name in ARG_FOR_KEY.items():
        node: Any = config
        for part in key_path.split("."):
            node = getattr(node, part)
        if isinstance(node, (list, dict)):
            node = type(node)(node)
        out[name] = node
    return out
