"""Multi-head self-attention with a fused QKV projection, DINOv3's masked K bias, optional QK norm and RoPE.

One attention class serves the DINOv3 ViT and the VGGT Aggregator (``vggt_compat`` wraps it with VGGT's
signature). Positional rotation is passed per call:

- a ``(sin, cos)`` pair of ``[N_patch, head_dim]`` tables (DINOv3): applied in the tables' dtype (float32) to the
  last ``N_patch`` tokens only, leaving the prefix (CLS + storage tokens) untouched;
- a callable ``rope(q, k) -> (q, k)`` (VGGT's 2D RoPE with explicit positions).

Fast path (eager, no autograd): with ``(sin, cos)`` tables and gradients disabled, q and k are rotated *in place* in
the freshly computed ``qkv`` buffer (:func:`~dinov3_integration.layers.rope.rope_apply_`), so no prefix/patch
concatenation, no rotate-half concatenation and no copies are made; q, k and v stay strided views of ``qkv``, which
SDPA reads directly and whose ``[B, N, h, d]`` output layout makes the final reshape free. The result is bit-identical
to the out-of-place path (see ``rope_apply_``); measured in benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import workspace
from .rope import rope_apply, rope_apply_, rope_apply_swapped
from .workspace import _in_place_ok

RopeArg = tuple[Tensor, Tensor] | Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None


def _widens(dtype: torch.dtype, table_dtype: torch.dtype) -> bool:
    """True when rotating ``dtype`` activations in ``table_dtype`` rounds nothing but the rotated rows.

    The out-of-place path casts the whole q/k (prefix included) to the tables' dtype and back: an exact round trip
    when the tables are at least as wide (float32 tables, float32/bfloat16/float16 activations), a rounding of the
    prefix otherwise (float32 activations with bfloat16 tables), which the in-place path would not reproduce.
    """
    return torch.promote_types(dtype, table_dtype) == table_dtype


def _recheck_bias_after_load(module: LinearKMaskedBias, incompatible_keys: object) -> None:
    module._check_bias_vanishes()  # a module-level function (not a lambda): modules stay picklable


class LinearKMaskedBias(nn.Linear):
    """A ``Linear(D, 3D)`` whose bias is multiplied by the persistent buffer ``bias_mask`` on every call.

    The intended mask is 1 for the q and v thirds and 0 for the k third (the key bias is redundant under
    softmax). The released checkpoints store the mask (all zeros), so it is loaded, never assumed.

    With gradients disabled, a bias that the mask zeroes entirely (every released checkpoint) is not added at all:
    the product is then ``x @ W.T`` (``mm``), the same numbers as adding zeros, minus a pass over the ``[..., 3D]``
    output (measured: compiled bfloat16 ViT-B/16 5 % faster). In eager calls the test is that ``bias * bias_mask``
    is all zeros, redone whenever either tensor has changed (version counters). Under ``torch.compile`` the test is
    that ``bias_mask`` is all zeros as last seen by an eager call, ``load_state_dict`` or :meth:`reset_bias_mask`
    (the mask is a buffer, never trained; after editing it in place by hand, call the module once in eager).
    """

    _bias_vanishes: bool = False  # bias * bias_mask == 0 everywhere, as last checked
    _bias_vanishes_key: tuple | None = None  # (data pointers, versions) of bias and bias_mask at that check
    _mask_is_zero: bool = False  # bias_mask == 0 everywhere, as last checked (what torch.compile traces)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if out_features % 3 != 0:
            raise ValueError(f"LinearKMaskedBias needs out_features divisible by 3, got {out_features}")
        if self.bias is not None:
            self.register_buffer("bias_mask", torch.ones_like(self.bias))
            self.reset_bias_mask()
        else:
            self.bias_mask = None
        self.register_load_state_dict_post_hook(_recheck_bias_after_load)

    def reset_bias_mask(self) -> None:
        """Set the mask to ``[1 (q), 0 (k), 1 (v)]``."""
        if self.bias_mask is None or self.bias_mask.device.type == "meta":
            return
        o = self.out_features
        with torch.no_grad():
            self.bias_mask.fill_(1)
            self.bias_mask[o // 3 : 2 * o // 3].fill_(0)
        self._check_bias_vanishes()

    def masked_bias(self) -> Tensor | None:
        """``bias * bias_mask`` (``[out_features]``), or None without a bias."""
        return self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None

    def _check_bias_vanishes(self) -> bool:
        """Whether ``bias * bias_mask`` is all zeros, recomputed only when either tensor has changed."""
        bias, mask = self.bias, self.bias_mask
        if (
            bias is None
            or mask is None
            or bias.device.type == "meta"
            or mask.device.type == "meta"
            or torch.is_inference(bias)  # inference tensors have no version counter: never skip
            or torch.is_inference(mask)
        ):
            self._bias_vanishes, self._mask_is_zero, self._bias_vanishes_key = False, False, None
            return False
        key = (bias.data_ptr(), bias._version, mask.data_ptr(), mask._version)
        if key != self._bias_vanishes_key:
            with torch.no_grad():
                self._mask_is_zero = not bool(mask.any())
                self._bias_vanishes = bool((self.masked_bias() == 0).all())  # NaN/inf * 0 is not zero: kept
            self._bias_vanishes_key = key
        return self._bias_vanishes

    def effective_bias(self) -> Tensor | None:
        """The bias to add: :meth:`masked_bias`, or None when gradients are off and it is all zeros."""
        if self.bias is None or torch.is_grad_enabled():
            return self.masked_bias()
        vanishes = self._mask_is_zero if torch.compiler.is_compiling() else self._check_bias_vanishes()
        return None if vanishes else self.masked_bias()

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.effective_bias())


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

    def compute_attention(self, x: Tensor, rope: RopeArg = None) -> Tensor:
        """Attention without the output projection: ``[B, N, D] -> [B, N, D]``."""
        B, N, C = x.shape
        # Eager inference: rotate q and k in place (see the module docstring). Not under torch.compile
        # (_in_place_ok is False there): functionalising in-place updates of qkv views measured 1.6x slower
        # (compiled ViT-S/16) than the out-of-place path, which inductor fuses into one kernel anyway.
        fast = _in_place_ok(self.qkv, self.q_norm, self.k_norm)  # a hook may hold qkv, q or k
        qkv = self._qkv_into_workspace(x) if fast else self.qkv(x)
        qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, h, d]
        in_place = fast and isinstance(rope, tuple) and _widens(qkv.dtype, rope[0].dtype)
        no_qk_norm = isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity)
        if in_place and no_qk_norm:
            # q and k rotated together, as one [B, N_patch, 2, h, d] view of qkv: half the kernel launches of two
            # separate rotations (measured 2.4 -> 2.0 ms per ViT-S/16 block at 224, batch 8).
            sin, cos = rope
            prefix = N - sin.shape[-2]
            if prefix < 0:
                raise ValueError(f"RoPE tables cover {sin.shape[-2]} tokens but the sequence has only {N}")
            sin, cos = sin[:, None, None, :], cos[:, None, None, :]
            if qkv.dtype == sin.dtype:
                rope_apply_(qkv[:, prefix:, :2], sin, cos, scratch=self._rope_scratch(qkv, prefix))
            else:  # bfloat16 q/k, float32 tables: one at a time halves the float32 temporaries (peak memory)
                rope_apply_(qkv[:, prefix:, :1], sin, cos)
                rope_apply_(qkv[:, prefix:, 1:2], sin, cos)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))  # each [B, h, N, d], views of qkv
        q, k = self.q_norm(q), self.k_norm(k)
        if in_place and not no_qk_norm:
            self.apply_rope_(q, k, rope)  # the fresh q_norm / k_norm outputs
        elif not in_place:
            q, k = self.apply_rope(q, k, rope)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        return x.transpose(1, 2).reshape(B, N, C)

    def _qkv_into_workspace(self, x: Tensor) -> Tensor:
        """``self.qkv(x)``, written into the active workspace's ``"wide"`` buffer when that is exact (eager inference)."""
        ws = workspace.active_workspace()
        if ws is not None and type(self.qkv) in (nn.Linear, LinearKMaskedBias):
            bias = self.qkv.effective_bias() if type(self.qkv) is LinearKMaskedBias else self.qkv.bias
            if workspace.can_write_into(x, self.qkv.weight, bias):
                # Room for qkv and, after it, one rotation temporary (see _rope_scratch), so that the buffer never
                # grows while qkv is in use (which would briefly hold both the old and the new buffer).
                rows = x.numel() // x.shape[-1]
                ws.reserve("wide", rows * (self.qkv.weight.shape[0] + x.shape[-1]), x)
                return workspace.linear_into(ws, x, self.qkv.weight, bias, "wide")
        return self.qkv(x)

    @staticmethod
    def _rope_scratch(qkv: Tensor, prefix: int) -> tuple[Tensor, Tensor] | None:
        """Inside a workspace: room for the two temporaries of rotating ``qkv[:, prefix:, :2]`` (``[B, N, 3, h, d]``).

        Both are ``[B, N - prefix, 2, h, d / 2]``: one in the ``"branch"`` buffer (free until ``proj`` runs), one in
        the ``"wide"`` buffer after ``qkv``'s elements (free until the MLP's hidden activation is written there).
        """
        ws = workspace.active_workspace()
        if ws is None:
            return None
        B, N, _, h, d = qkv.shape
        shape = (B, N - prefix, 2, h, d // 2)
        ws.reserve("branch", B * N * h * d, qkv)  # sized for proj's output right away (it comes next)
        return ws.buffer("branch", shape, qkv), ws.buffer("wide", shape, qkv, offset=qkv.numel())

    def forward(self, x: Tensor, attn_bias: None = None, rope: RopeArg = None) -> Tensor:
        """``[B, N, D] -> [B, N, D]``. ``attn_bias`` exists for reference-signature compatibility and must be None.

        Inside a ViT forward's workspace (eager inference) the result is the workspace's ``"branch"`` buffer.
        """
        if attn_bias is not None:
            raise NotImplementedError("attention biases/masks are not supported; pass attn_bias=None")
        x = self.compute_attention(x, rope=rope)
        x = workspace.linear(self.proj, x, "branch") if _in_place_ok(self.proj) else self.proj(x)
        return self.proj_drop(x)
