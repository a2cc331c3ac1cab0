"""dinov3-integration: DINOv3 vision transformers as an exact, drop-in backbone for multi-frame 3D models.

Main entry points (imported on first use, so ``import dinov3_integration`` is cheap):

- :func:`create_model`, :func:`list_models`, :func:`model_info`, :class:`DinoVisionTransformer` (the ViT);
- :class:`Aggregator` (VGGT's multi-frame aggregator, any DINOv3 patch embedding);
- :class:`DINOv3IntegratedModel`, :func:`load_config`, :func:`build_model` (single/multi-frame model from YAML);
- :func:`extract` (feature extraction from Python: results in memory, or written like ``dinov3 extract``);
- :func:`read_features` (a ``dinov3 extract`` output file: tensors and metadata);
- :mod:`dinov3_integration.hub` (weights), :mod:`dinov3_integration.vggt_compat` (VGGT's layer names).
"""

from __future__ import annotations

from .utils.lazy import lazy_exports as _lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "DinoVisionTransformer": "models",
    "create_model": "factory",
    "list_models": "models",
    "model_info": "models",
    "Aggregator": "vggt_compat",
    "DINOv3IntegratedModel": "integrated",
    "load_config": "config",
    "build_model": "integrated",
    "save_config": "config",
    "ConfigError": "config",
    "DINOv3Config": "config",
    "list_variants": "config",
    "read_features": "features",
    "extract": "extraction",
    "ExtractionError": "extraction",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = _lazy_exports(globals(), _EXPORTS)
