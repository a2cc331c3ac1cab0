"""DINOv3's axial rotary position embedding (RoPE) for the patch grid.

The module holds one persistent buffer, ``periods`` (``[head_dim // 4]``), and turns a patch grid ``(H, W)`` into
``(sin, cos)`` tables of shape ``[H * W, head_dim]`` laid out as ``[y | x | y | x]`` (each block ``head_dim // 4``
wide). Coordinates are patch centres in ``(-1, 1)``; ``angles = 2 * pi * coords / periods`` (a division, as in the
reference). Tables are computed in ``dtype`` (float32 for every released model) and, in eval mode, cached per
``(H, W, device, dtype)`` so repeated calls in one forward pass (one per block) do no work.
"""

from __future__ import annotations

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
        self._cache: dict[tuple, RopeTables] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """(Re)compute ``periods`` from ``base`` or ``min_period``/``max_period`` in the buffer's dtype."""
        device, dtype = self.periods.device, self.dtype
        if device.type == "meta":
            return
        if self.base is not None:
            periods = self.base ** (
                2 * torch.arange(self.D_head // 4, device=device, dtype=dtype) / (self.D_head // 2)
            )  # [D_head // 4]
        else:
            base = self.max_period / self.min_period
            exponents = torch.linspace(0, 1, self.D_head // 4, device=device, dtype=dtype)
            periods = base**exponents
            periods = periods / base
            periods = periods * self.max_period
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
        with torch.autocast(self.periods.device.type, enabled=False):
            coords = self._coords(H, W)  # [HW, 2]
            angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # [HW, 2, D_head // 4]
            angles = angles.flatten(1, 2)  # [HW, D_head // 2]
            angles = angles.tile(2)  # [HW, D_head]
            return torch.sin(angles), torch.cos(angles)

    def forward(self, *, H: int, W: int) -> RopeTables:
        """Return ``(sin, cos)`` for an ``H x W`` patch grid, each ``[H * W, head_dim]``."""
        if self.training or torch.compiler.is_compiling() or self.periods.device.type == "meta":
            return self.compute(H, W)
        periods = self.periods
        key = (
            H,
            W,
            periods.device,
            periods.dtype,
            periods.data_ptr(),
            periods._version,
            torch.is_inference_mode_enabled(),
        )
        tables = self._cache.get(key)
        if tables is None:
            tables = self.compute(H, W)
            if len(self._cache) >= 16:
                self._cache.clear()
            self._cache[key] = tables
        return tables

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module API
        self._cache.clear()
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"head_dim={self.D_head}, base={self.base}, normalize_coords={self.normalize_coords!r}"
