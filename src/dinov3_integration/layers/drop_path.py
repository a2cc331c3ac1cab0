"""Stochastic depth: per sample (:func:`drop_path`, :class:`DropPath`) and by batch subsetting
(:func:`drop_add_residual_subset`).

Used by VGGT's blocks (``vggt_compat``: DINOv2's rule, batch subsets above rate 0.1, per sample below). The DINOv3
block does not use them: like the reference, it drops residual branches by batch subsetting at every rate, with the
reference's list semantics (``SelfAttentionBlock``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero whole samples of ``x`` (any shape ``[B, ...]``) with probability ``drop_prob``, rescaling the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; the identity in eval mode or when ``drop_prob`` is 0."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_add_residual_subset(
    x: Tensor, residual_func: Callable[..., Tensor], ratio: float, *aligned: Tensor | None
) -> Tensor:
    """``x`` with ``residual_func`` added on a random subset of its batch, scaled by ``B / subset``.

    ``x`` is ``[B, ...]``; a fraction ``1 - ratio`` of the samples (at least one) is drawn with ``torch.randperm``
    and ``residual_func(x[subset], *(a[subset] for a in aligned))`` is added to them (``aligned``: batch-first
    tensors that go with ``x``, e.g. VGGT's positions ``[B, N, 2]``; a ``None`` stays ``None``). The other samples
    are unchanged. The one implementation of DINOv2/DINOv3/VGGT's ``drop_add_residual_stochastic_depth``.
    """
    b = x.shape[0]
    subset = max(int(b * (1 - ratio)), 1)
    brange = torch.randperm(b, device=x.device)[:subset]
    residual = residual_func(x[brange], *(None if a is None else a[brange] for a in aligned))
    scale = b / subset
    return torch.index_add(x.flatten(1), 0, brange, residual.to(dtype=x.dtype).flatten(1), alpha=scale).view_as(x)
