"""DINOv3's fused qkv projection with a masked bias (``LinearKMaskedBias``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearKMaskedBias(nn.Linear):
    """A ``Linear(D, 3D)`` whose bias is multiplied by the persistent buffer ``bias_mask`` on every call.

    The intended mask is 1 for the q and v thirds and 0 for the k third (the key bias is redundant under
    softmax). The released checkpoints store the mask (all zeros), so it is loaded, never assumed.

    The masked bias is computed and added on every call, as in the reference: no decision is taken from (or
    cached on) the values of ``bias`` or ``bias_mask``, so writes of any kind (``.data``, ``load_state_dict``,
    ``assign=True``, EMA updates) take effect in the next call. (Skipping an all-zero masked bias gained nothing
    measurable in eager and cannot be decided per call under ``torch.compile``: benchmarks/README.md.)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if out_features % 3 != 0:
            raise ValueError(f"LinearKMaskedBias needs out_features divisible by 3, got {out_features}")
        if self.bias is not None:
            self.register_buffer("bias_mask", torch.ones_like(self.bias))
            self.reset_bias_mask()
        else:
            self.bias_mask = None

    def reset_bias_mask(self) -> None:
        """Set the mask to ``[1 (q), 0 (k), 1 (v)]``."""
        if self.bias_mask is None or self.bias_mask.device.type == "meta":
            return
        o = self.out_features
        with torch.no_grad():
            self.bias_mask.fill_(1)
            self.bias_mask[o // 3 : 2 * o // 3].fill_(0)

    def masked_bias(self) -> Tensor | None:
        """``bias * bias_mask`` (``[out_features]``), or None without a bias."""
        return self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.masked_bias())


__all__ = ["LinearKMaskedBias"]
