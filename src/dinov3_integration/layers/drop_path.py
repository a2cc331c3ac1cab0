"""Stochastic depth (drop path) per sample.

Used by VGGT's blocks (``vggt_compat``: DINOv2's rule, per-sample below rate 0.1). The DINOv3 block does not use it:
like the reference, it drops residual branches by batch subsetting at every rate (``SelfAttentionBlock``).
"""

from __future__ import annotations

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
