"""The inference fast paths: one switch, and the one place that decides whether they apply.

The layers have two forwards: the reference one, written as the reference code reads, and a fast one for eager
inference that computes the same numbers (bit-identical: ``tests/test_fast_paths.py`` compares them with
``torch.equal``) with fewer allocations: RoPE rotated in place inside the ``qkv`` buffer, activations in place, the
LayerScale multiply and residual add in place, and, inside a ViT forward, one :class:`~.workspace.Workspace` buffer
per role for all blocks (measured in benchmarks/README.md).

Switch (as timm's ``use_fused_attn()``): on by default; ``DINOV3_FAST_PATHS=0`` in the environment (read at import)
or :func:`set_fast_paths` turns them off everywhere, ``model.use_fast_paths = False`` for one ViT
(``model.use_workspace = False`` keeps the in-place paths and drops only the workspace).

Decision, per call, in :func:`decide`: the fast forward runs when the switch is on, gradients are disabled,
no ``torch.compile`` tracing is under way (inductor plans its own buffers; the reference code compiles to the same or
faster kernels), the modules are in eval mode and no forward (pre-)hook is registered on them, their submodules or
globally (a hook may keep an output the fast path overwrites later). A ViT decides once per forward for all its
modules (:func:`model_scope`); a module used on its own decides for itself. Nothing is cached across calls, and
nothing is decided from parameter or buffer values, so weights written in any way (``.data``, EMA updates,
``load_state_dict(assign=True)``) take effect in the next call.

Exact types: the fast forwards reproduce the code of known classes only. A layer runs its fast forward only when
its submodules are of exactly the types it knows (``type(m) is nn.Linear``, not ``isinstance``: a subclass or a
parametrised weight may compute something else, so it gets the reference forward), see :func:`exact`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_lib

from .layer_scale import LayerScale
from .linear import LinearKMaskedBias
from .workspace import Role, Workspace, active_workspace

ENV = "DINOV3_FAST_PATHS"


def _env_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_ENABLED = _env_enabled()


def fast_paths_enabled() -> bool:
    """Whether the inference fast paths may run at all (``DINOV3_FAST_PATHS``, :func:`set_fast_paths`)."""
    return _ENABLED


def set_fast_paths(enabled: bool) -> None:
    """Turn the inference fast paths on or off for the whole process (outputs are the same either way)."""
    global _ENABLED
    _ENABLED = bool(enabled)


@dataclass(frozen=True)
class Plan:
    """What :func:`decide` allows for one call.

    Attributes:
        fast: run the fast forward (in-place updates of fresh outputs).
        workspace: where the fast forward puts its large temporaries (inside a ViT forward), or None (fresh ones).
    """

    fast: bool
    workspace: Workspace | None = None


REFERENCE = Plan(fast=False)
_SCOPE: ContextVar[Plan | None] = ContextVar("dinov3_integration_fast_path_scope", default=None)


def decide(*modules: nn.Module) -> Plan:
    """The plan for one call of ``modules`` (see the module docstring for the rule)."""
    if not _ENABLED or torch.compiler.is_compiling() or torch.is_grad_enabled():
        return REFERENCE
    scope = _SCOPE.get()
    if scope is not None:  # inside a ViT forward that decided for all its modules
        return scope
    if _training_or_hooked(modules):
        return REFERENCE
    return Plan(fast=True, workspace=active_workspace())


def _training_or_hooked(modules: tuple[nn.Module, ...]) -> bool:
    """Whether any of ``modules`` or their submodules is in training mode or has a forward (pre-)hook, or a global
    forward hook is set. ``Module._forward_hooks`` and friends are private attributes of ``torch.nn`` (read only;
    there is no public query); the walk is a plain loop, ~3x cheaper than ``Module.modules()``.
    """
    if _module_lib._global_forward_hooks or _module_lib._global_forward_pre_hooks:
        return True
    stack = list(modules)
    while stack:
        m = stack.pop()
        if m.training or m._forward_hooks or m._forward_pre_hooks:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


@contextmanager
def model_scope(model: nn.Module, enabled: bool = True, workspace: bool = True) -> Iterator[Plan]:
    """Decide once for a whole forward of ``model`` (a ViT) and make every module inside follow that plan.

    ``enabled`` / ``workspace``: the model's ``use_fast_paths`` / ``use_workspace``. Yields the plan; its
    ``workspace`` (a fresh :class:`~.workspace.Workspace` when the fast paths apply) lives for this block only.
    """
    if torch.compiler.is_compiling():  # nothing to publish: decide() says REFERENCE while tracing
        yield REFERENCE
        return
    plan = REFERENCE
    if enabled and _ENABLED and not torch.is_grad_enabled() and not _training_or_hooked((model,)):
        plan = Plan(fast=True, workspace=Workspace() if workspace else None)
    token = _SCOPE.set(plan)
    try:
        yield plan
    finally:
        _SCOPE.reset(token)


def exact(module: nn.Module, *types: type) -> bool:
    """Whether ``module``'s class is exactly one of ``types`` (subclasses are not: they get the reference path)."""
    return type(module) in types


def release(plan: Plan, tensor: Tensor) -> None:
    """``tensor`` is dead: give its workspace buffer back (a no-op without a workspace or for a fresh tensor)."""
    if plan.workspace is not None:
        plan.workspace.release(tensor)


# ------------------------------------------------------------------------------------------------ linear layers
def linear(plan: Plan, layer: nn.Module, x: Tensor, role: Role, spare: int = 0) -> Tensor:
    """``layer(x)`` (``[..., in] -> [..., out]``), written into ``plan``'s workspace buffer ``role`` when exact.

    For ``nn.Linear`` and :class:`~.linear.LinearKMaskedBias` (exact types) and when :func:`can_write_into` holds;
    otherwise ``layer(x)``. A workspace result must be :func:`release`\\ d when dead. ``spare``: see
    :meth:`~.workspace.Workspace.take`.
    """
    ws = plan.workspace
    if ws is not None and exact(layer, nn.Linear, LinearKMaskedBias):
        bias = layer.masked_bias() if type(layer) is LinearKMaskedBias else layer.bias
        if can_write_into(x, layer.weight, bias):
            return linear_into(ws, x, layer.weight, bias, role, spare)
    return layer(x)


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


def linear_into(ws: Workspace, x: Tensor, weight: Tensor, bias: Tensor | None, role: Role, spare: int = 0) -> Tensor:
    """``F.linear(x, weight, bias)`` into ``ws``'s ``role`` buffer (taken; release it when dead).

    Only where :func:`can_write_into` holds: these are the calls ``F.linear`` makes for a contiguous input
    (``addmm`` with a bias, ``mm`` without), on the ``[-1, in]`` view.
    """
    out = ws.take(role, (*x.shape[:-1], weight.shape[0]), x, spare=spare)
    x2, out2 = x.view(-1, x.shape[-1]), out.view(-1, weight.shape[0])
    if bias is None:
        torch.mm(x2, weight.t(), out=out2)
    else:
        torch.addmm(bias, x2, weight.t(), out=out2)
    return out


# ------------------------------------------------------------------------------------------------ in place
def gelu_(act: nn.GELU, x: Tensor) -> Tensor:
    """``act(x)`` for an exact ``nn.GELU``, in place on ``x`` (a fresh tensor): the same kernel as ``F.gelu``.

    ``torch.ops.aten.gelu_`` is the public operator registry's in-place GELU (``F.gelu`` has no ``inplace``).
    """
    return torch.ops.aten.gelu_(x, approximate=act.approximate)


def add_residual_(plan: Plan, x: Tensor, branch: Tensor, ls: nn.Module, branch_is_fresh: bool) -> Tensor:
    """The reference's ``x + ls(branch)``, computed in place where that gives the same numbers.

    ``branch_is_fresh``: ``branch`` is a tensor nobody else holds (the output of a known attention / FFN), so it may
    be overwritten. With an exact :class:`LayerScale` of ``branch``'s dtype the product is formed in place
    (``branch.mul_(gamma)``). The sum goes into ``x`` when ``plan``'s workspace owns ``x`` (the ViT's residual stream),
    else into the fresh product when dtypes and shapes allow, else into a new tensor (which the workspace then owns).
    ``x + s`` and ``s + x`` are the same IEEE additions, and an in-place add into the wider operand rounds as the
    out-of-place one. ``branch``'s workspace buffer is released.
    """
    scaled, fresh = branch, branch_is_fresh
    if exact(ls, LayerScale):
        if fresh and branch.dtype == ls.gamma.dtype:
            scaled = branch.mul_(ls.gamma)
        else:
            scaled, fresh = branch * ls.gamma, True
    elif not exact(ls, nn.Identity):
        scaled, fresh = ls(branch), False
    ws = plan.workspace
    same = scaled.shape == x.shape
    if ws is not None:
        if ws.owns(x) and same and torch.promote_types(x.dtype, scaled.dtype) == x.dtype:
            out = x.add_(scaled)
        else:
            out = ws.own(x + scaled, replacing=x)
        ws.release(branch)
        return out
    if fresh and same and scaled.dtype == x.dtype and scaled is not x:
        return scaled.add_(x)
    return x + scaled


__all__ = [
    "ENV",
    "REFERENCE",
    "Plan",
    "Role",
    "add_residual_",
    "can_write_into",
    "decide",
    "exact",
    "fast_paths_enabled",
    "gelu_",
    "linear",
    "linear_into",
    "model_scope",
    "release",
    "set_fast_paths",
]
