"""VGGT compatibility: VGGT's layer package, its 2D RoPE and the multi-frame :class:`Aggregator`.

``Aggregator`` is a drop-in for ``vggt.models.aggregator.Aggregator`` (same arguments, outputs and checkpoint keys)
that also accepts any DINOv3 ViT as its patch embedding::

    from dinov3_integration.vggt_compat import Aggregator

    agg = Aggregator.from_vggt("facebook/VGGT-1B")                           # VGGT-1B's aggregator
    agg = Aggregator(img_size=224, patch_size=16, patch_embed="dinov3_vitl16_reg", output_layers=[4, 11, 17, 23])
"""

from __future__ import annotations

from . import layers
from .aggregator import Aggregator, LoadResult, StateDictMismatchError, extract_aggregator_state_dict
from .rope import PositionGetter, RotaryPositionEmbedding2D

__all__ = [
    "Aggregator",
    "LoadResult",
    "PositionGetter",
    "RotaryPositionEmbedding2D",
    "StateDictMismatchError",
    "extract_aggregator_state_dict",
    "layers",
]
