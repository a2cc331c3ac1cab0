"""PCA pictures: colour grids upsampled beside their inputs, captions, the random-weights banner, PNG.

numpy and Pillow only (torch only for ``upsample="bilinear"``, to reproduce ``F.interpolate`` exactly).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path

PNG_OPTIONS = {"compress_level": 6, "compress_type": 3}  # Pillow, for modes write_png does not take: zlib Z_RLE


def _hwc_uint8(image: Any) -> np.ndarray:
    """uint8 ``[3, H, W]`` (torch or numpy) -> numpy ``[H, W, 3]``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0))


def _nearest_index(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output index, as ``F.interpolate(mode="nearest")`` computes it (float32 scale)."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _upsample_to_uint8(rgb: Any, size: tuple[int, int], upsample: str) -> np.ndarray:
    """float ``[h, w, 3]`` in [0, 1] -> uint8 ``[H, W, 3]``: ``round(255 * upsampled)``, as the torch code did."""
    H, W = size
    if upsample == "nearest":  # nearest copies values: quantise the small grid, then index it
        grid = np.asarray(rgb.detach().cpu().numpy() if hasattr(rgb, "detach") else rgb, dtype=np.float32)
        q = np.round(np.clip(grid, 0, 1) * np.float32(255)).astype(np.uint8)
        h, w = q.shape[:2]
        return np.take(np.take(q, _nearest_index(H, h), axis=0), _nearest_index(W, w), axis=1)
    if upsample != "bilinear":
        raise ValueError(f"upsample {upsample!r}: use nearest or bilinear")
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(rgb.detach().cpu() if hasattr(rgb, "detach") else rgb, dtype=np.float32))
    up = F.interpolate(x.permute(2, 0, 1)[None], size=(H, W), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    return (up * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def render_row_array(image: Any, rgb: Any, size: tuple[int, int], upsample: str = "nearest") -> np.ndarray:
    """:func:`render_row` as a uint8 numpy array ``[H, 2W, 3]`` (``[H, W, 3]`` without an input)."""
    H, W = size
    panels = []
    if image is not None:
        if tuple(image.shape[-2:]) != (H, W):
            raise ValueError(f"input panel is {tuple(image.shape[-2:])}, expected {(H, W)}")
        panels.append(_hwc_uint8(image))
    panels.append(_upsample_to_uint8(rgb, size, upsample))
    return np.concatenate(panels, axis=1) if len(panels) > 1 else panels[0]


def render_row(image: Any, rgb: Any, size: tuple[int, int], upsample: str = "nearest"):  # noqa: ANN201
    """One picture row: the input (uint8 ``[3, H, W]``, torch or numpy, or None) beside the PCA colours ``rgb``
    (float ``[h, w, 3]`` in [0, 1]) upsampled to ``size`` (``nearest`` or ``bilinear``).

    Returns:
        A PIL RGB image of ``(2W) x H`` (``W x H`` without an input).
    """
    from PIL import Image

    return Image.fromarray(render_row_array(image, rgb, size, upsample))


def compose_rows(rows: Sequence, background: tuple[int, int, int] = (255, 255, 255)):  # noqa: ANN201
    """Stack row pictures vertically, left-aligned; the canvas is as wide as the widest row."""
    from PIL import Image

    if not rows:
        raise ValueError("nothing to draw")
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), background)
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    return canvas


CAPTION_HEIGHT = 16  # pixels of the name strip above each row (and of the random-weights banner)
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: these colours are not DINOv3 features"


def missing_input_panel(size: tuple[int, int]) -> np.ndarray:
    """A grey uint8 ``[3, H, W]`` panel (numpy; ``[H, W, 3]`` in memory) standing in for an input image that
    cannot be shown."""
    return np.full((*size, 3), 200, dtype=np.uint8).transpose(2, 0, 1)


def caption_strip(
    text: str,
    width: int,
    *,
    height: int = CAPTION_HEIGHT,
    color: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] = (255, 255, 255),
    keep_end: bool = True,
):  # noqa: ANN201
    """A ``width x height`` PIL strip with ``text`` on the left; too long a text loses its start (``keep_end``,
    right for a path) or its end."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    shown = text
    if draw.textlength(shown, font=font) > width - 6:
        while len(shown) > 1 and draw.textlength(shown + "...", font=font) > width - 6:
            shown = shown[1:] if keep_end else shown[:-1]
        shown = "..." + shown if keep_end else shown + "..."
    try:
        draw.text((3, max(0, (height - 12) // 2)), shown, fill=color, font=font)
    except UnicodeEncodeError:  # Pillow's bitmap fallback font is latin-1 only
        draw.text((3, max(0, (height - 12) // 2)), shown.encode("latin-1", "replace").decode("latin-1"), fill=color)
    return strip


def compose_picture_array(
    rows: Sequence, captions: Sequence[str] | None = None, *, banner: str | None = None
) -> np.ndarray:
    """:func:`compose_picture` as a uint8 numpy array ``[height, width, 3]``; ``rows`` are PIL RGB images or uint8
    ``[h, w, 3]`` arrays (:func:`render_row_array`). Built in numpy: a PIL picture would cost two more copies of
    every pixel (into Pillow's 4-byte pixels and back out), a third of the time of a 16-frame picture."""
    from PIL import Image

    if not len(rows):
        raise ValueError("nothing to draw")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")
    shapes = [(r.height, r.width) if isinstance(r, Image.Image) else r.shape[:2] for r in rows]
    width = max(w for _, w in shapes)
    heights = [h if w == width else max(1, round(h * width / w)) for h, w in shapes]
    extra = CAPTION_HEIGHT if captions is not None else 0
    canvas = np.empty(
        ((CAPTION_HEIGHT if banner is not None else 0) + sum(heights) + extra * len(rows), width, 3), np.uint8
    )
    y = 0

    def put(part: Any) -> None:
        nonlocal y
        a = np.asarray(part.convert("RGB") if isinstance(part, Image.Image) else part)
        canvas[y : y + a.shape[0]] = a
        y += a.shape[0]

    if banner is not None:
        put(caption_strip(banner, width, color=(255, 255, 255), background=(190, 0, 0), keep_end=False))
    for i, (row, (_, w), height) in enumerate(zip(rows, shapes, heights)):
        if captions is not None:
            put(caption_strip(captions[i], width))
        if w != width:
            picture = row if isinstance(row, Image.Image) else Image.fromarray(row)
            row = picture.resize((width, height), Image.NEAREST if width > w else Image.LANCZOS)
        put(row)
    return canvas


def compose_picture(rows: Sequence, captions: Sequence[str] | None = None, *, banner: str | None = None):  # noqa: ANN201
    """The ``dinov3 pca`` picture: rows of equal width, each under its caption, optionally under a red banner.

    Every row is scaled (aspect kept; nearest when enlarging, so patches stay sharp) to the width of the widest
    row, so the grid has no ragged edge. Height: ``[CAPTION_HEIGHT if banner] + sum(CAPTION_HEIGHT if captions +
    row height)``. Returns a PIL RGB image (:func:`compose_picture_array` for the numpy array).
    """
    from PIL import Image

    return Image.fromarray(compose_picture_array(rows, captions, banner=banner))


def save_png(picture, path: str | os.PathLike[str]) -> None:  # noqa: ANN001
    """Save a PIL image, or a uint8 ``[H, W]`` / ``[H, W, 3]`` / ``[H, W, 4]`` array, as PNG atomically (:func:`~dinov3_integration.utils.atomic.atomic_path`: a temporary
    beside ``path``, renamed when complete; the permissions a plain ``open`` gives). Lossless. RGB, greyscale and
    RGBA pictures go through :func:`~dinov3_integration.pca.png.write_png` (about 10x faster than Pillow's
    encoder); other modes through Pillow with :data:`PNG_OPTIONS`. Either way only the file's size and the time
    change, never its pixels."""
    from pathlib import Path

    from .png import write_png

    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        if isinstance(picture, np.ndarray) or picture.mode in ("RGB", "L", "RGBA"):
            with open(tmp, "wb") as fh:
                write_png(fh, np.asarray(picture))
        else:
            picture.save(tmp, format="PNG", **PNG_OPTIONS)
