"""Reusable buffers for the eager inference fast paths of a whole forward pass.

Every block of a ViT allocates the same large temporaries: the fused ``qkv`` product ``[B, N, 3D]``, the MLP hidden
activation ``[B, N, 4D]`` and the two branch outputs ``[B, N, D]``, and a new residual stream ``[B, N, D]`` per
branch. On a CPU each fresh allocation above glibc's mmap threshold (at most 32 MiB) is a fresh mapping whose pages
fault on first touch, and smaller ones fault too whenever glibc trims the heap between blocks: at 512x512 a ViT-S/16
forward (batch 8) took 200-300k page faults; without them it runs 1.08x as fast (benchmarks/README.md).

A :class:`Workspace` (entered by the ViT around its blocks, one per forward: ``with inference_workspace(): ...``)
gives each role one buffer that every block reuses, and lets a block add its branches into the residual stream in
place when the stream is a tensor the workspace owns (the ViT's fresh token tensor, see :meth:`Workspace.own`).
Outputs are bit-identical: ``torch.addmm(b, x, W.t(), out=buf)`` is the call ``F.linear`` makes for a contiguous
input, and ``x.add_(branch * gamma)`` adds the same two numbers as ``branch * gamma + x``.

Only the eager inference paths use it (no autograd, no ``torch.compile`` tracing, no hooks: callers check
:func:`_in_place_ok`). Linear layers write into the workspace only on the CPU, for plain ``nn.Linear`` modules
(subclasses and parametrised weights keep their own forward) and outside autocast (``out=`` variants are not
autocast); otherwise :func:`linear` is ``F.linear``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

_ACTIVE: ContextVar[Workspace | None] = ContextVar("dinov3_integration_workspace", default=None)


class Workspace:
    """One buffer per ``(role, dtype, device)``, and the tensors blocks may update in place.

    Roles used by the layers: ``"wide"`` (the ``qkv`` product, then the MLP hidden activation: never needed at the
    same time, so they share memory), ``"wide2"`` (SwiGLU's second hidden tensor), ``"branch"`` (the projections
    back to ``D``: the attention's ``proj``, then the FFN's output). The in-place RoPE rotation's two temporaries go
    where nothing lives at that moment: the ``"branch"`` buffer and the part of ``"wide"`` after ``qkv``.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}
        self._owned: dict[int, Tensor] = {}  # by id; the reference keeps the id from being reused

    def buffer(self, role: str, shape: tuple[int, ...], like: Tensor, offset: int = 0) -> Tensor:
        """An uninitialised contiguous ``shape`` tensor with ``like``'s dtype and device.

        Every call with the same role returns (a view of) the same memory, starting ``offset`` elements in (to use
        the part of a role's buffer a smaller tensor leaves free); the memory grows when more is asked for (tensors
        handed out before keep the old memory alive, so they stay valid).
        """
        end = offset + math.prod(shape)
        return self.reserve(role, end, like)[offset:end].view(shape)

    def reserve(self, role: str, numel: int, like: Tensor) -> Tensor:
        """Grow ``role``'s buffer (``like``'s dtype and device) to at least ``numel`` elements; returns it, flat."""
        key = (role, like.dtype, like.device)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < numel:
            self._buffers.pop(key, None)  # drop our reference to the smaller one first
            flat = self._buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat

    def own(self, x: Tensor, replacing: Tensor | None = None) -> Tensor:
        """Mark ``x`` (a fresh tensor nobody else holds) as one blocks may update in place; returns ``x``.

        ``replacing``: a tensor ``x`` takes the place of (a residual stream's previous value), no longer owned.
        """
        if replacing is not None:
            self._owned.pop(id(replacing), None)
        self._owned[id(x)] = x
        return x

    def owns(self, x: Tensor) -> bool:
        """Whether ``x`` itself (not a view or copy of it) was marked with :meth:`own`."""
        return self._owned.get(id(x)) is x


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


@contextmanager
def inference_workspace() -> Iterator[Workspace]:
    """Make a new :class:`Workspace` the active one for the duration of the block (restores the previous one)."""
    ws = Workspace()
    token = _ACTIVE.set(ws)
    try:
        yield ws
    finally:
        _ACTIVE.reset(token)


def active_workspace() -> Workspace | None:
    """The workspace entered by the innermost :func:`inference_workspace` block, or None."""
    return _ACTIVE.get()


def linear(layer: nn.Module, x: Tensor, role: str) -> Tensor:
    """``layer(x)`` for ``[..., in] -> [..., out]``, written into the active workspace's ``role`` buffer if possible.

    The result may be that buffer: the caller must be done with it before the next call with the same role. Falls
    back to ``layer(x)`` when no workspace is active, ``layer`` is not a plain ``nn.Linear``, or
    :func:`can_write_into` says no.
    """
    ws = _ACTIVE.get()
    if ws is None or type(layer) is not nn.Linear or not can_write_into(x, layer.weight, layer.bias):
        return layer(x)
    return linear_into(ws, x, layer.weight, layer.bias, role)


def can_write_into(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`linear_into` computes exactly ``F.linear(x, weight, bias)``.

    True for a contiguous CPU ``x`` with at least 2 dims, of the parameters' dtype, outside autocast (which does not
    apply to ``out=`` calls).
    """
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and (bias is None or bias.dtype == weight.dtype)
        and x.dim() >= 2
        and x.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
    )


def linear_into(ws: Workspace, x: Tensor, weight: Tensor, bias: Tensor | None, role: str) -> Tensor:
    """``F.linear(x, weight, bias)`` into ``ws``'s ``role`` buffer, ``[..., in] -> [..., out]``.

    Only where :func:`can_write_into` holds: these are the calls ``F.linear`` makes for a contiguous input
    (``addmm`` with a bias, ``mm`` without), on the ``[-1, in]`` view.
    """
    x2 = x.view(-1, x.shape[-1])
    out = ws.buffer(role, (x2.shape[0], weight.shape[0]), x)
    if bias is None:
        torch.mm(x2, weight.t(), out=out)
    else:
        torch.addmm(bias, x2, weight.t(), out=out)
    return out.view(*x.shape[:-1], weight.shape[0])


__all__ = ["Workspace", "active_workspace", "can_write_into", "inference_workspace", "linear", "linear_into"]
