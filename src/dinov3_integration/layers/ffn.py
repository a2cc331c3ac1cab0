"""Feed-forward layers: the GELU MLP and DINOv3's SwiGLU.

Inference fast path (eager, gradients disabled, no hooks): the activation runs in place on the hidden tensor
(``gelu_`` / ``silu_`` and ``mul_`` for the SwiGLU gate), saving one ``[..., hidden]`` allocation (the largest
activation of a block) per call, and inside the ViT's forward the linear layers write into its workspace (one buffer
per role for all blocks, see :mod:`.workspace`); results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import workspace
from .workspace import _in_place_ok


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` on ``[..., in_features] -> [..., out_features]`` (exact GELU by default)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
        device=None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, device=device)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, device=device)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if type(self.act) is nn.GELU and _in_place_ok(self):
            # The hidden activation and the output in the forward's workspace when one is active (one buffer each
            # for all blocks), otherwise fresh; GELU in place on it either way.
            x = workspace.linear(self.fc1, x, "wide")
            x = self.drop(torch._C._nn.gelu_(x, approximate=self.act.approximate))
            return self.drop(workspace.linear(self.fc2, x, "branch"))
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        x = self.drop(x)
        return x


def swiglu_hidden_features(hidden_features: int, align_to: int = 8) -> int:
    """DINOv3's SwiGLU width: ``d = int(hidden * 2 / 3)`` rounded up to a multiple of ``align_to``.

    >>> swiglu_hidden_features(2304, 8), swiglu_hidden_features(12288, 64)
    (1536, 8192)
    """
    d = int(hidden_features * 2 / 3)
    return d + (-d % align_to)


class SwiGLUFFN(nn.Module):
    """``w3(silu(w1(x)) * w2(x))`` on ``[..., in_features] -> [..., out_features]``.

    ``w1`` is the gate, ``w2`` the up projection and ``w3`` the down projection (reference key names).
    The hidden width follows :func:`swiglu_hidden_features` (``align_to`` 8/32/64/128 for the reference
    ``swiglu``/``swiglu32``/``swiglu64``/``swiglu128`` names). ``act_layer`` and ``drop`` are accepted for
    signature compatibility and ignored, as in the reference.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
        align_to: int = 8,
        device=None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = swiglu_hidden_features(hidden_features or in_features, align_to)
        self.hidden_features = hidden_features
        self.w1 = nn.Linear(in_features, hidden_features, bias=bias, device=device)
        self.w2 = nn.Linear(in_features, hidden_features, bias=bias, device=device)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias, device=device)

    def forward(self, x: Tensor) -> Tensor:
        if _in_place_ok(self):
            # In place on the w1 output (fresh, or the workspace's buffer): silu_(w1 x) * (w2 x), the same products.
            gate = F.silu(workspace.linear(self.w1, x, "wide"), inplace=True)
            gate = gate.mul_(workspace.linear(self.w2, x, "wide2"))
            return workspace.linear(self.w3, gate, "branch")
        return self.w3(F.silu(self.w1(x)) * self.w2(x))
