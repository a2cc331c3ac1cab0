"""VGGT's ``vggt.layers.attention``: ``Attention`` (qk-norm + 2D RoPE with explicit positions) and ``MemEffAttention``.

Both are thin subclasses of the shared :class:`dinov3_integration.layers.SelfAttention` (one copy of the attention
math): VGGT's constructor signature, its ``forward(x, pos=None)``, and the same keys (``qkv``, ``q_norm``,
``k_norm``, ``proj``). The rotation is handed to the shared attention as a callable that rotates the
``[B, heads, N, head_dim]`` q and k after ``q_norm`` / ``k_norm``, as VGGT does.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ...layers.attention import SelfAttention

__all__ = ["Attention", "MemEffAttention", "XFORMERS_AVAILABLE"]

XFORMERS_AVAILABLE = False


class Attention(SelfAttention):
    """Multi-head self-attention, ``[B, N, C] -> [B, N, C]``, with VGGT's signature.

    Args:
        dim: width ``C``.
        num_heads: heads ``h`` (``head_dim = C // h``).
        qkv_bias, proj_bias: biases of the ``qkv`` and ``proj`` Linears.
        attn_drop, proj_drop: dropout rates.
        norm_layer: class of the per-head ``q_norm`` / ``k_norm`` (``nn.LayerNorm``: eps 1e-5).
        qk_norm: normalise q and k per head before the rotation.
        fused_attn: use ``F.scaled_dot_product_attention`` (True) or the explicit softmax.
        rope: a module ``rope(t, pos) -> t`` rotating ``[B, h, N, head_dim]`` by positions ``[B, N, 2]``
            (:class:`~dinov3_integration.vggt_compat.rope.RotaryPositionEmbedding2D`), or None. It holds no
            parameters, so one instance may be shared by many blocks.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            qk_norm=qk_norm,
            norm_layer=norm_layer,
            fused_attn=fused_attn,
        )
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """``[B, N, C] -> [B, N, C]``; ``pos`` (``[B, N, 2]`` int64 ``(y, x)``) is used only when a rope is set."""
        rope = self.rope
        if rope is None or pos is None:
            return super().forward(x)
        pair = getattr(rope, "rotate_pair", None)
        if pair is not None:
            return super().forward(x, rope=lambda q, k: pair(q, k, pos))
        return super().forward(x, rope=lambda q, k: (rope(q, pos), rope(k, pos)))


class MemEffAttention(Attention):
    """VGGT/DINOv2's memory-efficient attention without xFormers: plain :class:`Attention`, no positions.

    ``forward(x, attn_bias=None, pos=None)`` on ``[B, N, C]``; an ``attn_bias`` needs xFormers and is refused, and
    ``pos`` must be None (DINO blocks have no RoPE).
    """

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, pos: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if pos is not None:
            raise ValueError("MemEffAttention does not take positions (pos must be None); use Attention with a rope")
        if attn_bias is not None:
            raise NotImplementedError(
                "MemEffAttention got an attn_bias, which needs xFormers (not supported here); pass attn_bias=None"
            )
        return super().forward(x)
