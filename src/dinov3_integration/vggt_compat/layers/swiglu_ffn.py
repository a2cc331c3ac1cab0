"""VGGT's ``vggt.layers.swiglu_ffn``: the SwiGLU feed-forward with a fused ``w12`` input projection.

Key names differ from DINOv3's SwiGLU (:class:`dinov3_integration.layers.SwiGLUFFN`, keys ``w1``/``w2``/``w3``):
here the gate and up projections are one Linear, ``w12`` (``[2 * hidden, in]``, gate rows first), followed by
``w3``. The class is therefore named :class:`W12SwiGLUFFN`; ``SwiGLUFFN`` (VGGT's name) and ``SwiGLU`` are its
aliases in this package. xFormers is never used (VGGT hard-codes ``XFORMERS_AVAILABLE = False``), so
``SwiGLUFFNFused`` is the same module with the hidden width rounded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ...layers.ffn import swiglu_hidden_features

__all__ = ["SwiGLU", "SwiGLUFFN", "SwiGLUFFNFused", "W12SwiGLUFFN", "XFORMERS_AVAILABLE"]

XFORMERS_AVAILABLE = False


class W12SwiGLUFFN(nn.Module):
    """``w3(silu(x1) * x2)`` with ``[x1 | x2] = w12(x)``, on ``[..., in_features] -> [..., out_features]``.

    Args:
        in_features: input width.
        hidden_features: width of ``x1`` and ``x2`` (used as given; defaults to ``in_features``).
        out_features: output width (defaults to ``in_features``).
        act_layer, drop: accepted for VGGT signature compatibility and ignored, as in VGGT.
        bias: biases of ``w12`` and ``w3``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.hidden_features = hidden_features
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)  # each [..., hidden]
        return self.w3(F.silu(x1) * x2)


SwiGLUFFN = W12SwiGLUFFN
"""VGGT's name of :class:`W12SwiGLUFFN`."""
SwiGLU = W12SwiGLUFFN


class SwiGLUFFNFused(W12SwiGLUFFN):
    """:class:`W12SwiGLUFFN` with the hidden width ``(int(hidden * 2 / 3) + 7) // 8 * 8`` (VGGT/DINOv2 rounding).

    For ``hidden_features = 4096`` the SwiGLU width is 2736.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        out_features = out_features or in_features
        hidden_features = swiglu_hidden_features(hidden_features or in_features, align_to=8)
        super().__init__(in_features=in_features, hidden_features=hidden_features, out_features=out_features, bias=bias)
