"""VGGT's ``vggt.layers.block``: the pre-norm transformer ``Block`` with positions, and ``NestedTensorBlock``.

``Block`` is assembled from ready submodules, as VGGT writes it: ``norm1``, ``attn`` (any ``attn_class``, VGGT's
:class:`~.attention.Attention` by default), ``ls1``, ``drop_path1``, ``norm2``, ``mlp`` (any ``ffn_layer``),
``ls2``, ``drop_path2``; keys ``norm1.*``, ``attn.*``, ``ls1.gamma``, ``norm2.*``, ``mlp.*``, ``ls2.gamma``.
``forward(x, pos=None)`` computes ``x = x + ls1(attn(norm1(x), pos=pos))`` then ``x = x + ls2(mlp(norm2(x)))``.
Stochastic depth is the shared code of :mod:`dinov3_integration.layers.drop_path`. In eager inference the
residual adds take the library's fast path when :func:`dinov3_integration.layers.fastpath.decide` allows it
(LayerScale multiply and residual add in the fresh branch output: the same numbers, ``torch.equal``), and the
Aggregator runs :meth:`Block.forward_fast` (RoPE tables gathered once per forward, rotated in place; the workspace
buffers and the residual stream updated in place) under the plan it decided once for the whole forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

from torch import Tensor, nn

from ...layers import fastpath
from ...layers.drop_path import drop_add_residual_subset
from ...layers.fastpath import Plan
from ...layers.layer_scale import LayerScale
from ..rope import PreparedRope2D
from .attention import XFORMERS_AVAILABLE, Attention
from .drop_path import DropPath
from .mlp import Mlp

__all__ = ["Block", "NestedTensorBlock", "XFORMERS_AVAILABLE", "drop_add_residual_stochastic_depth"]


class Block(nn.Module):
    """Transformer block on ``[B, N, C] -> [B, N, C]`` with VGGT's arguments.

    Args:
        dim, num_heads: width and heads.
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``.
        qkv_bias, proj_bias, ffn_bias: biases.
        drop, attn_drop: dropout rates (``drop`` for the attention output and the MLP).
        init_values: LayerScale init (None or 0: no LayerScale, ``ls1``/``ls2`` are identities).
        drop_path: stochastic depth rate (batch subsetting above 0.1 in training, as VGGT).
        act_layer, norm_layer: MLP activation and block norm classes (``nn.LayerNorm``: eps 1e-5).
        attn_class: attention class, called as ``attn_class(dim, num_heads=, qkv_bias=, proj_bias=, attn_drop=,
            proj_drop=, qk_norm=, fused_attn=, rope=)`` (VGGT's keywords).
        ffn_layer: FFN class, called as ``ffn_layer(in_features=, hidden_features=, act_layer=, drop=, bias=)``.
        qk_norm, fused_attn, rope: forwarded to ``attn_class``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            qk_norm=qk_norm,
            fused_attn=fused_attn,
            rope=rope,
        )
        self.ls1: nn.Module = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop, bias=ffn_bias
        )
        self.ls2: nn.Module = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.sample_drop_ratio = drop_path

    def _attn_residual(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), pos=pos))

    def _ffn_residual(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """``[B, N, C] -> [B, N, C]``; ``pos`` is ``[B, N, 2]`` (or None) and reaches the attention's rope."""
        if self.training and self.sample_drop_ratio > 0.1:
            x = drop_add_residual_subset(x, self._attn_residual, self.sample_drop_ratio, pos)
            return drop_add_residual_subset(x, self._ffn_residual, self.sample_drop_ratio)
        plan = fastpath.decide(self)
        if plan.fast:  # eval, no autograd, no hooks: the reference's sums, computed in the fresh branch outputs
            branch = self.attn(self.norm1(x), pos=pos)
            x = fastpath.add_residual_(plan, x, branch, self.ls1, fastpath.exact(self.attn, Attention))
            branch = self.mlp(self.norm2(x))
            return fastpath.add_residual_(plan, x, branch, self.ls2, fastpath.exact(self.mlp, Mlp))
        x = x + self.drop_path1(self._attn_residual(x, pos))
        return x + self.drop_path2(self._ffn_residual(x))

    def fast_forward_applies(self) -> bool:
        """Whether :meth:`forward_fast` reproduces :meth:`forward` in eval (exact types of every submodule)."""
        exact = fastpath.exact
        return (
            type(self) in (Block, NestedTensorBlock)
            and exact(self.norm1, nn.LayerNorm)
            and exact(self.norm2, nn.LayerNorm)
            and isinstance(self.attn, Attention)
            and self.attn.fast_forward_applies()
            and exact(self.mlp, Mlp)
            and exact(self.ls1, LayerScale, nn.Identity)
            and exact(self.ls2, LayerScale, nn.Identity)
            and exact(self.drop_path1, nn.Identity, DropPath)
            and exact(self.drop_path2, nn.Identity, DropPath)
        )

    def forward_fast(self, x: Tensor, rope: PreparedRope2D | None, plan: Plan) -> Tensor:
        """:meth:`forward` in eager inference under a fast ``plan`` (eval: stochastic depth is off), ``[B, N, C]``.

        ``rope``: the rotation by this call's positions, shared by the blocks of one forward (None: no RoPE). With
        the plan's workspace owning ``x`` (the Aggregator's residual stream) the sums are written into ``x``.
        """
        branch = self.attn.forward_fast(self.norm1(x), rope, plan)
        x = fastpath.add_residual_(plan, x, branch, self.ls1, True)
        branch = self.mlp(self.norm2(x))  # Mlp follows the plan (its own fast forward)
        return fastpath.add_residual_(plan, x, branch, self.ls2, True)


def drop_add_residual_stochastic_depth(
    x: Tensor,
    residual_func: Callable[..., Tensor],
    sample_drop_ratio: float = 0.0,
    pos: Tensor | None = None,
) -> Tensor:
    """VGGT's name and signature for :func:`dinov3_integration.layers.drop_path.drop_add_residual_subset`.

    ``residual_func`` is applied to a random subset of the batch of ``x`` (``[B, N, C]``) and added back scaled by
    ``B / subset``; ``pos`` (``[B, N, 2]``), when given, is subset the same way and passed as ``pos=``.
    """
    if pos is None:
        return drop_add_residual_subset(x, residual_func, sample_drop_ratio)
    return drop_add_residual_subset(x, lambda t, p: residual_func(t, pos=p), sample_drop_ratio, pos)


class NestedTensorBlock(Block):
    """:class:`Block` that also takes a list of ``[B_i, N_i, C]`` tensors (each processed on its own).

    VGGT's list path needs xFormers' block-diagonal masks; running the items one by one gives the same result.
    """

    @overload
    def forward(self, x_or_x_list: Tensor, pos: Tensor | None = None) -> Tensor: ...

    @overload
    def forward(self, x_or_x_list: list[Tensor], pos: None = None) -> list[Tensor]: ...

    def forward(self, x_or_x_list: Tensor | list[Tensor], pos: Tensor | None = None) -> Tensor | list[Tensor]:
        """A tensor as :meth:`Block.forward`; a list of tensors (no positions) item by item."""
        if isinstance(x_or_x_list, Tensor):
            return super().forward(x_or_x_list, pos=pos)
        if isinstance(x_or_x_list, (list, tuple)):
            if pos is not None:
                raise ValueError("NestedTensorBlock takes no positions with a list input; pass pos=None")
            return [super(NestedTensorBlock, self).forward(t) for t in x_or_x_list]
        raise TypeError(f"expected a Tensor or a list of Tensors, got {type(x_or_x_list).__name__}")
