"""DINOv3's axial rotary position embedding (RoPE) for the patch grid.

The module holds one persistent buffer, ``periods`` (``[head_dim // 4]``), and turns a patch grid ``(H, W)`` into
``(sin, cos)`` tables of shape ``[H * W, head_dim]`` laid out as ``[y | x | y | x]`` (each block ``head_dim // 4``
wide). Coordinates are patch centres in ``(-1, 1)``; ``angles = 2 * pi * coords / periods`` (a division, as in the
reference). Tables are computed in ``dtype`` (float32 for every released model), on every call: nothing is cached
(a cache keyed on ``periods`` would be bypassed by ``.data`` writes; the ViT fetches the tables once per forward in
eval, and computing them costs ~0.1-0.4 ms at 224x224, ~3 ms at 1024x1024 on a CPU: benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from torch import Tensor, nn

RopeTables = tuple[Tensor, Tensor]  # (sin, cos), each [H*W, head_dim]

ROPE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rope_rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim (the NeoX / rotate-half pairing: f with f + d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate ``x`` (``[..., N, d]``) by the tables ``sin``/``cos`` (``[N, d]``)."""
    return (x * cos) + (rope_rotate_half(x) * sin)


def rope_apply_swapped(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """:func:`rope_apply` without concatenations (bit-identical), the form used under ``torch.compile``.

    With ``x`` viewed as ``[..., 2, d/2]`` (rows ``x1``, ``x2``), ``rotate_half(x) * sin`` is
    ``flip(x) * [-s1; s2]`` (``(-x2) * s1`` is exactly ``x2 * (-s1)``). Inductor turns the flip into plain index
    arithmetic on the size-2 dimension and fuses everything into one vectorised kernel, where the ``torch.cat`` of
    ``rope_rotate_half`` made it materialise both halves first (measured, compiled bfloat16 ViT-S/16 at 224, batch 8:
    RoPE kernels 1.15 -> 0.45 ms per block).
    """
    half = x.shape[-1] // 2
    xv = x.unflatten(-1, (2, half))  # [..., N, 2, d/2]
    sin_signed = torch.stack((-sin[..., :half], sin[..., half:]), dim=-2)  # [N, 2, d/2]
    return (xv * cos.unflatten(-1, (2, half)) + xv.flip(-2) * sin_signed).flatten(-2)


def rope_apply_(x: Tensor, sin: Tensor, cos: Tensor, scratch: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """In-place :func:`rope_apply`: overwrite ``x`` (``[..., N, d]``, any strides) with its rotation; returns ``x``.

    With halves ``x = [x1 | x2]``, ``rope_apply`` computes ``[x1 c1 + (-x2) s1 | x2 c2 + x1 s2]``. Here the same
    products are formed (``-x2 * s1`` is exactly ``-(x2 * s1)`` and ``a + (-b)`` is exactly ``a - b`` in IEEE
    arithmetic), so the result is bit-identical, but without the two concatenations and with two half-size
    temporaries instead of five full-size ones. When ``x`` has a narrower float dtype than the tables (bfloat16
    activations, float32 tables) every product is formed in the tables' dtype and the result rounded back into ``x``,
    exactly as ``x.to(sin.dtype)`` -> ``rope_apply`` -> ``.to(x.dtype)``. ``scratch``: two tensors of the shape of
    a half of ``x`` (``[..., N, d/2]``, ``x``'s dtype, sharing no memory with ``x``) to hold the two temporaries of the
    same-dtype case instead of fresh allocations. Not for tensors autograd needs.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if x.dtype != sin.dtype:
        if torch.promote_types(x.dtype, sin.dtype) != sin.dtype:
            raise ValueError(f"rope_apply_ cannot rotate {x.dtype} with lower-precision {sin.dtype} tables in place")
        # Mixed dtypes: each product is formed in the tables' dtype (type promotion upcasts x exactly), and the
        # two new halves are rounded back into x at the end; three half-size temporaries at most, no full copy.
        x1_s2 = x1 * sin[..., half:]
        new1 = (x1 * cos[..., :half]).sub_(x2 * sin[..., :half])
        new2 = (x2 * cos[..., half:]).add_(x1_s2)
        del x1_s2
        x1.copy_(new1)
        x2.copy_(new2)
        return x
    if scratch is not None:
        x1_s2 = torch.mul(x1, sin[..., half:], out=scratch[0])
        x2_s1 = torch.mul(x2, sin[..., :half], out=scratch[1])
    else:
        x1_s2 = x1 * sin[..., half:]
        x2_s1 = x2 * sin[..., :half]
    x1.mul_(cos[..., :half]).sub_(x2_s1)
    x2.mul_(cos[..., half:]).add_(x1_s2)
    return x


def rope_periods(
    head_dim: int,
    base: float | None = 100.0,
    *,
    min_period: float | None = None,
    max_period: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DINOv3's RoPE periods, ``[head_dim // 4]`` in ``dtype``: the one copy of the formula.

    With ``base``: ``periods[j] = base ** (4 j / head_dim)``; with ``min_period``/``max_period`` (and no base): a
    geometric ramp from ``min_period`` to ``max_period``. Computed in ``dtype`` (the reference computes them in the
    buffer's dtype; the released checkpoints hold bfloat16-rounded values).
    """
    n = head_dim // 4
    if base is not None:
        return base ** (2 * torch.arange(n, device=device, dtype=dtype) / (head_dim // 2))
    if min_period is None or max_period is None:
        raise ValueError("RoPE periods need either `base` or both `min_period` and `max_period`")
    ratio = max_period / min_period
    periods = ratio ** torch.linspace(0, 1, n, device=device, dtype=dtype)
    return periods / ratio * max_period


class RopePositionEmbedding(nn.Module):
    """Axial 2D RoPE tables for DINOv3.

    Args:
        embed_dim: model width ``D``; ``D`` must be divisible by ``4 * num_heads``.
        num_heads: attention heads (``head_dim = D // num_heads``).
        base: period base (``periods[j] = base ** (4 j / head_dim)``); give either ``base`` or both
            ``min_period`` and ``max_period``.
        normalize_coords: ``"separate"`` (each axis to (-1, 1)), ``"max"`` or ``"min"`` (both axes by the
            larger / smaller side, keeping the aspect ratio).
        shift_coords, jitter_coords, rescale_coords: training-time augmentations (only in ``.train()`` mode).
        dtype: dtype of the periods buffer and of the tables (the reference constructor defaults to bfloat16;
            every released model uses float32 tables with bfloat16-rounded periods stored in the checkpoint).
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        num_heads: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: Literal["min", "max", "separate"] = "separate",
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % (4 * num_heads) != 0:
            raise ValueError(
                f"RoPE needs embed_dim divisible by 4 * num_heads; got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        both_periods = min_period is not None and max_period is not None
        if (base is None and not both_periods) or (base is not None and both_periods):
            raise ValueError("RoPE needs either `base` or both `min_period` and `max_period`, not both or neither")
        if normalize_coords not in ("min", "max", "separate"):
            raise ValueError(f"normalize_coords must be 'min', 'max' or 'separate', got {normalize_coords!r}")
        self.base = base
        self.min_period = min_period
        self.max_period = max_period
        self.D_head = embed_dim // num_heads
        self.normalize_coords = normalize_coords
        self.shift_coords = shift_coords
        self.jitter_coords = jitter_coords
        self.rescale_coords = rescale_coords
        self.dtype = dtype or torch.float32
        self.register_buffer("periods", torch.empty(self.D_head // 4, device=device, dtype=self.dtype), persistent=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """(Re)compute ``periods`` from ``base`` or ``min_period``/``max_period`` in the buffer's dtype."""
        device, dtype = self.periods.device, self.dtype
        if device.type == "meta":
            return
        periods = rope_periods(
            self.D_head, self.base, min_period=self.min_period, max_period=self.max_period, device=device, dtype=dtype
        )  # [D_head // 4]
        with torch.no_grad():
            self.periods.copy_(periods)

    def _coords(self, H: int, W: int) -> Tensor:
        dd = {"device": self.periods.device, "dtype": self.dtype}
        if self.normalize_coords == "max":
            denom_h = denom_w = max(H, W)
        elif self.normalize_coords == "min":
            denom_h = denom_w = min(H, W)
        else:
            denom_h, denom_w = H, W
        coords_h = torch.arange(0.5, H, **dd) / denom_h  # [H]
        coords_w = torch.arange(0.5, W, **dd) / denom_w  # [W]
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)  # [H, W, 2]
        coords = coords.flatten(0, 1)  # [HW, 2]
        coords = 2.0 * coords - 1.0
        if self.training:
            coords = self._augment(coords)
        return coords

    def _augment(self, coords: Tensor) -> Tensor:
        dd = {"device": coords.device, "dtype": coords.dtype}
        if self.shift_coords is not None:
            shift_hw = torch.empty(2, **dd).uniform_(-self.shift_coords, self.shift_coords)
            coords = coords + shift_hw[None, :]
        if self.jitter_coords is not None:
            jitter_max = math.log(self.jitter_coords)
            jitter_hw = torch.empty(2, **dd).uniform_(-jitter_max, jitter_max).exp()
            coords = coords * jitter_hw[None, :]
        if self.rescale_coords is not None:
            rescale_max = math.log(self.rescale_coords)
            rescale_hw = torch.empty(1, **dd).uniform_(-rescale_max, rescale_max).exp()
            coords = coords * rescale_hw
        return coords

    def compute(self, H: int, W: int) -> RopeTables:
        """Compute ``(sin, cos)``, each ``[H * W, head_dim]``, without the cache."""
        device_type = self.periods.device.type
        no_autocast = contextlib.nullcontext() if device_type == "meta" else torch.autocast(device_type, enabled=False)
        with no_autocast:
            coords = self._coords(H, W)  # [HW, 2]
            angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # [HW, 2, D_head // 4]
            angles = angles.flatten(1, 2)  # [HW, D_head // 2]
            angles = angles.tile(2)  # [HW, D_head]
            # One [2, HW, D_head] tensor (a copy, same values): under torch.compile the stack makes inductor
            # materialise the tables once per forward; without it, sin/cos of the coordinates were inlined and
            # recomputed for every (batch, head) element in each block's (scalar, unvectorised) RoPE kernel,
            # which made compiled bfloat16 ViT-S/16 ~20% slower than timm (measured).
            sin, cos = torch.stack((torch.sin(angles), torch.cos(angles))).unbind(0)
            return sin, cos

    def forward(self, *, H: int, W: int) -> RopeTables:
        """Return ``(sin, cos)`` for an ``H x W`` patch grid, each ``[H * W, head_dim]`` (computed on every call)."""
        return self.compute(H, W)

    def extra_repr(self) -> str:
        return f"head_dim={self.D_head}, base={self.base}, normalize_coords={self.normalize_coords!r}"
