"""Drop-in replacement for VGGT's layer package (``vggt.layers``): change the import, keep the code.

Same public names, signatures, defaults and state-dict keys as VGGT's modules, built on the shared layers of
:mod:`dinov3_integration.layers` (one copy of the attention/MLP math). Submodules mirror VGGT's files::

    from dinov3_integration.vggt_compat.layers.block import Block          # vggt.layers.block
    from dinov3_integration.vggt_compat.layers.attention import Attention  # vggt.layers.attention
    from dinov3_integration.vggt_compat.layers.vision_transformer import vit_large
    from dinov3_integration.vggt_compat.layers.rope import RotaryPositionEmbedding2D, PositionGetter

xFormers is never used (VGGT hard-codes it off). Two of VGGT's names collide with DINOv3 classes of this library,
so the classes have distinct names and VGGT's names are aliases here: ``DinoVisionTransformer`` is
:class:`DinoV2VisionTransformer` (not :class:`dinov3_integration.models.DinoVisionTransformer`), ``SwiGLUFFN`` is
:class:`W12SwiGLUFFN` (keys ``w12``/``w3``, not :class:`dinov3_integration.layers.SwiGLUFFN`'s ``w1``/``w2``/``w3``).
"""

from __future__ import annotations

from .attention import Attention, MemEffAttention
from .block import Block, NestedTensorBlock
from .drop_path import DropPath, drop_path
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .rope import PositionGetter, RotaryPositionEmbedding2D
from .swiglu_ffn import SwiGLU, SwiGLUFFN, SwiGLUFFNFused, W12SwiGLUFFN
from .vision_transformer import (
    DinoV2VisionTransformer,
    DinoVisionTransformer,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)

__all__ = [
    "Attention",
    "Block",
    "DinoV2VisionTransformer",
    "DinoVisionTransformer",
    "DropPath",
    "LayerScale",
    "MemEffAttention",
    "Mlp",
    "NestedTensorBlock",
    "PatchEmbed",
    "PositionGetter",
    "RotaryPositionEmbedding2D",
    "SwiGLU",
    "SwiGLUFFN",
    "SwiGLUFFNFused",
    "W12SwiGLUFFN",
    "drop_path",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
]
