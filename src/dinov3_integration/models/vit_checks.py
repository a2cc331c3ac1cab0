"""Argument and input checks of :class:`~dinov3_integration.models.DinoVisionTransformer` (clear errors, one place).

- :func:`check_vit_args`: the constructor's numbers (positive integer sizes, finite non-negative rates, RoPE
  settings in their ranges); a bad value raises ``ValueError`` naming the argument, the value and the valid range.
- :func:`check_image_batch`: an image batch ``[B, C, H, W]`` (type, rank, channels, floating dtype, size; warns once
  per size when pixels are dropped).
- :func:`check_masks`: a mask batch ``[B, N]`` of bools for an image batch.

Input dtype rule (as ``transformers``' ``DINOv3ViTModel``): a floating-point image of another dtype than the model
(float64 or float16 into a float32 model) is cast to the patch embedding's dtype; integer images are refused (they
need scaling and normalisation first).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["check_choice", "check_image_batch", "check_masks", "check_vit_args"]

_size_warnings: set[tuple[int, int, int]] = set()


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def _finite(name: str, value: object, *, low: float, low_ok: bool = True, high: float = math.inf) -> None:
    """``value`` is a finite real number in ``[low, high]`` (``(low, high]`` when ``low_ok`` is False)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_ok else value > low) and value <= high
    if not ok:
        bracket = "[" if low_ok else "("
        top = "inf)" if high == math.inf else f"{high:g}]"
        raise ValueError(f"{name}={value!r}: must be a finite number in {bracket}{low:g}, {top}")


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (e.g. ``norm_layer`` in the norm table)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")


def check_vit_args(
    *,
    img_size: object,
    patch_size: object,
    in_chans: object,
    embed_dim: object,
    depth: object,
    num_heads: object,
    ffn_ratio: object,
    drop_path_rate: object,
    layerscale_init: object,
    n_storage_tokens: object,
    rope: dict[str, object],
) -> None:
    """Raise ``ValueError`` for a constructor argument outside its range (``rope``: the ``pos_embed_rope_*`` values).

    Sizes are positive integers; ``n_storage_tokens`` a non-negative integer; ``ffn_ratio`` finite and > 0;
    ``drop_path_rate`` in ``[0, 1]``; ``layerscale_init`` None or finite; RoPE ``base``/``min_period``/``max_period``
    None or finite > 0, ``shift_coords`` None or finite >= 0, ``jitter_coords``/``rescale_coords`` None or
    finite >= 1 (log-uniform factors in ``[1/v, v]``).
    """
    sizes = img_size if isinstance(img_size, (tuple, list)) else (img_size,)
    for value in sizes:
        _positive_int("img_size", value)
    for name, value in (
        ("patch_size", patch_size),
        ("in_chans", in_chans),
        ("embed_dim", embed_dim),
        ("depth", depth),
        ("num_heads", num_heads),
    ):
        _positive_int(name, value)
    if isinstance(n_storage_tokens, bool) or not isinstance(n_storage_tokens, numbers.Integral) or n_storage_tokens < 0:
        raise ValueError(f"n_storage_tokens={n_storage_tokens!r}: must be an integer >= 0")
    _finite("ffn_ratio", ffn_ratio, low=0.0, low_ok=False)
    if int(embed_dim * ffn_ratio) < 1:  # type: ignore[operator]
        raise ValueError(f"ffn_ratio={ffn_ratio!r}: the FFN would have int({embed_dim} * {ffn_ratio}) = 0 units")
    _finite("drop_path_rate", drop_path_rate, low=0.0, high=1.0)
    if layerscale_init is not None:
        _finite("layerscale_init", layerscale_init, low=-math.inf)
    for key, low, low_ok in (
        ("base", 0.0, False),
        ("min_period", 0.0, False),
        ("max_period", 0.0, False),
        ("shift_coords", 0.0, True),
        ("jitter_coords", 1.0, True),
        ("rescale_coords", 1.0, True),
    ):
        if rope.get(key) is not None:
            _finite(f"pos_embed_rope_{key}", rope[key], low=low, low_ok=low_ok)


def check_image_batch(x: object, in_chans: int, patch_size: int, *, stacklevel: int = 5) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a floating ``[B, in_chans, H, W]`` of at least one patch.

    Warns once per ``(H, W, patch_size)`` when ``H`` or ``W`` is not a multiple of the patch size (pixels dropped).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor image batch [B, {in_chans}, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dim with x[None])" if x.ndim == 3 else ""
        raise ValueError(f"expected a 4-D image batch [B, {in_chans}, H, W], got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != in_chans:
        hint = " (channels-last input? use x.permute(0, 3, 1, 2))" if x.shape[-1] == in_chans else ""
        raise ValueError(
            f"expected {in_chans} channels in dim 1 ([B, {in_chans}, H, W]), got shape {tuple(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image tensor, got dtype {x.dtype}; convert with x.float() / 255 and "
            "normalise with the model's mean and std"
        )
    H, W = x.shape[-2:]
    p = patch_size
    if H < p or W < p:
        raise ValueError(f"input {H}x{W} is smaller than one {p}x{p} patch")
    if (H % p or W % p) and not torch.compiler.is_compiling():
        key = (H, W, p)
        if key not in _size_warnings:
            _size_warnings.add(key)
            warnings.warn(
                f"input size {H}x{W} is not a multiple of the patch size {p}: the last {H % p} rows and "
                f"{W % p} columns are dropped (grid {H // p}x{W // p}); resize to "
                f"{H // p * p}x{W // p * p} or {-(-H // p) * p}x{-(-W // p) * p} to use every pixel",
                stacklevel=stacklevel,
            )


def check_masks(masks: object, batch: int, grid: tuple[int, int]) -> None:
    """Raise unless ``masks`` is a bool tensor ``[batch, h * w]`` (True: the patch becomes ``mask_token``)."""
    h, w = grid
    expected = f"[B, N] = [{batch}, {h * w}] (one flag per patch of the {h}x{w} grid, row-major)"
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a bool tensor {expected}, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor {expected}, got dtype {masks.dtype}; use masks.bool()")
    if tuple(masks.shape) != (batch, h * w):
        hint = " (flatten it with masks.flatten(1))" if tuple(masks.shape) == (batch, h, w) else ""
        raise ValueError(f"masks must have shape {expected}, got {tuple(masks.shape)}{hint}")
