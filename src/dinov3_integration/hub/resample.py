"""Patch-embedding kernel resampling (FlexiViT's pseudo-inverse resize), e.g. ViT-L/16 weights for ViT-L/14.

Resizing a patch with a linear map ``B`` (``x_new = B x_old``, bilinear) changes its token unless the kernel is
adapted. FlexiViT (Beyer et al., 2023) picks the kernel ``w_new`` that keeps every token the same:
``<x_old, w_old> = <B x_old, w_new>``, i.e. ``B^T w_new = w_old``, solved in the least-squares sense with the
pseudo-inverse: ``w_new = pinv(B^T) w_old``. Resampling to the same size is the identity, and because bilinear
resizing maps a constant patch to a constant patch, a patch that is constant keeps its response exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """``[new_h * new_w, old_h * old_w]`` float64 matrix of the bilinear resize (no antialiasing)."""
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, 1, *old)
    resized = F.interpolate(basis, size=new, mode="bilinear", align_corners=False, antialias=False)
    return resized.reshape(n_old, new[0] * new[1]).T


def resample_patch_embed(weight: Tensor, new_size: int | tuple[int, int]) -> Tensor:
    """Resample a patch-embedding kernel ``[D, C, p, p]`` to ``[D, C, p', p']`` (pseudo-inverse resize).

    Computed in float64 and returned in ``weight``'s dtype. The bias needs no change.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a conv kernel [D, C, p, p], got shape {tuple(weight.shape)}")
    new = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    old = tuple(weight.shape[-2:])
    if old == new:
        return weight.clone()
    pinv = torch.linalg.pinv(_resize_matrix(old, new).T)  # [new^2, old^2]
    flat = weight.to(torch.float64).reshape(-1, old[0] * old[1])  # [D*C, old^2]
    out = flat @ pinv.T  # [D*C, new^2]
    return out.reshape(*weight.shape[:2], *new).to(weight.dtype)
