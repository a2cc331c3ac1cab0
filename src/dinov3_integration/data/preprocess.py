"""Preprocessing, as the transform in the reference DINOv3 README.

The README transform is ``v2.ToImage() -> v2.Resize(size, antialias=True) -> v2.ToDtype(float32, scale=True) ->
v2.Normalize(mean, std)``: the resize runs **on the uint8 image** with torchvision's default *bilinear*
interpolation and antialiasing. We do exactly that with the same torchvision functions, with two documented
differences in *size* only:

* the target size keeps the aspect ratio: ``--resolution S`` scales the short side to ``S`` and both sides are
  rounded to the nearest multiple of the patch size (16), so no pixel is silently dropped by the patch
  embedding; ``--resolution HxW`` gives a fixed size (each side rounded to a patch multiple);
* ``interpolation="bicubic"`` is offered (the official eval code and timm use bicubic); bilinear is the default.

Two documented rules guard against silently wrong or unbounded inputs:

* images that are not 8-bit are scaled by their mode's range before the uint8 pipeline: 16-bit (``I;16``, and
  ``I`` with values in 0..65535) by ``round(x / 257)``, float (``F``) with values in [0, 1] by
  ``round(x * 255)``; other value ranges are refused with :class:`ImageModeError` (they have no known scale);
* in short-side mode the resized long side may be at most :data:`MAX_LONG_SIDE` pixels (a 1x1000 image at
  ``--resolution 256`` would become 256x256000): longer is refused with a ``ValueError`` naming the fix.

The pipeline is split in two so data loading can overlap compute: :func:`resize_uint8` runs in the data loader
workers (uint8 tensors are 4x smaller to move to the GPU) and :func:`normalize` runs on the compute device.
Both steps are bit-identical to the README transform on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from ..models import normalization_for
from ..utils import normalization as _norm
from .resolution import Resolution, parse_resolution  # noqa: F401  (re-exported: its old home)

INTERPOLATIONS = ("bilinear", "bicubic")
MAX_LONG_SIDE = 8192
# How pixel values reach [0, 1] (recorded in every feature file's metadata).
SCALE_RULE = (
    "x / 255 (16-bit images first rounded to 8 bits as round(x / 257); float images in [0, 1] as round(x * 255))"
)


class ImageModeError(ValueError):
    """An image whose pixel values have no known scale (e.g. a float image outside [0, 1])."""


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(value / multiple + 0.5) * multiple)


def target_size(height: int, width: int, resolution: Resolution, patch_size: int) -> tuple[int, int]:
    """Model input size ``(H, W)`` for an image of ``height x width``: multiples of ``patch_size``.

    Short-side mode scales by ``S / min(height, width)`` and rounds each side to the nearest patch multiple
    (at least one patch); fixed mode rounds the requested sides.
    """
    if resolution.size is not None:
        h, w = resolution.size
        return _round_to(h, patch_size), _round_to(w, patch_size)
    assert resolution.short_side is not None
    scale = resolution.short_side / min(height, width)
    out = _round_to(height * scale, patch_size), _round_to(width * scale, patch_size)
    if max(out) > MAX_LONG_SIDE:
        raise ValueError(
            f"an image of {height}x{width} at short side {resolution.short_side} would be resized to "
            f"{out[0]}x{out[1]} pixels, beyond the {MAX_LONG_SIDE}-pixel cap on the long side (aspect ratio "
            f"{max(height, width) / min(height, width):.0f}:1); crop it, or pass a fixed --resolution HxW"
        )
    return out


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` / ``std`` in [0, 1] units and the name they were chosen by."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# The CLI's names (``--normalization imagenet|sat493m``) for the statistics of utils.normalization.
NORMALIZATIONS = {
    "imagenet": Normalization("imagenet", *_norm.NORMALIZATIONS["imagenet"]),  # type: ignore[arg-type]
    "sat493m": Normalization("sat493m", *_norm.NORMALIZATIONS["sat"]),  # type: ignore[arg-type]
}


def choose_normalization(choice: str, weights_tag: str | None) -> Normalization:
    """``choice`` ``"auto"`` picks the satellite statistics for ``sat493m`` weights (``model.weights_tag``), ImageNet's
    otherwise (:func:`dinov3_integration.models.normalization_for`)."""
    if choice != "auto":
        if choice not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {choice!r}: use auto, {', '.join(NORMALIZATIONS)}")
        return NORMALIZATIONS[choice]
    mean, _ = normalization_for(weights_tag)
    return NORMALIZATIONS["sat493m" if tuple(mean) == tuple(_norm.SAT_MEAN) else "imagenet"]


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to RGB uint8 ``[3, h, w]`` (EXIF orientation applied, alpha dropped).

    16-bit and float images are scaled by their mode's range first (see the module's rules).

    Raises:
        OSError / ValueError: from Pillow for missing, truncated or unsupported files.
        ImageModeError: a 32-bit integer or float image whose values have no known scale.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        # In place, and no convert() of an RGB image: both would otherwise copy the whole picture (~40 % of the
        # CPU time of a 640x480 JPEG) for the same pixels.
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode.startswith("I") or im.mode == "F":
            return _wide_to_uint8(im)
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        return pil_to_uint8(rgb)


def _wide_to_uint8(image) -> torch.Tensor:  # noqa: ANN001 - PIL.Image.Image
    """A one-channel 16-bit, 32-bit integer or float PIL image -> uint8 ``[3, h, w]`` (grey in every channel)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ImageModeError(f"image mode {image.mode} with shape {a.shape} is not supported: convert it to RGB")
    if image.mode == "F":
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0.0 or hi > 1.0:
            raise ImageModeError(
                f"float image (mode F) with values in [{lo:g}, {hi:g}]: only values in [0, 1] have a known scale; "
                "convert it to 8-bit or 16-bit first"
            )
        grey = np.floor(a.astype(np.float64) * 255.0 + 0.5)
    else:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageModeError(
                f"integer image (mode {image.mode}) with values in [{lo}, {hi}]: only 16-bit values (0..65535) have a "
                "known scale; convert it to 8-bit or 16-bit first"
            )
        grey = np.floor(a.astype(np.float64) / 257.0 + 0.5)
    g = torch.from_numpy(grey.astype(np.uint8))
    return g.unsqueeze(0).expand(3, -1, -1).contiguous()


def pil_to_uint8(image) -> torch.Tensor:  # noqa: ANN001 - PIL.Image.Image
    """PIL RGB image -> uint8 ``[3, h, w]`` (the same memory layout as ``v2.ToImage``)."""
    return tvF.to_image(image).as_subclass(torch.Tensor)


def array_to_uint8(frame: np.ndarray) -> torch.Tensor:
    """``[h, w, 3]`` uint8 array (a decoded video frame) -> uint8 ``[3, h, w]``, laid out like ``v2.ToImage``."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)


def resize_uint8(image: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of uint8 ``[..., 3, h, w]`` to ``[..., 3, H, W]`` uint8 (``v2.Resize(antialias=True)``)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not supported: use {' or '.join(INTERPOLATIONS)}")
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    return tvF.resize(image, list(size), interpolation=mode, antialias=True)


def normalize(image: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 ``(x / 255 - mean) / std`` (``v2.ToDtype(scale=True)``, ``v2.Normalize``)."""
    x = tvF.to_dtype(image, torch.float32, scale=True)
    return _norm.normalize(x, tuple(norm.mean), tuple(norm.std))


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 in [0, 1] (the Aggregator normalises inside)."""
    return tvF.to_dtype(image, torch.float32, scale=True)


def reference_transform(size: tuple[int, int], norm: Normalization, interpolation: str = "bilinear"):  # noqa: ANN201
    """The README transform as a ``v2.Compose`` for a fixed ``size`` (what :func:`resize_uint8` +
    :func:`normalize` reproduce); handy to preprocess images for the model directly."""
    from torchvision.transforms import v2

    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(list(size), interpolation=mode, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(norm.mean), std=list(norm.std)),
        ]
    )
