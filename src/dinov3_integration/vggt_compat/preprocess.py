"""VGGT-style input preprocessing at multiples of any patch size: :func:`vggt_preprocess`.

VGGT's ``load_and_preprocess_images`` resizes frames to a width of 518 (``"crop"``) or a longest side of 518
(``"pad"``) with the other side rounded to a multiple of 14; a /16 DINOv3 backbone refuses such sizes. This does the
same with every size rounded to a multiple of ``patch_size`` (518 becomes 512 for 16-pixel patches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._logging import get_logger
from .inputs import nearest_multiples

__all__ = ["VGGT_TARGET_SIZE", "vggt_preprocess", "vggt_size"]

log = get_logger("vggt_compat")

VGGT_TARGET_SIZE = 518
"""VGGT's preprocessing size (``load_and_preprocess_images(target_size=518)``)."""


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def vggt_size(height: int, width: int, patch_size: int = 14, target: int = VGGT_TARGET_SIZE, mode: str = "crop"):
    """``(resized_height, resized_width, final_height, final_width)`` of one frame, all multiples of ``patch_size``.

    ``"crop"``: width ``target``, height scaled and rounded, then centre-cropped to at most ``target``.
    ``"pad"``: longest side ``target``, the other scaled and rounded, then padded to ``target x target``.
    """
    if mode == "crop":
        new_w = target
        new_h = _round_to(height * new_w / width, patch_size)
        return new_h, new_w, min(new_h, target), new_w
    if mode == "pad":
        if width >= height:
            new_w, new_h = target, _round_to(height * target / width, patch_size)
        else:
            new_h, new_w = target, _round_to(width * target / height, patch_size)
        return new_h, new_w, target, target
    raise ValueError(f"mode must be 'crop' or 'pad' (VGGT's modes), got {mode!r}")


def vggt_preprocess(
    images: Tensor | Sequence[Tensor],
    patch_size: int = 14,
    target: int | None = None,
    mode: str = "crop",
) -> Tensor:
    """Resize (and crop or pad) frames in ``[0, 1]`` as VGGT's preprocessing does, at multiples of ``patch_size``.

    Args:
        images: ``[S, 3, H, W]`` or ``[3, H, W]`` (one size), or a sequence of ``[3, H_i, W_i]`` frames.
        patch_size: the backbone's patch size (``Aggregator.patch_size``: 14 for VGGT, 16 for DINOv3 /16).
        target: VGGT's ``target_size``; default 518 rounded to the nearest multiple of ``patch_size`` (512 for 16).
            A value that is not a multiple is rounded the same way.
        mode: ``"crop"`` (VGGT's default) or ``"pad"`` (padding is white, 1.0, as in VGGT).

    Returns:
        ``[S, 3, H', W']`` with ``H'`` and ``W'`` multiples of ``patch_size`` (frames of different final sizes are
        padded with 1.0 to the largest, as VGGT does). Pixels are resampled with antialiased bicubic interpolation
        and clamped to ``[0, 1]`` (the sizes are VGGT's; pixel values are close to PIL's, not bit-equal).
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    wanted = VGGT_TARGET_SIZE if target is None else int(target)
    size = _round_to(wanted, patch_size)
    if target is not None and size != wanted:
        log.info("target %d is not a multiple of %d: using %d (nearest: %s)", wanted, patch_size, size,
                 nearest_multiples(wanted, patch_size))  # fmt: skip
    frames = _as_frames(images)
    out = [_one(frame, patch_size, size, mode) for frame in frames]
    H = max(t.shape[-2] for t in out)
    W = max(t.shape[-1] for t in out)
    return torch.stack([_pad_to(t, H, W) for t in out])


def _as_frames(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [S, 3, H, W] or [3, H, W] frames in [0, 1], got shape {tuple(images.shape)}")
        return list(images)
    frames = list(images)
    if not frames or any(not isinstance(f, Tensor) or f.ndim != 3 or f.shape[0] != 3 for f in frames):
        raise ValueError("expected a non-empty sequence of [3, H, W] frames in [0, 1]")
    return frames


def _one(frame: Tensor, patch_size: int, target: int, mode: str) -> Tensor:
    if not frame.is_floating_point():
        raise TypeError(f"expected floating-point frames in [0, 1], got dtype {frame.dtype}; use frames.float() / 255")
    H, W = frame.shape[-2:]
    new_h, new_w, final_h, final_w = vggt_size(H, W, patch_size, target, mode)
    x = F.interpolate(frame[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    x = x[0].clamp_(0.0, 1.0).to(frame.dtype)
    if mode == "crop":
        top = (new_h - final_h) // 2
        return x[:, top : top + final_h]
    return _pad_to(x, final_h, final_w)


def _pad_to(x: Tensor, H: int, W: int) -> Tensor:
    dh, dw = H - x.shape[-2], W - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=1.0)
