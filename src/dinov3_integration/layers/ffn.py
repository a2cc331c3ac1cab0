"""Feed-forward layers: the GELU MLP and DINOv3's SwiGLU.

Inference fast path (eager, gradients disabled, no hooks): the activation runs in place on the hidden tensor (``gelu_`` / ``silu_``
and ``mul_`` for the SwiGLU gate), saving one ``[..., hidden]`` allocation (the largest activation of a block) per
call with bit-identical results.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _in_place_ok(*modules: nn.Module) -> bool:
    """Whether the eager inference fast paths may overwrite fresh outputs of ``modules``.

    True when gradients are disabled, no ``torch.compile`` tracing is under way (inductor plans its own buffers, and
    the plain code, traced as is, compiles to the same or faster kernels with fewer guards) and no forward hook could
    be holding one of those outputs.
    """
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not _forward_hooked(*modules)


def _forward_hooked(*modules: nn.Module) -> bool:
    """Whether a forward (pre-)hook could see an output of ``modules`` or their submodules (or a global hook is set).

    The in-place fast paths overwrite fresh outputs; a hook may hold such an output (feature extraction), so the
    fast paths step aside when any hook is registered.
    """
    from torch.nn.modules import module as module_lib

    if module_lib._global_forward_hooks or module_lib._global_forward_pre_hooks:
        return True
    stack = list(modules)  # a plain walk: ~3x cheaper than Module.modules(), and this runs per block call
    while stack:
        m = stack.pop()
        if m._forward_hooks or m._forward_pre_hooks:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


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
        x = self.fc1(x)
        if type(self.act) is nn.GELU and _in_place_ok(self.fc1, self.act):
            x = torch._C._nn.gelu_(x, approximate=self.act.approximate)  # in place on the fresh fc1 output
        else:
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
        if _in_place_ok(self.w1):
            # In place on the fresh w1 output: silu_(w1 x) * (w2 x), the same products as below.
            return self.w3(F.silu(self.w1(x), inplace=True).mul_(self.w2(x)))
        return self.w3(F.silu(self.w1(x)) * self.w2(x))
