"""LayerScale: a learned per-channel scale on a residual branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """``y = x * gamma`` with ``gamma`` of shape ``[D]`` (key ``gamma``), out of place unless ``inplace``.

    Args:
        dim: channel count ``D``.
        init_values: initial value of every entry of ``gamma``.
        inplace: multiply in place (saves memory; only for tensors autograd does not need).
    """

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False, device=None) -> None:
        super().__init__()
        self.inplace = inplace
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.empty(dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, float(self.init_values))

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma
