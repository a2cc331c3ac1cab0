"""VGGT compatibility: VGGT's layer package, its 2D RoPE and the multi-frame :class:`Aggregator`.

``Aggregator`` is a drop-in for ``vggt.models.aggregator.Aggregator`` (same arguments, outputs and checkpoint keys)
that also accepts any DINOv3 ViT as its patch embedding::

    from dinov3_integration.vggt_compat import Aggregator

    agg = Aggregator.from_vggt("facebook/VGGT-1B")                           # VGGT-1B's aggregator
    agg = Aggregator(img_size=224, patch_size=16, patch_embed="dinov3_vitl16_reg", output_layers=[4, 11, 17, 23])

Modules: :mod:`.aggregator` (the module), :mod:`.patch_embeds` (the patch-embedding factory), :mod:`.checkpoint`
(VGGT checkpoint reading and mismatch reports), :mod:`.inputs` (input and argument checks), :mod:`.outputs` (the
layer list of ``output_layers``), :mod:`.preprocess` and :mod:`.heads` (VGGT-style inputs at any patch size and
heads adapted to it), :mod:`.layers` and :mod:`.rope` (VGGT's public layer names).
"""

from __future__ import annotations

from . import layers
from .aggregator import Aggregator
from .checkpoint import (
    BackboneFamilyError,
    StateDictMismatchError,
    VGGTLoadResult,
    extract_aggregator_state_dict,
    read_vggt_checkpoint,
)
from .heads import adapt_vggt_heads
from .outputs import LayerNotKeptError, LayerOutputs
from .preprocess import vggt_preprocess
from .rope import PositionGetter, RotaryPositionEmbedding2D

LoadResult = VGGTLoadResult
"""Deprecated name of :class:`VGGTLoadResult` (it collided with :class:`dinov3_integration.hub.LoadResult`)."""

__all__ = [
    "Aggregator",
    "BackboneFamilyError",
    "LayerNotKeptError",
    "LayerOutputs",
    "LoadResult",
    "PositionGetter",
    "RotaryPositionEmbedding2D",
    "StateDictMismatchError",
    "VGGTLoadResult",
    "adapt_vggt_heads",
    "extract_aggregator_state_dict",
    "layers",
    "read_vggt_checkpoint",
    "vggt_preprocess",
]
