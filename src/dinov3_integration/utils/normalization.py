"""Input normalisation: the mean/std of each weights family and the one function that applies them.

The bare ViT (like Meta's reference) takes normalised images; the Aggregator and the integrated model (like VGGT)
take images in ``[0, 1]`` and call :func:`normalize` inside.
"""

from __future__ import annotations

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


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(images - mean) / std`` over the channel axis ``-3`` of ``[..., C, H, W]`` images in ``[0, 1]``.

    Computed in ``images``' floating dtype (float32 for integer input is the caller's job).
    """
    shape = (len(mean), 1, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - m) / s
