"""VGGT's ``vggt.layers.attention``: ``Attention`` (qk-norm + 2D RoPE with explicit positions) and ``MemEffAttention``.

Both are thin subclasses of the shared :class:`dinov3_integration.layers.SelfAttention` (one copy of the attention
math): VGGT's constructor signature, its ``forward(x, pos=None)``, and the same keys (``qkv``, ``q_norm``,
``k_norm``, ``proj``). The rotation is handed to the shared attention as a callable that rotates the
``[B, heads, N, head_dim]`` q and k after ``q_norm`` / ``k_norm``, as VGGT does.

:meth:`Attention.forward_fast` is the Aggregator's eager inference path (called only under a fast
:class:`~dinov3_integration.layers.fastpath.Plan`): the same numbers (``torch.equal``, tests/test_aggregator_fast.py)
with q and k normalised in their ``[B, N, h, d]`` layout (so the attention output comes back in that layout and the
final reshape is free), rotated in place by a :class:`~dinov3_integration.vggt_compat.rope.PreparedRope2D` whose
tables are gathered once per forward, and ``qkv`` / ``proj`` in the plan's workspace buffers.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ...layers import fastpath
from ...layers.attention import SelfAttention
from ...layers.fastpath import Plan, Role
from ..rope import PreparedRope2D

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

    def fast_forward_applies(self) -> bool:
        """Whether :meth:`forward_fast` reproduces :meth:`forward` (exact submodule types, no subclass)."""
        return type(self) is Attention and self._fast_forward_applies() and self.fused_attn

    def forward_fast(self, x: Tensor, rope: PreparedRope2D | None, plan: Plan) -> Tensor:
        """:meth:`forward` for eager inference under a fast ``plan``: ``[B, N, C] -> [B, N, C]``, the same numbers.

        ``rope``: the rotation by this call's positions (None: no rotation). Only where
        :meth:`fast_forward_applies`. The result may be the workspace's ``BRANCH`` buffer (released by the caller,
        :func:`~dinov3_integration.layers.fastpath.add_residual_`).
        """
        B, N, C = x.shape
        qkv_out = fastpath.linear(plan, self.qkv, x, Role.WIDE)
        q, k, v = qkv_out.view(B, N, 3, self.num_heads, self.head_dim).unbind(2)  # each [B, N, h, d], views
        # The per-head norms work row by row: normalising [B, N, h, d] gives the reference's [B, h, N, d] rows.
        q, k = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2)  # fresh [B, N, h, d], or qkv views
        if rope is not None:
            rope.rotate_(q)
            rope.rotate_(k)
        out = self._attend(q, k, v.transpose(1, 2))  # [B, h, N, d], laid out as q: [B, N, h, d]
        fastpath.release(plan, qkv_out)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(fastpath.linear(plan, self.proj, out, Role.BRANCH))


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
