"""Checks of the Aggregator's inputs and constructor arguments, with errors that say what would work.

- :func:`validate_images`: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) floating-point frames whose sides are
  multiples of the patch size (the error names the nearest multiples);
- :func:`warn_if_out_of_range`: a one-time warning for inputs far outside ``[0, 1]``;
- :func:`resolve_register_count`, :func:`validate_aa_order`: the constructor's register count and ``aa_order``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .._logging import get_logger

__all__ = [
    "AA_TYPES",
    "check_sides",
    "check_sizes",
    "nearest_multiples",
    "resolve_register_count",
    "validate_aa_order",
    "validate_images",
    "warn_if_out_of_range",
]

log = get_logger("vggt_compat")

AA_TYPES = ("frame", "global")
_RANGE_SLACK = 0.25  # inputs beyond [-0.25, 1.25] are "far outside [0, 1]"


def nearest_multiples(side: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` nearest to ``side``: ``[side]`` when it is one, else the one below (when > 0)
    and the one above (``nearest_multiples(518, 16) == [512, 528]``)."""
    if side % multiple == 0:
        return [side]
    lower, upper = side // multiple * multiple, (side // multiple + 1) * multiple
    return [lower, upper] if lower > 0 else [upper]


def check_sides(H: int, W: int, patch_size: int) -> None:
    """Raise ``ValueError`` naming the nearest valid sizes unless ``H`` and ``W`` are multiples of ``patch_size``."""
    problems = []
    for name, side in (("height", H), ("width", W)):
        if side % patch_size:
            problems.append(
                f"{name} {side} (nearest valid: {' or '.join(map(str, nearest_multiples(side, patch_size)))})"
            )
    if problems:
        h_ok = H if H % patch_size == 0 else max(patch_size, round(H / patch_size) * patch_size)
        w_ok = W if W % patch_size == 0 else max(patch_size, round(W / patch_size) * patch_size)
        raise ValueError(
            f"image sides must be multiples of the patch size {patch_size}: {'; '.join(problems)}. Resize or crop the "
            f"frames, e.g. to {h_ok}x{w_ok} (vggt_compat.vggt_preprocess(images, patch_size={patch_size}) does it)"
        )


def validate_images(images: Tensor, patch_size: int) -> Tensor:
    """Check ``images`` and return them as ``[B, S, 3, H, W]`` (a 4-D ``[S, 3, H, W]`` is one sequence)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a tensor [B, S, 3, H, W], got {type(images).__name__}")
    if images.ndim == 4:
        images = images.unsqueeze(0)
    elif images.ndim != 5:
        hint = " (a single image: use images[None, None] for B=1, S=1)" if images.ndim == 3 else ""
        raise ValueError(
            f"expected images of shape [B, S, 3, H, W] (or [S, 3, H, W] for one sequence), got shape "
            f"{tuple(images.shape)}{hint}"
        )
    if images.shape[2] != 3:
        hint = " (channels-last? use images.permute(0, 1, 4, 2, 3))" if images.shape[-1] == 3 else ""
        raise ValueError(
            f"expected 3 colour channels at dim 2 of [B, S, 3, H, W], got shape {tuple(images.shape)}{hint}"
        )
    if not images.is_floating_point():
        raise TypeError(f"expected floating-point images in [0, 1], got dtype {images.dtype}; use images.float() / 255")
    if images.shape[0] * images.shape[1] == 0:
        raise ValueError(f"got an empty batch of shape {tuple(images.shape)}")
    if not torch.compiler.is_compiling():  # symbolic sides while exporting: the export's Dims are patch multiples
        check_sides(int(images.shape[-2]), int(images.shape[-1]), patch_size)
    return images


def warn_if_out_of_range(images: Tensor) -> bool:
    """Warn (log and ``UserWarning``) when ``images`` are far outside ``[0, 1]``; return whether it warned.

    Costs one device synchronisation; skipped on the meta device and under ``torch.compile``.
    """
    if images.device.type == "meta" or torch.compiler.is_compiling():
        return False
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if lo >= -_RANGE_SLACK and hi <= 1 + _RANGE_SLACK:
        return False
    hint = " (0-255 pixels? divide by 255)" if hi > 2.0 else " (already normalised? pass the raw [0, 1] images)"
    message = (
        f"Aggregator expects images in [0, 1] and normalises them itself, but got values in "
        f"[{lo:.3g}, {hi:.3g}]{hint}. This warning is shown once."
    )
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)
    return True


def check_finite(**values: float | None) -> None:
    """Each float setting (``mlp_ratio``, ``rope_freq``, ``init_values``, ...) is a finite number, else ValueError."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    ratio = values.get("mlp_ratio")
    if ratio is not None and ratio <= 0:
        raise ValueError(f"mlp_ratio must be > 0, got {ratio!r}")


def check_sizes(depth: int, aa_block_size: int, embed_dim: int, num_heads: int, frames_chunk_size: int | None) -> None:
    """The Aggregator's size arguments fit together (``depth`` divisible by ``aa_block_size``, ...), else ValueError."""
    if aa_block_size < 1 or depth % aa_block_size != 0:
        raise ValueError(
            f"depth ({depth}) must be divisible by aa_block_size ({aa_block_size}); e.g. use aa_block_size in "
            f"{[d for d in range(1, depth + 1) if depth % d == 0]}"
        )
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if frames_chunk_size is not None and frames_chunk_size < 1:
        raise ValueError(f"frames_chunk_size must be a positive int or None, got {frames_chunk_size}")


def resolve_register_count(num_register_tokens: int, n_storage_tokens: int | None) -> int:
    """The register count from VGGT's ``num_register_tokens`` or DINOv3's ``n_storage_tokens`` (one of the two)."""
    if n_storage_tokens is None:
        count = num_register_tokens
    elif num_register_tokens not in (4, n_storage_tokens):  # 4 is VGGT's default: treat it as "not given"
        raise ValueError(
            f"num_register_tokens={num_register_tokens} and n_storage_tokens={n_storage_tokens} disagree; they are "
            "the same setting (VGGT's and DINOv3's names): give only one"
        )
    else:
        count = n_storage_tokens
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"the number of register tokens must be an int >= 0, got {count!r}")
    return count


def validate_aa_order(aa_order: Sequence[str]) -> list[str]:
    """``aa_order`` as a list: a permutation of ``["frame", "global"]``."""
    if isinstance(aa_order, str):
        raise ValueError(
            f'aa_order must be a list of attention types such as ["frame", "global"], got the string {aa_order!r}'
        )
    order = list(aa_order)
    unknown = [t for t in order if t not in AA_TYPES]
    if unknown:
        raise ValueError(f"unknown attention type(s) {unknown} in aa_order={order}; valid types are {list(AA_TYPES)}")
    missing = [t for t in AA_TYPES if t not in order]
    if missing:
        raise ValueError(
            f"aa_order={order} lacks {missing}: every layer output concatenates a frame and a global block, so "
            'aa_order must contain both, e.g. ["frame", "global"]'
        )
    if len(order) != len(AA_TYPES):
        raise ValueError(f"aa_order={order} repeats an attention type; use each of {list(AA_TYPES)} exactly once")
    return order
