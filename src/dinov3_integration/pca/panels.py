"""Input panels for ``pca --from-features`` without torch: an image decoded by Pillow and resized as
:func:`dinov3_integration.data.preprocess.resize_uint8` (``torchvision.transforms.v2.functional.resize``,
``antialias=True``) resizes it, bit for bit.

That resize of a uint8 image runs torch's integer kernel (``_upsample_bilinear2d_aa`` / ``_bicubic2d_aa`` on
uint8): per axis, float64 filter weights rounded to int16 at a precision chosen from the largest weight, a
horizontal pass rounded and clamped to uint8, then a vertical pass. :func:`resize_like_torch` is that arithmetic in
numpy. torchvision takes this kernel for bicubic always and for bilinear when torch's CPU capability is AVX2 or
AVX512, or on Arm; elsewhere (``ATEN_CPU_CAPABILITY=default``, x86 without AVX2) bilinear goes through float32, and
:func:`can_resize_like_torch` says False so the caller uses torch itself.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable

import numpy as np


def _linear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _cubic(x: float) -> float:  # Keys' cubic, A = -0.5 (torch's antialiased bicubic, as Pillow's)
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


_FILTERS: dict[str, tuple[Callable[[float], float], int]] = {"bilinear": (_linear, 2), "bicubic": (_cubic, 4)}


def _axis_weights(n_in: int, n_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(first input index [n_out], int16 weights [n_out, taps], precision)`` for one axis (align_corners False)."""
    filt, interp_size = _FILTERS[interpolation]
    scale = n_in / n_out
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts = np.zeros(n_out, dtype=np.int64)
    weights = np.zeros((n_out, taps))
    wt_max = 0.0
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), n_in) - xmin, 0), taps)
        ws = [filt((j + xmin - center + 0.5) * invscale) for j in range(xsize)]
        total = 0.0
        for v in ws:
            total += v
        if total != 0.0:
            ws = [v / total for v in ws]
            wt_max = max([wt_max, *ws])
        starts[i] = xmin
        weights[i, :xsize] = ws
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = weights * (1 << precision)
    k = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int64)
    return starts, k, precision


def _resample(image: np.ndarray, axis: int, n_out: int, interpolation: str) -> np.ndarray:
    """One pass over ``axis`` (0 or 1) of a uint8 ``[H, W, C]`` image: integer taps, rounding, clamping to uint8.

    Each tap gathers the uint8 source (a row gather for axis 0; for axis 1, one gather of single bytes over the
    image seen as ``[H, W * C]``, much faster than gathering 3-byte pixels) and multiplies it into int32. int32 is
    exact: ``|sum| <= 255 * 2**15 * taps`` stays below ``2**31`` for every size this draws."""
    height, width, channels = image.shape
    n_in = image.shape[axis]
    starts, k, precision = _weights(n_in, n_out, interpolation)
    src = image.reshape(height, width * channels)
    shape, bcast = ((n_out, width * channels), (-1, 1)) if axis == 0 else ((height, n_out * channels), (1, -1))
    acc = np.full(shape, 1 << (precision - 1), dtype=np.int32)
    term = np.empty(shape, dtype=np.int32)
    for j in np.flatnonzero(k.any(0)):  # taps past every window are all zero
        index = np.minimum(starts + j, n_in - 1)
        weight = k[:, j].astype(np.int32)
        if axis == 1:  # byte index of each output byte, weight of each output byte
            index = (index[:, None] * channels + np.arange(channels)).reshape(-1)
            weight = np.repeat(weight, channels)
        np.multiply(np.take(src, index, axis=axis), weight.reshape(bcast), out=term)
        acc += term
    acc >>= precision
    out = np.clip(acc, 0, 255).astype(np.uint8)
    return out.reshape(n_out, width, channels) if axis == 0 else out.reshape(height, n_out, channels)


_WEIGHTS: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray, int]] = {}


def _weights(n_in: int, n_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`_axis_weights`, kept per ``(n_in, n_out, interpolation)`` (the frames of a clip share their sizes)."""
    key = (n_in, n_out, interpolation)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _axis_weights(n_in, n_out, interpolation)
    return _WEIGHTS[key]


def resize_like_torch(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``[H, W, C]`` -> uint8 ``[size[0], size[1], C]``, the pixels of torch's antialiased uint8 resize."""
    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation {interpolation!r} is not supported: use bilinear or bicubic")
    out = image
    if size[1] != out.shape[1]:
        out = _resample(out, 1, size[1], interpolation)  # horizontal first, as torch
    if size[0] != out.shape[0]:
        out = _resample(out, 0, size[0], interpolation)
    return out


def can_resize_like_torch(interpolation: str) -> bool:
    """Whether torchvision would resize a uint8 image with the integer kernel here (see the module docstring)."""
    if interpolation == "bicubic":
        return True
    if interpolation != "bilinear":
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("", "avx2", "avx512"):
        return False
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        pass
    return False  # no way to tell without torch: let torch do it


def load_panel(path: str, size: tuple[int, int], interpolation: str) -> np.ndarray | None:
    """``path`` decoded (EXIF orientation applied, RGB) and resized to ``size``: uint8 ``[3, H, W]``; None when
    only :mod:`dinov3_integration.data.preprocess` can do it (16-bit or float images, bilinear on a CPU whose
    kernel this cannot tell)."""
    if not can_resize_like_torch(interpolation):
        return None
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            return None
        rgb = np.asarray(im.convert("RGB"))
    return resize_like_torch(rgb, size, interpolation).transpose(2, 0, 1)  # a view: [H, W, 3] in memory
