"""Multi-head self-attention with a fused QKV projection, DINOv3's masked K bias, optional QK norm and RoPE.

One attention class serves the DINOv3 ViT and the VGGT Aggregator (``vggt_compat`` wraps it with VGGT's
signature). Positional rotation is passed per call:

- a ``(sin, cos)`` pair of ``[N_patch, head_dim]`` tables (DINOv3): applied in the tables' dtype (float32) to the
  last ``N_patch`` tokens only, leaving the prefix (CLS + storage tokens) untouched;
- a callable ``rope(q, k) -> (q, k)`` (VGGT's 2D RoPE with explicit positions).

``forward`` runs the reference code (``qkv``, :meth:`SelfAttention.compute_attention`, then ``proj``) unless
:func:`~dinov3_integration.layers.fastpath.decide` allows the eager inference fast path
(:meth:`SelfAttention._forward_fast`): with ``(sin, cos)`` tables, q and k are rotated *in place* in the freshly
computed ``qkv`` buffer (:func:`~dinov3_integration.layers.rope.rope_apply_`), so no prefix/patch concatenation, no
rotate-half concatenation and no copies are made; q, k and v stay strided views of ``qkv``, which SDPA reads
directly and whose ``[B, N, h, d]`` output layout makes the final reshape free. Bit-identical to the reference path
(see ``rope_apply_``); measured in benchmarks/README.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fastpath
from .fastpath import Plan, Role
from .linear import LinearKMaskedBias
from .norm import RMSNorm
from .rope import rope_apply, rope_apply_, rope_apply_swapped
from .workspace import Workspace

RopeArg = tuple[Tensor, Tensor] | Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None


def _widens(dtype: torch.dtype, table_dtype: torch.dtype) -> bool:
    """True when rotating ``dtype`` activations in ``table_dtype`` rounds nothing but the rotated rows.

    The out-of-place path casts the whole q/k (prefix included) to the tables' dtype and back: an exact round trip
    when the tables are at least as wide (float32 tables, float32/bfloat16/float16 activations), a rounding of the
    prefix otherwise (float32 activations with bfloat16 tables), which the in-place path would not reproduce.
    """
    return torch.promote_types(dtype, table_dtype) == table_dtype


class SelfAttention(nn.Module):
    """Self-attention on ``[B, N, D] -> [B, N, D]`` with ``F.scaled_dot_product_attention`` (default scale).

    Keys: ``qkv`` (``Linear(D, 3D)``; rows are ``[q | k | v]``, head-major inside each third), ``q_norm`` /
    ``k_norm`` (per-head norms when ``qk_norm``), ``proj``.

    Args:
        dim: model width ``D``.
        num_heads: heads ``h``; ``head_dim = D // h``.
        qkv_bias, proj_bias: biases of the projections.
        attn_drop, proj_drop: dropout rates (attention dropout only in training).
        mask_k_bias: use :class:`LinearKMaskedBias` for ``qkv`` (DINOv3).
        qk_norm: per-head LayerNorm on q and k before RoPE (VGGT's aggregator blocks).
        norm_layer: the norm class for ``qk_norm``.
        fused_attn: use SDPA (True) or the explicit softmax formula (False, for debugging).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mask_k_bias: bool = False,
        qk_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        fused_attn: bool = True,
        device=None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        linear_class = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = linear_class(dim, dim * 3, bias=qkv_bias, device=device)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def apply_rope(q: Tensor, k: Tensor, rope: RopeArg) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` and ``k`` (``[B, h, N, d]``) by ``rope`` (see the module docstring)."""
        if rope is None:
            return q, k
        if callable(rope):
            return rope(q, k)
        sin, cos = rope
        N = q.shape[-2]
        prefix = N - sin.shape[-2]
        if prefix < 0:
            raise ValueError(f"RoPE tables cover {sin.shape[-2]} tokens but the sequence has only {N}")
        # Under torch.compile the concatenation-free (bit-identical) form fuses into one vectorised kernel.
        rotate = rope_apply_swapped if torch.compiler.is_compiling() else rope_apply
        if _widens(q.dtype, sin.dtype) and _widens(k.dtype, sin.dtype):
            # Tables at least as wide as q/k (float32 tables; float32 or bfloat16 q/k): the reference's cast of the
            # whole q/k to the tables' dtype and back is exact on the prefix rows, so only the patch rows are cast.
            # Same values; under torch.compile the concatenation is then written in q/k's dtype directly instead of
            # as a float32 buffer converted afterwards (measured in benchmarks/README.md).
            q = torch.cat((q[:, :, :prefix, :], rotate(q[:, :, prefix:, :].to(sin.dtype), sin, cos).to(q.dtype)), -2)
            k = torch.cat((k[:, :, :prefix, :], rotate(k[:, :, prefix:, :].to(sin.dtype), sin, cos).to(k.dtype)), -2)
            return q, k
        q_dtype, k_dtype = q.dtype, k.dtype
        q = q.to(dtype=sin.dtype)
        k = k.to(dtype=sin.dtype)
        q = torch.cat((q[:, :, :prefix, :], rotate(q[:, :, prefix:, :], sin, cos)), dim=-2)
        k = torch.cat((k[:, :, :prefix, :], rotate(k[:, :, prefix:, :], sin, cos)), dim=-2)
        return q.to(dtype=q_dtype), k.to(dtype=k_dtype)

    @staticmethod
    def apply_rope_(q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor]) -> None:
        """In-place version of :meth:`apply_rope` for ``(sin, cos)`` tables (no autograd; bit-identical).

        ``q`` and ``k`` (``[B, h, N, d]``, any strides) must be tensors the caller owns (fresh outputs), since
        their patch rows are overwritten; the prefix rows are left untouched, as in :meth:`apply_rope`.
        """
        sin, cos = rope
        N = q.shape[-2]
        prefix = N - sin.shape[-2]
        if prefix < 0:
            raise ValueError(f"RoPE tables cover {sin.shape[-2]} tokens but the sequence has only {N}")
        rope_apply_(q[:, :, prefix:, :], sin, cos)
        rope_apply_(k[:, :, prefix:, :], sin, cos)

    def compute_attention(self, qkv: Tensor, attn_bias: None = None, rope: RopeArg = None) -> Tensor:
        """Attention between the two projections, as the reference: ``qkv`` ``[B, N, 3D]`` -> ``[B, N, D]``.

        ``qkv`` is the output of ``self.qkv`` (the reference's signature; ``proj`` is not applied). The earlier
        form ``compute_attention(x, rope)`` with the block input ``x`` ``[B, N, D]`` still works (deprecated; told
        apart by the last dimension, ``D`` vs ``3D``): ``x`` is projected by ``self.qkv`` first.
        """
        C = self.qkv.in_features
        if qkv.shape[-1] == C:  # the earlier compute_attention(x, rope=None): x not yet projected
            warnings.warn(
                "compute_attention(x) with the [B, N, D] input is deprecated: pass the projection, "
                "compute_attention(attn.qkv(x), rope=rope), as Meta's reference does",
                DeprecationWarning,
                stacklevel=2,
            )
            if attn_bias is not None and rope is None:  # the earlier second positional argument was rope
                attn_bias, rope = None, attn_bias
            qkv = self.qkv(qkv)
        if attn_bias is not None:
            raise NotImplementedError("attention biases/masks are not supported; pass attn_bias=None")
        if qkv.ndim != 3 or qkv.shape[-1] != 3 * C:
            raise ValueError(
                f"compute_attention expects qkv [B, N, {3 * C}] (the output of attn.qkv), got {tuple(qkv.shape)}"
            )
        B, N, _ = qkv.shape
        qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, h, d]
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))  # each [B, h, N, d]
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.apply_rope(q, k, rope)
        x = self._attend(q, k, v)
        return x.transpose(1, 2).reshape(B, N, C)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``softmax(q k^T / sqrt(d)) v`` on ``[B, h, N, d]``: SDPA, or the explicit formula (``fused_attn=False``)."""
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v

    def forward(self, x: Tensor, attn_bias: None = None, rope: RopeArg = None) -> Tensor:
        """``[B, N, D] -> [B, N, D]``. ``attn_bias`` exists for reference-signature compatibility and must be None."""
        if attn_bias is not None:
            raise NotImplementedError("attention biases/masks are not supported; pass attn_bias=None")
        plan = fastpath.decide(self)
        if plan.fast and self._fast_forward_applies():
            return self._forward_fast(x, rope, plan)
        x = self.compute_attention(self.qkv(x), rope=rope)
        x = self.proj(x)
        return self.proj_drop(x)

    # ------------------------------------------------------------------------------------------------ fast path
    def _fast_forward_applies(self) -> bool:
        """Whether every submodule is of a type :meth:`_forward_fast` reproduces exactly (no subclasses)."""
        return (
            fastpath.exact(self.qkv, nn.Linear, LinearKMaskedBias)
            and fastpath.exact(self.proj, nn.Linear)
            and fastpath.exact(self.q_norm, nn.Identity, nn.LayerNorm, RMSNorm)
            and fastpath.exact(self.k_norm, nn.Identity, nn.LayerNorm, RMSNorm)
            and fastpath.exact(self.proj_drop, nn.Dropout)
        )

    def _forward_fast(self, x: Tensor, rope: RopeArg, plan: Plan) -> Tensor:
        """:meth:`forward` for eager inference (``plan`` from :func:`~.fastpath.decide`): the same numbers.

        ``qkv`` (and, inside a ViT forward, the output) in workspace buffers; q and k rotated in place inside
        ``qkv`` (tables at least as wide as q/k, see :func:`_widens`). The result may be the workspace's ``BRANCH``
        buffer: the caller releases it (:func:`~.fastpath.add_residual_`).
        """
        B, N, C = x.shape
        qkv_out = fastpath.linear(plan, self.qkv, x, Role.WIDE, spare=x.numel())  # spare: see _rotate_qk_
        qkv = qkv_out.reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, h, d], a view
        in_place = isinstance(rope, tuple) and _widens(qkv.dtype, rope[0].dtype)
        no_qk_norm = fastpath.exact(self.q_norm, nn.Identity) and fastpath.exact(self.k_norm, nn.Identity)
        if in_place and no_qk_norm:
            ws = plan.workspace
            self._rotate_qk_(qkv, rope, ws if ws is not None and ws.holds(qkv_out) else None)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))  # each [B, h, N, d], views of qkv
        q, k = self.q_norm(q), self.k_norm(k)
        if in_place and not no_qk_norm:
            self.apply_rope_(q, k, rope)  # the fresh q_norm / k_norm outputs
        elif not in_place:
            q, k = self.apply_rope(q, k, rope)
        x = self._attend(q, k, v)
        fastpath.release(plan, qkv_out)  # q, k, v are dead
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(fastpath.linear(plan, self.proj, x, Role.BRANCH))

    @staticmethod
    def _rotate_qk_(qkv: Tensor, rope: tuple[Tensor, Tensor], ws: Workspace | None) -> None:
        """Rotate the patch rows of q and k in place inside ``qkv`` (``[B, N, 3, h, d]``), both as one view.

        One ``[B, N_patch, 2, h, d]`` view halves the kernel launches of two rotations (measured 2.4 -> 2.0 ms per
        ViT-S/16 block at 224, batch 8). Inside a workspace the rotation's two temporaries go where nothing lives
        now (``ws``: the workspace holding ``qkv``): the ``BRANCH`` buffer (free until ``proj``) and the spare room
        after ``qkv`` in ``WIDE``.
        """
        sin, cos = rope
        B, N, _, h, d = qkv.shape
        prefix = N - sin.shape[-2]
        if prefix < 0:
            raise ValueError(f"RoPE tables cover {sin.shape[-2]} tokens but the sequence has only {N}")
        sin, cos = sin[:, None, None, :], cos[:, None, None, :]
        if qkv.dtype != sin.dtype:  # bfloat16 q/k, float32 tables: one at a time halves the float32 temporaries
            rope_apply_(qkv[:, prefix:, :1], sin, cos)
            rope_apply_(qkv[:, prefix:, 1:2], sin, cos)
            return
        if ws is None:  # fresh temporaries
            rope_apply_(qkv[:, prefix:, :2], sin, cos)
            return
        shape = (B, N - prefix, 2, h, d // 2)
        ws.reserve(Role.BRANCH, B * N * h * d, qkv)  # sized for proj's output right away (it comes next)
        scratch = (ws.take(Role.BRANCH, shape, qkv), ws.spare(Role.WIDE, shape, qkv))
        rope_apply_(qkv[:, prefix:, :2], sin, cos, scratch=scratch)
        ws.release(scratch[0])
