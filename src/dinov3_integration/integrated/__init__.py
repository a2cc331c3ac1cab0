"""The integrated model: a DINOv3 backbone with an optional VGGT-style Aggregator behind one forward.

- :class:`DINOv3IntegratedModel` (``integrated.model``: inputs, outputs and training switches);
- :func:`build_model` (a model from a configuration: a ``DINOv3Config``, a mapping, a YAML file or a variant);
- :func:`build_aggregator` (``integrated.assembly``: the one place a backbone becomes an Aggregator's patch
  embedding; ``dinov3 extract --aggregate`` uses it too).
"""

from .assembly import build_aggregator, load_aggregator_checkpoint, resolve_normalization
from .model import DINOv3IntegratedModel, build_model

__all__ = [
    "DINOv3IntegratedModel",
    "build_aggregator",
    "build_model",
    "load_aggregator_checkpoint",
    "resolve_normalization",
]
