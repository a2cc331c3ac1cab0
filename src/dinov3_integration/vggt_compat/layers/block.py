"""VGGT's ``vggt.layers.block``: the pre-norm transformer ``Block`` with positions, and ``NestedTensorBlock``.

``Block`` subclasses the shared :class:`dinov3_integration.layers.SelfAttentionBlock` (same submodules and keys:
``norm1``, ``attn.*``, ``ls1.gamma``, ``norm2``, ``mlp.*``, ``ls2.gamma``) with VGGT's constructor signature and
``forward(x, pos=None)``: ``x = x + ls1(attn(norm1(x), pos))`` then ``x = x + ls2(mlp(norm2(x)))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...layers.block import SelfAttentionBlock
from .attention import XFORMERS_AVAILABLE, Attention
from .drop_path import DropPath
from .mlp import Mlp

__all__ = ["Block", "NestedTensorBlock", "XFORMERS_AVAILABLE", "drop_add_residual_stochastic_depth"]


class Block(SelfAttentionBlock):
    """Transformer block on ``[B, N, C] -> [B, N, C]`` with VGGT's arguments.

    Args:
        dim, num_heads: width and heads.
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``.
        qkv_bias, proj_bias, ffn_bias: biases.
        drop, attn_drop: dropout rates (``drop`` for the attention output and the MLP).
        init_values: LayerScale init (None or 0: no LayerScale, ``ls1``/``ls2`` are identities).
        drop_path: stochastic depth rate (batch subsetting above 0.1 in training, as VGGT).
        act_layer, norm_layer: MLP activation and block norm classes (``nn.LayerNorm``: eps 1e-5).
        attn_class: attention class, called with VGGT's keyword arguments (``qk_norm``, ``fused_attn``, ``rope``).
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
        def build_attn(
            dim: int, *, num_heads: int, qkv_bias: bool, proj_bias: bool, attn_drop: float, proj_drop: float,
            qk_norm: bool, **_shared_only: Any,
        ) -> nn.Module:  # fmt: skip
            return attn_class(
                dim,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                attn_drop=attn_drop,
                proj_drop=proj_drop,
                qk_norm=qk_norm,
                fused_attn=fused_attn,
                rope=rope,
            )

        def build_ffn(
            *, in_features: int, hidden_features: int, act_layer: Callable[..., nn.Module], drop: float, bias: bool,
            **_shared_only: Any,
        ) -> nn.Module:  # fmt: skip
            return ffn_layer(
                in_features=in_features, hidden_features=hidden_features, act_layer=act_layer, drop=drop, bias=bias
            )

        super().__init__(
            dim,
            num_heads,
            ffn_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            ffn_bias=ffn_bias,
            drop=drop,
            attn_drop=attn_drop,
            init_values=init_values,
            drop_path=drop_path,
            act_layer=act_layer,
            norm_layer=norm_layer,
            attn_class=build_attn,
            ffn_layer=build_ffn,
            qk_norm=qk_norm,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _attn_residual(self, x: Tensor, pos: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.ls1(self.attn(self.norm1(x), pos=pos))

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``[B, N, C] -> [B, N, C]``; ``pos`` is ``[B, N, 2]`` (or None) and reaches the attention's rope."""
        if self.training and self.sample_drop_ratio > 0.1:
            x = drop_add_residual_stochastic_depth(x, self._attn_residual, self.sample_drop_ratio, pos=pos)
            return drop_add_residual_stochastic_depth(x, self._ffn_residual, self.sample_drop_ratio)
        x = x + self.drop_path1(self._attn_residual(x, pos=pos))
        return x + self.drop_path2(self._ffn_residual(x))


def drop_add_residual_stochastic_depth(
    x: Tensor,
    residual_func: Callable[..., Tensor],
    sample_drop_ratio: float = 0.0,
    pos: Tensor | None = None,
) -> Tensor:
    """Apply ``residual_func`` to a random subset of the batch of ``x`` (``[B, N, C]``) and add it back, scaled.

    A fraction ``1 - sample_drop_ratio`` of the samples (at least one) gets ``residual * B / subset``; the others
    are unchanged. ``pos`` (``[B, N, 2]``), when given, is subset the same way and passed as ``pos=``.
    """
    b = x.shape[0]
    subset = max(int(b * (1 - sample_drop_ratio)), 1)
    brange = torch.randperm(b, device=x.device)[:subset]
    if pos is not None:
        residual = residual_func(x[brange], pos=pos[brange])
    else:
        residual = residual_func(x[brange])
    scale = b / subset
    out = torch.index_add(x.flatten(1), 0, brange, residual.to(dtype=x.dtype).flatten(1), alpha=scale)
    return out.view_as(x)


class NestedTensorBlock(Block):
    """:class:`Block` that also takes a list of ``[B_i, N_i, C]`` tensors (each processed on its own).

    VGGT's list path needs xFormers' block-diagonal masks; running the items one by one gives the same result.
    """

    def forward(self, x_or_x_list: Tensor | list[Tensor], pos: Tensor | None = None) -> Tensor | list[Tensor]:  # type: ignore[override]
        if isinstance(x_or_x_list, Tensor):
            return super().forward(x_or_x_list, pos=pos)
        if isinstance(x_or_x_list, (list, tuple)):
            if pos is not None:
                raise ValueError("NestedTensorBlock takes no positions with a list input; pass pos=None")
            return [super(NestedTensorBlock, self).forward(t) for t in x_or_x_list]
        raise TypeError(f"expected a Tensor or a list of Tensors, got {type(x_or_x_list).__name__}")
