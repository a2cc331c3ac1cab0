"""PCA visualisation of dense DINOv3 features (the "rainbow" pictures of the official ``notebooks/pca.ipynb``).

Recipe (as in the notebook), with one substitution:

1. last-layer patch features, normed (``get_intermediate_layers(norm=True)``), at a high resolution (768 px in the
   notebook);
2. a foreground mask. The notebook uses a trained linear foreground classifier, which is not distributed; here the
   mask is the sign of the **first principal component** of all patches (the side that touches the image border
   less is the foreground), smoothed with a 3x3 median filter. It is optional (``mask=False``);
3. PCA with 3 components and whitening, fitted on the foreground patches (all patches without a mask);
4. colours ``sigmoid(2 * projection)``, background set to black;
5. the ``h x w`` colour grid upsampled (nearest) to the input size and drawn beside the input.

Everything is plain ``torch``; no scikit-learn. :func:`fit_pca` says how the components are solved for and the sign
rule (scikit-learn's: the largest loading of each component is positive) that makes pictures reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .utils.atomic import atomic_path


@dataclass(frozen=True)
class PCAFit:
    """A fitted PCA: ``mean`` ``[D]``, ``components`` ``[k, D]`` (rows, unit norm), ``std`` ``[k]`` (sqrt of the
    explained variance, used for whitening)."""

    mean: Tensor
    components: Tensor
    std: Tensor

    def transform(self, x: Tensor, whiten: bool = True) -> Tensor:
        """``[M, D] -> [M, k]``; divided by ``std`` when ``whiten``."""
        y = (x.to(self.mean.dtype) - self.mean) @ self.components.T
        return y / self.std.clamp_min(1e-12) if whiten else y


_OVERSAMPLE = 8  # extra directions kept from the float32 eigendecomposition for the float64 refinement


def fit_pca(x: Tensor, k: int = 3) -> PCAFit:
    """Fit a ``k``-component PCA on ``x`` ``[M, D]``; the components are those of a float64 SVD.

    Solver (``M x D^2`` work instead of a full SVD's ``M x D x min(M, D)`` in float64): the ``D x D`` covariance in
    float32, its eigenvectors, then two float64 subspace iterations and a Rayleigh-Ritz step on the top ``k + 8`` of them
    (exact when ``D <= k + 8``; otherwise the float32 error shrinks with the spectral gap). Signs: the largest
    ``|loading|`` of each component is positive (scikit-learn's ``svd_flip``), so pictures are reproducible.

    Raises:
        ValueError: not ``[M, D]`` or fewer than 2 samples.
    """
    if x.ndim != 2:
        raise ValueError(f"expected features [M, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {x.shape[0]}")
    x64 = x.detach().to("cpu", torch.float64)
    mean = x64.mean(0)
    xc = x64 - mean
    m, d = xc.shape
    q = min(d, k + _OVERSAMPLE)
    if q < d:
        xc32 = xc.float()
        _, vecs = torch.linalg.eigh(xc32.T @ xc32)  # ascending eigenvalues
        basis = vecs[:, -q:].double()
        for _ in range(2):  # subspace iterations in float64
            basis, _ = torch.linalg.qr(xc.T @ (xc @ basis))
    else:
        basis = torch.eye(d, dtype=torch.float64)
    _, s, wh = torch.linalg.svd(xc @ basis, full_matrices=False)  # [M, q]: the small SVD
    vh = wh @ basis.T  # [q, D] right singular vectors of xc (in that subspace)
    k_eff = min(k, m, d)
    comps = vh[:k_eff]
    # scikit-learn's svd_flip (u_based_decision=False): the largest |loading| of each component is positive.
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    var = s[:k_eff] ** 2 / (m - 1)
    if k_eff < k:  # degenerate input: pad with zero components so callers always get k columns
        comps = torch.cat([comps, comps.new_zeros(k - k_eff, comps.shape[1])])
        var = torch.cat([var, var.new_ones(k - k_eff)])
    return PCAFit(mean, comps, var.sqrt())


def _median3x3(mask: Tensor) -> Tensor:
    """3x3 median filter of a bool ``[h, w]`` map (majority vote, edges replicated)."""
    x = mask.float()[None, None]
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    votes = F.avg_pool2d(x, 3, stride=1)[0, 0]
    return votes > 0.5


def foreground_mask(features: Tensor, smooth: bool = True) -> Tensor:
    """Foreground of ``[h, w, D]`` patch features by the sign of the first principal component -> bool ``[h, w]``.

    The side of the split that covers less of the image border is taken as the foreground.
    """
    h, w, d = features.shape
    flat = features.reshape(-1, d)
    pc1 = fit_pca(flat, 1).transform(flat, whiten=False)[:, 0].reshape(h, w)
    fg = pc1 > 0
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = True
    border[:, 0] = border[:, -1] = True
    if fg[border].float().mean() > 0.5:
        fg = ~fg
    if smooth and h >= 3 and w >= 3:
        fg = _median3x3(fg)
    if not fg.any():  # never return an empty foreground
        fg = torch.ones(h, w, dtype=torch.bool)
    return fg


def pca_colors(
    feature_maps: Sequence[Tensor], *, mask: bool = True, joint: bool = False
) -> list[tuple[Tensor, Tensor]]:
    """Colour pictures of patch features.

    Args:
        feature_maps: ``[h_i, w_i, D]`` per image (sizes may differ).
        mask: black out the background (first-component foreground mask).
        joint: fit one PCA over all images (same colours for the same parts across images/frames); otherwise one
            PCA per image.

    Returns:
        ``(rgb, fg)`` per image: ``rgb`` float ``[h, w, 3]`` in [0, 1], ``fg`` bool ``[h, w]``.
    """
    maps = [f.detach().to("cpu", torch.float32) for f in feature_maps]
    fgs = [foreground_mask(f) if mask else torch.ones(f.shape[:2], dtype=torch.bool) for f in maps]
    fits: list[PCAFit]
    if joint:
        fit = fit_pca(torch.cat([f[m] for f, m in zip(maps, fgs)]), 3)
        fits = [fit] * len(maps)
    else:
        fits = [fit_pca(f[m] if int(m.sum()) >= 2 else f.reshape(-1, f.shape[-1]), 3) for f, m in zip(maps, fgs)]
    out = []
    for f, m, fit in zip(maps, fgs, fits):
        h, w, d = f.shape
        proj = fit.transform(f.reshape(-1, d)).reshape(h, w, 3)
        rgb = torch.sigmoid(2.0 * proj).float()
        rgb = rgb * m[..., None]
        out.append((rgb, m))
    return out


def render_row(image: Tensor | None, rgb: Tensor, size: tuple[int, int], upsample: str = "nearest"):  # noqa: ANN201
    """One picture row: the input (uint8 ``[3, H, W]``, or None) beside the PCA colours upsampled to ``size``.

    Returns:
        A PIL RGB image of ``(2W) x H`` (``W x H`` without an input).
    """
    from PIL import Image

    H, W = size
    x = rgb.permute(2, 0, 1)[None]  # [1, 3, h, w]
    mode = {"nearest": "nearest", "bilinear": "bilinear"}[upsample]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(x, size=(H, W), mode=mode, **kwargs)[0].clamp(0, 1)
    pca_img = (up * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    panels = []
    if image is not None:
        if tuple(image.shape[-2:]) != (H, W):
            raise ValueError(f"input panel is {tuple(image.shape[-2:])}, expected {(H, W)}")
        panels.append(image.permute(1, 2, 0).contiguous().numpy())
    panels.append(pca_img)
    row = Image.new("RGB", (sum(p.shape[1] for p in panels), H))
    x0 = 0
    for p in panels:
        row.paste(Image.fromarray(p), (x0, 0))
        x0 += p.shape[1]
    return row


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


def missing_input_panel(size: tuple[int, int]) -> Tensor:
    """A grey uint8 ``[3, H, W]`` panel standing in for an input image that cannot be shown."""
    return torch.full((3, *size), 200, dtype=torch.uint8)


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


def compose_picture(rows: Sequence, captions: Sequence[str] | None = None, *, banner: str | None = None):  # noqa: ANN201
    """The ``dinov3 pca`` picture: rows of equal width, each under its caption, optionally under a red banner.

    Every row is scaled (aspect kept; nearest when enlarging, so patches stay sharp) to the width of the widest
    row, so the grid has no ragged edge. Height: ``[CAPTION_HEIGHT if banner] + sum(CAPTION_HEIGHT if captions +
    row height)``.
    """
    from PIL import Image

    if not rows:
        raise ValueError("nothing to draw")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")
    width = max(r.width for r in rows)
    parts = []
    if banner is not None:
        parts.append(caption_strip(banner, width, color=(255, 255, 255), background=(190, 0, 0), keep_end=False))
    for i, row in enumerate(rows):
        if row.width != width:
            height = max(1, round(row.height * width / row.width))
            row = row.resize((width, height), Image.NEAREST if width > row.width else Image.LANCZOS)
        if captions is not None:
            parts.append(caption_strip(captions[i], width))
        parts.append(row)
    return compose_rows(parts)


def save_png(picture, path: str | os.PathLike[str]) -> None:  # noqa: ANN001
    """Save a PIL image as PNG atomically (:func:`~dinov3_integration.utils.atomic.atomic_path`: a temporary
    beside ``path``, renamed when complete; the permissions a plain ``open`` gives)."""
    from pathlib import Path

    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        picture.save(tmp, format="PNG")
