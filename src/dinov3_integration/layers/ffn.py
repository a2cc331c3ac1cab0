"""Feed-forward layers: the GELU MLP and DINOv3's SwiGLU.

``forward`` runs the reference code unless :func:`~dinov3_integration.layers.fastpath.decide` allows the eager
inference fast path (``_forward_fast``, only for exactly the submodule types it knows): the activation runs in place
on the hidden tensor (GELU, or ``silu_`` and ``mul_`` for the SwiGLU gate), saving one ``[..., hidden]`` allocation
(the largest activation of a block) per call, and inside the ViT's forward the linear layers write into its
workspace (one buffer per role for all blocks, see :mod:`.workspace`); results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from . import fastpath
from .fastpath import Plan, Role


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
        plan = fastpath.decide(self)
        if plan.fast and self._fast_forward_applies():
            return self._forward_fast(x, plan)
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        x = self.drop(x)
        return x

    def _fast_forward_applies(self) -> bool:
        exact = fastpath.exact
        return exact(self.fc1, nn.Linear) and exact(self.act, nn.GELU) and exact(self.fc2, nn.Linear)

    def _forward_fast(self, x: Tensor, plan: Plan) -> Tensor:
        """:meth:`forward` in eager inference: GELU in place on the hidden activation (the workspace's ``WIDE``
        buffer inside a ViT forward, else fresh), the output in ``BRANCH`` (released by the caller)."""
        hidden = fastpath.linear(plan, self.fc1, x, Role.WIDE)
        x = self.drop(fastpath.gelu_(self.act, hidden))
        x = self.drop(fastpath.linear(plan, self.fc2, x, Role.BRANCH))
        fastpath.release(plan, hidden)
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
        plan = fastpath.decide(self)
        if plan.fast and all(fastpath.exact(w, nn.Linear) for w in (self.w1, self.w2, self.w3)):
            return self._forward_fast(x, plan)
        return self.w3(F.silu(self.w1(x)) * self.w2(x))

    def _forward_fast(self, x: Tensor, plan: Plan) -> Tensor:
        """:meth:`forward` in eager inference: ``silu_(w1 x).mul_(w2 x)`` in place (the same products), in the
        workspace's ``WIDE`` / ``WIDE2`` buffers inside a ViT forward; the output in ``BRANCH``."""
        gate = F.silu(fastpath.linear(plan, self.w1, x, Role.WIDE), inplace=True)
        up = fastpath.linear(plan, self.w2, x, Role.WIDE2)
        gate = gate.mul_(up)
        fastpath.release(plan, up)
        out = fastpath.linear(plan, self.w3, gate, Role.BRANCH)
        fastpath.release(plan, gate)
        return out
