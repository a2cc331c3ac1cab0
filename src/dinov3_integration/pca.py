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

Everything is plain ``torch`` (SVD); no scikit-learn. Component signs follow scikit-learn's convention (the largest
loading of each component is positive) so pictures are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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


def fit_pca(x: Tensor, k: int = 3) -> PCAFit:
    """Fit a ``k``-component PCA on ``x`` ``[M, D]`` (computed in float64 for stability).

    Raises:
        ValueError: fewer than 2 samples.
    """
    if x.ndim != 2:
        raise ValueError(f"expected features [M, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {x.shape[0]}")
    x = x.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    k_eff = min(k, vh.shape[0])
    comps = vh[:k_eff]
    # scikit-learn's svd_flip (u_based_decision=False): the largest |loading| of each component is positive.
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    var = s[:k_eff] ** 2 / (x.shape[0] - 1)
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


def save_png(picture, path: str | os.PathLike[str]) -> None:  # noqa: ANN001
    """Save a PIL image as PNG atomically (temporary file beside ``path``, then ``os.replace``)."""
    import tempfile
    from pathlib import Path

    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            picture.save(fh, format="PNG")
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
