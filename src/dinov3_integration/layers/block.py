"""Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

The reference code runs unless :func:`~dinov3_integration.layers.fastpath.decide` allows the eager inference fast
path (:meth:`SelfAttentionBlock._forward_fast`): the LayerScale multiply and the residual add are done in place
(:func:`~dinov3_integration.layers.fastpath.add_residual_`: in the fresh branch output, or inside a ViT forward into
the residual stream the workspace owns) instead of allocating two new ``[B, N, D]`` tensors per branch. Products and
sums are the same IEEE operations (``x + b * g`` and ``b * g + x`` are bitwise equal), so outputs are bit-identical;
measured in benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import fastpath
from .attention import RopeArg, SelfAttention
from .fastpath import Plan
from .ffn import Mlp, SwiGLUFFN
from .layer_scale import LayerScale


class SelfAttentionBlock(nn.Module):
    """DINOv3's transformer block on ``[B, N, D] -> [B, N, D]``.

    Keys: ``norm1``, ``attn.*``, ``ls1.gamma``, ``norm2``, ``mlp.*``, ``ls2.gamma`` (LayerScale keys exist only
    when ``init_values`` is truthy). In training with ``drop_path > 0`` whole samples skip a residual branch by
    batch subsetting, at every rate and in the reference's random-number order (:meth:`_forward_list_drop`).

    Args:
        dim, num_heads: width and heads.
        ffn_ratio: FFN hidden width is ``int(dim * ffn_ratio)`` (before SwiGLU's own rounding).
        qkv_bias, proj_bias, ffn_bias: biases.
        drop, attn_drop: dropout rates.
        init_values: LayerScale init (None or 0: no LayerScale).
        drop_path: stochastic depth rate.
        act_layer, norm_layer: activation and norm classes.
        attn_class, ffn_layer: classes of the attention and FFN modules.
        mask_k_bias, qk_norm: forwarded to the attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = SelfAttention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        mask_k_bias: bool = False,
        qk_norm: bool = False,
        device=None,
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
            mask_k_bias=mask_k_bias,
            qk_norm=qk_norm,
            device=device,
        )
        self.ls1 = LayerScale(dim, init_values=init_values, device=device) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * ffn_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
            device=device,
        )
        self.ls2 = LayerScale(dim, init_values=init_values, device=device) if init_values else nn.Identity()
        self.sample_drop_ratio = drop_path

    def _attn_residual(self, x: Tensor, rope: RopeArg) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), rope=rope))

    def _ffn_residual(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(
        self,
        x_or_x_list: Tensor | list[Tensor],
        rope_or_rope_list: RopeArg | list[RopeArg] = None,
        *,
        rope: RopeArg | list[RopeArg] = None,
    ) -> Tensor | list[Tensor]:
        """``[B, N, D] -> [B, N, D]``, or a list of such tensors (crops of different sizes) -> a list.

        The reference's call pattern: ``block(x, rope)`` or ``block(x_list, rope_list)`` (``rope_list`` None: no
        RoPE for any item; a single ``(sin, cos)`` pair is used for every item). ``rope=`` is the keyword of the
        earlier ``forward(x, rope)`` signature and still accepted. In training with ``drop_path > 0`` a random
        subset of each batch gets each residual branch (:meth:`_forward_list_drop`), as the reference.
        """
        if rope is not None:
            if rope_or_rope_list is not None:
                raise TypeError("pass the RoPE tables once: positionally (reference) or as rope=, not both")
            rope_or_rope_list = rope
        drop = self.training and self.sample_drop_ratio > 0.0
        if isinstance(x_or_x_list, Tensor):
            if drop:  # as the reference: a single tensor goes through the list path
                return self._forward_list_drop([x_or_x_list], [rope_or_rope_list])[0]
            return self._forward(x_or_x_list, rope_or_rope_list)
        if not isinstance(x_or_x_list, list):
            raise TypeError(f"expected a [B, N, D] tensor or a list of them, got {type(x_or_x_list).__name__}")
        n = len(x_or_x_list)
        ropes = rope_or_rope_list if isinstance(rope_or_rope_list, list) else [rope_or_rope_list] * n
        if len(ropes) != n:
            raise ValueError(f"got {n} token tensors but {len(ropes)} RoPE entries; pass one per tensor (or None)")
        if drop:
            return self._forward_list_drop(x_or_x_list, ropes)
        return [self._forward(t, r) for t, r in zip(x_or_x_list, ropes)]

    def _forward(self, x: Tensor, rope: RopeArg) -> Tensor:
        """One tensor without stochastic depth (eval, or ``drop_path == 0``), with the inference fast paths."""
        plan = fastpath.decide(self)
        if plan.fast:
            return self._forward_fast(x, rope, plan)
        x = x + self._attn_residual(x, rope)
        return x + self._ffn_residual(x)

    def _forward_fast(self, x: Tensor, rope: RopeArg, plan: Plan) -> Tensor:
        """:meth:`_forward` in eager inference (eval): LayerScale and residual adds in place, the same numbers.

        A branch output is overwritten only when it comes from a module of a known type (its output is fresh).
        """
        branch = self.attn(self.norm1(x), rope=rope)
        x = fastpath.add_residual_(plan, x, branch, self.ls1, fastpath.exact(self.attn, SelfAttention))
        branch = self.mlp(self.norm2(x))
        return fastpath.add_residual_(plan, x, branch, self.ls2, fastpath.exact(self.mlp, Mlp, SwiGLUFFN))

    def _forward_list_drop(self, x_list: list[Tensor], rope_list: list[RopeArg]) -> list[Tensor]:
        """Training-time stochastic depth, the reference's batch-subset scheme and random-number order.

        Each residual branch runs on ``max(int(B * (1 - drop_path)), 1)`` samples of each ``[B, N, D]`` tensor,
        picked by ``torch.randperm(B)``, and is added back (``index_add``) scaled by ``B / subset``; the other
        samples skip it. The permutations are drawn as the reference draws them: one per tensor of the list for
        the attention branch, then (after every attention branch) one per tensor for the FFN branch. The
        reference runs the norms and linear layers of the list on the concatenated tokens; here they run per
        tensor (the same operations per token, equal to float rounding).
        """
        subsets = [max(int(x.shape[0] * (1 - self.sample_drop_ratio)), 1) for x in x_list]
        idx = [torch.randperm(x.shape[0], device=x.device)[:s] for x, s in zip(x_list, subsets)]
        branch = [self._attn_residual(x[i], _index_rope(r, i)) for x, i, r in zip(x_list, idx, rope_list)]
        x_list = [_index_add_scaled(x, i, b, s) for x, i, b, s in zip(x_list, idx, branch, subsets)]
        idx = [torch.randperm(x.shape[0], device=x.device)[:s] for x, s in zip(x_list, subsets)]
        branch = [self._ffn_residual(x[i]) for x, i in zip(x_list, idx)]
        return [_index_add_scaled(x, i, b, s) for x, i, b, s in zip(x_list, idx, branch, subsets)]


def _index_rope(rope: RopeArg, indices: Tensor) -> RopeArg:
    """The RoPE tables of a batch subset: per-sample tables (``[B, ...]``, 4-D) are indexed, shared ones are not."""
    if isinstance(rope, tuple) and rope[0].ndim == 4:
        return rope[0][indices], rope[1][indices]
    return rope


def _index_add_scaled(x: Tensor, indices: Tensor, branch: Tensor, subset: int) -> Tensor:
    """``x`` with ``branch * (B / subset)`` added to the samples ``indices`` (``[B, N, D]``, branch ``[subset, N, D]``)."""
    return torch.index_add(x, 0, indices, branch.to(x.dtype), alpha=x.shape[0] / subset)
