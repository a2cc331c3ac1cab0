"""Reusable buffers for the eager inference fast paths of one forward pass (decided in :mod:`.fastpath`).

Every block of a ViT allocates the same large temporaries: the fused ``qkv`` product ``[B, N, 3D]``, the MLP hidden
activation ``[B, N, 4D]`` and the two branch outputs ``[B, N, D]``, and a new residual stream ``[B, N, D]`` per
branch. On a CPU each fresh allocation above glibc's mmap threshold (at most 32 MiB) is a fresh mapping whose pages
fault on first touch, and smaller ones fault too whenever glibc trims the heap between blocks: at 512x512 a ViT-S/16
forward (batch 8) took 200-300k page faults; without them it runs 1.08x as fast (benchmarks/README.md).

A :class:`Workspace` (one per forward, created by :func:`~dinov3_integration.layers.fastpath.model_scope`) holds one
buffer per :class:`Role` that every block reuses. A buffer is *taken* for one tensor and *released* when that tensor
is dead; taking a role that is still taken raises (two lifetimes overlapping would silently overwrite live data). With
``DINOV3_DEBUG_WORKSPACE=1`` in the environment (or ``Workspace(debug=True)``) every buffer is filled with NaN when it
is taken and when it is released, so any read of a dead tensor shows up as NaN in the output (the tests run the model
in that mode and get identical outputs). The workspace also records which residual-stream tensors blocks may update
in place (:meth:`Workspace.own`: the ViT's fresh token tensor and the sums made from it).
"""

from __future__ import annotations

import enum
import importlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

DEBUG_ENV = "DINOV3_DEBUG_WORKSPACE"


class Role(enum.Enum):
    """What a workspace buffer holds, in the order a block uses it (each role: one tensor at a time).

    - ``WIDE``: the attention's ``qkv`` ``[B, N, 3D]`` (with one RoPE temporary in its spare room after it), dead
      after the attention product; then the FFN's hidden activation (MLP ``[B, N, 4D]``, SwiGLU's gate), dead after
      the output projection.
    - ``WIDE2``: SwiGLU's up projection, dead once multiplied into the gate.
    - ``BRANCH``: the other RoPE temporary (dead after the rotation); then the attention's ``proj`` output and the
      FFN's output, each dead once the block has added it into the residual stream.
    """

    WIDE = "wide"
    WIDE2 = "wide2"
    BRANCH = "branch"


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


class Workspace:
    """One flat buffer per ``(role, dtype, device)``, the tensors taken from them, and the owned residual streams.

    Args:
        debug: poison buffers with NaN when taken and released; default: ``DINOV3_DEBUG_WORKSPACE`` is set to a
            true value (``1``).
    """

    def __init__(self, debug: bool | None = None) -> None:
        self.debug = _debug_from_env() if debug is None else debug
        self._buffers: dict[tuple, Tensor] = {}
        self._taken: dict[tuple, Tensor] = {}  # key -> the tensor handed out by take()
        self._owned: dict[int, Tensor] = {}  # by id; the reference keeps the id from being reused

    @staticmethod
    def _key(role: Role, like: Tensor) -> tuple:
        return (role, like.dtype, like.device)

    def reserve(self, role: Role, numel: int, like: Tensor) -> None:
        """Grow ``role``'s buffer (``like``'s dtype and device) to at least ``numel`` elements; only while not taken."""
        key = self._key(role, like)
        if key in self._taken:
            raise RuntimeError(f"workspace buffer {role.name} cannot grow while it is taken (a lifetime bug)")
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < numel:
            self._buffers.pop(key, None)  # drop our reference to the smaller one first
            self._buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)

    def take(self, role: Role, shape: tuple[int, ...], like: Tensor, spare: int = 0) -> Tensor:
        """``role``'s buffer as an uninitialised contiguous ``shape`` tensor (``like``'s dtype and device).

        The caller must :meth:`release` it when the tensor is dead; until then the role cannot be taken again.
        ``spare``: elements to reserve after the tensor, handed out by :meth:`spare` while it is taken.
        """
        key = self._key(role, like)
        if key in self._taken:
            raise RuntimeError(
                f"workspace buffer {role.name} is taken twice (still holding a {tuple(self._taken[key].shape)} "
                f"tensor, asked for {tuple(shape)}): two lifetimes overlap, which would overwrite live data"
            )
        numel = math.prod(shape)
        self.reserve(role, numel + spare, like)
        flat = self._buffers[key]
        if self.debug:
            flat.fill_(float("nan"))
        out = flat[:numel].view(shape)
        self._taken[key] = out
        return out

    def spare(self, role: Role, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A ``shape`` view of the spare room after ``role``'s taken tensor (see :meth:`take`); dies with it."""
        key = self._key(role, like)
        held = self._taken.get(key)
        if held is None:
            raise RuntimeError(f"workspace buffer {role.name} has no spare room: it is not taken")
        start, end = held.numel(), held.numel() + math.prod(shape)
        flat = self._buffers[key]
        if end > flat.numel():
            raise RuntimeError(f"workspace buffer {role.name}: spare room for {end - start} elements was not reserved")
        return flat[start:end].view(shape)

    def release(self, tensor: Tensor) -> None:
        """Give back the buffer ``tensor`` was taken from (a no-op for any other tensor, e.g. a fresh one)."""
        for key, held in self._taken.items():
            if held is tensor:
                del self._taken[key]
                if self.debug:
                    self._buffers[key].fill_(float("nan"))
                return

    def taken(self) -> list[Role]:
        """The roles taken now (empty between blocks)."""
        return [key[0] for key in self._taken]

    def holds(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is a tensor handed out by :meth:`take` and not yet released."""
        return any(held is tensor for held in self._taken.values())

    def own(self, x: Tensor, replacing: Tensor | None = None) -> Tensor:
        """Mark ``x`` (a fresh tensor nobody else holds) as one blocks may update in place; returns ``x``.

        ``replacing``: a tensor ``x`` takes the place of (a residual stream's previous value), no longer owned.
        """
        if replacing is not None:
            self._owned.pop(id(replacing), None)
        self._owned[id(x)] = x
        return x

    def disown(self, x: Tensor) -> None:
        """``x`` may no longer be updated in place (someone keeps it now); a no-op for a tensor not owned."""
        self._owned.pop(id(x), None)

    def owns(self, x: Tensor) -> bool:
        """Whether ``x`` itself (not a view or copy of it) was marked with :meth:`own`."""
        return self._owned.get(id(x)) is x


_ACTIVE: ContextVar[Workspace | None] = ContextVar("dinov3_integration_workspace", default=None)


@contextmanager
def inference_workspace(debug: bool | None = None) -> Iterator[Workspace]:
    """A new :class:`Workspace`, the active one for the duration of the block (for tests and tools).

    The layers do not look this up themselves: they use the workspace of the
    :class:`~dinov3_integration.layers.fastpath.Plan` that :func:`~dinov3_integration.layers.fastpath.decide`
    returns, which is this one inside the block (when the fast paths apply).
    """
    ws = Workspace(debug=debug)
    token = _ACTIVE.set(ws)
    try:
        yield ws
    finally:
        _ACTIVE.reset(token)


def active_workspace() -> Workspace | None:
    """The workspace entered by the innermost :func:`inference_workspace` block, or None."""
    return _ACTIVE.get()


_MOVED = {"linear": "fastpath", "linear_into": "fastpath", "can_write_into": "fastpath"}


def __getattr__(name: str) -> Any:
    """Deprecated: ``linear``, ``linear_into`` and ``can_write_into`` live in :mod:`.fastpath` now."""
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEBUG_ENV", "Role", "Workspace", "active_workspace", "inference_workspace"]
