"""Building blocks shared by the DINOv3 ViT and the VGGT-compatible Aggregator."""

from .attention import SelfAttention
from .block import SelfAttentionBlock
from .drop_path import DropPath, drop_path
from .fastpath import fast_paths_enabled, set_fast_paths
from .ffn import Mlp, SwiGLUFFN, swiglu_hidden_features
from .layer_scale import LayerScale
from .linear import LinearKMaskedBias
from .norm import NORM_LAYERS, RMSNorm
from .patch_embed import PatchEmbed
from .rope import ROPE_DTYPES, RopePositionEmbedding, rope_apply, rope_rotate_half

__all__ = [
    "DropPath",
    "LayerScale",
    "LinearKMaskedBias",
    "Mlp",
    "NORM_LAYERS",
    "PatchEmbed",
    "RMSNorm",
    "ROPE_DTYPES",
    "RopePositionEmbedding",
    "SelfAttention",
    "SelfAttentionBlock",
    "SwiGLUFFN",
    "drop_path",
    "fast_paths_enabled",
    "rope_apply",
    "rope_rotate_half",
    "set_fast_paths",
    "swiglu_hidden_features",
]
