"""Input normalisation: the mean/std of each weights family and the one function that applies them.

The bare ViT (like Meta's reference) takes normalised images; the Aggregator and the integrated model (like VGGT)
take images in ``[0, 1]`` and call :func:`normalize` inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "SAT_MEAN", "SAT_STD", "normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "sat": (SAT_MEAN, SAT_STD),
}


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``(images - mean) / std`` over the channel axis ``-3`` of ``[..., C, H, W]`` images in ``[0, 1]``.

    ``mean``/``std`` given as numbers are used in ``images``' floating dtype (float32 for integer input is the
    caller's job). Given as tensors of ``C`` values (a module's buffers, as VGGT keeps them) they keep their own
    dtype and the usual type promotion applies (float32 statistics with bfloat16 images compute in float32, as
    VGGT's ``(images - self._resnet_mean) / self._resnet_std``).
    """
    shape = (-1, 1, 1)
    if isinstance(mean, Tensor):
        m = mean.to(device=images.device).reshape(shape)
    else:
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    if isinstance(std, Tensor):
        s = std.to(device=images.device).reshape(shape)
    else:
        s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - m) / s
