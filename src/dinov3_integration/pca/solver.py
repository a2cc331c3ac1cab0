"""The PCA of patch features, in numpy (float64): :class:`PCAFit`, :func:`fit_pca`, :func:`foreground_mask`,
:func:`pca_colors`.

Every function takes ``torch`` tensors or numpy arrays and answers in the same kind (torch is never imported for
numpy input, so ``dinov3 pca --from-features`` runs without it). Solver: the ``D x D`` covariance in float64 (one
symmetric product), its top eigenvectors by Lanczos with full re-orthogonalisation, stopped when every wanted Ritz
pair's residual is below ``1e-12`` of the largest eigenvalue (``numpy.linalg.eigh`` when it is not reached in
:data:`_MAX_LANCZOS` steps); small problems (``min(M, D) <= 64``) take a full SVD. The components are those of a
float64 SVD of the centred features; signs: the largest ``|loading|`` of each component is positive
(scikit-learn's ``svd_flip``), so pictures are reproducible.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_SMALL = 64  # min(M, D) at or under which the full SVD of the centred features is solved directly
_MAX_LANCZOS = 160  # Lanczos steps before falling back to numpy.linalg.eigh
_TOL = 1e-12  # residual ||C y - theta y|| of each wanted Ritz pair, relative to the largest eigenvalue


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_numpy(x: Any, dtype: Any) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like -> numpy ``dtype`` on the CPU."""
    if _is_torch(x):
        import torch

        return x.detach().to("cpu", {np.float32: torch.float32, np.float64: torch.float64}[dtype]).numpy()
    return np.asarray(x, dtype=dtype)


def _to_torch(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


@dataclass(frozen=True)
class PCAFit:
    """A fitted PCA: ``mean`` ``[D]``, ``components`` ``[k, D]`` (rows, unit norm), ``std`` ``[k]`` (sqrt of the
    explained variance, used for whitening); float64, torch tensors or numpy arrays like the fitted input."""

    mean: Any
    components: Any
    std: Any

    def transform(self, x: Any, whiten: bool = True) -> Any:
        """``[M, D] -> [M, k]`` (float64); divided by ``std`` when ``whiten``."""
        if _is_torch(self.mean):
            y = (x.to(self.mean.dtype) - self.mean) @ self.components.T
            return y / self.std.clamp_min(1e-12) if whiten else y
        y = (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T
        return y / np.maximum(self.std, 1e-12) if whiten else y


def _lanczos_top(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``k`` largest eigenpairs of the symmetric ``c`` ``[D, D]``: ``(values [k] descending, vectors [D, k])``,
    or None when Lanczos has not converged in :data:`_MAX_LANCZOS` steps (or met an invariant subspace too small)."""
    d = c.shape[0]
    steps = min(d, _MAX_LANCZOS)
    basis = np.empty((steps, d))  # orthonormal Krylov vectors, as rows
    images = np.empty((steps, d))  # c @ basis[j]
    v = np.random.default_rng(0).standard_normal(d)  # a fixed start: the same features give the same answer
    v /= np.linalg.norm(v)
    scale = 0.0
    for j in range(steps):
        basis[j] = v
        w = c @ v
        images[j] = w
        scale = max(scale, float(np.linalg.norm(w)))
        q = basis[: j + 1]
        before = float(np.linalg.norm(w))
        w = w - (q @ w) @ q  # full re-orthogonalisation (classical Gram-Schmidt) ...
        beta = float(np.linalg.norm(w))
        if beta < 0.7 * before:  # ... repeated when it cancelled much (Daniel-Gragg-Kaufman-Stewart)
            w = w - (q @ w) @ q
            beta = float(np.linalg.norm(w))
        invariant = beta <= 1e-13 * scale
        if j + 1 >= k and (invariant or (j + 1) % 8 == 0 or j + 1 == steps):
            t = q @ images[: j + 1].T  # the Rayleigh quotient [j+1, j+1]
            vals, vecs = np.linalg.eigh((t + t.T) / 2)
            top = vecs[:, ::-1][:, :k]
            y = q.T @ top  # Ritz vectors [D, k]
            resid = np.linalg.norm(images[: j + 1].T @ top - y * vals[::-1][:k], axis=0)
            if resid.max() <= _TOL * max(float(vals[-1]), np.finfo(float).tiny):
                return vals[::-1][:k], y
        if invariant:
            return None
        v = w / beta
    return None


def fit_pca(x: Any, k: int = 3) -> PCAFit:
    """Fit a ``k``-component PCA on ``x`` ``[M, D]``; the components are those of a float64 SVD.

    See the module docstring for the solver; pad components (zero, unit std) when ``min(M, D) < k``.

    Raises:
        ValueError: not ``[M, D]`` or fewer than 2 samples.
    """
    torch_in = _is_torch(x)
    x64 = _as_numpy(x, np.float64)
    if x64.ndim != 2:
        raise ValueError(f"expected features [M, D], got shape {tuple(x64.shape)}")
    if x64.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {x64.shape[0]}")
    m = x64.shape[0]
    mean, comps, var = _fit_moments(x64, x64.T @ x64, x64.sum(0), m, k)
    fit = PCAFit(mean, comps, np.sqrt(var))
    return PCAFit(*(_to_torch(a) for a in (fit.mean, fit.components, fit.std))) if torch_in else fit


def _fit_moments(
    rows: np.ndarray | None, gram: np.ndarray, total: np.ndarray, m: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [D], components [k, D], variances [k])`` from the uncentred moments ``gram = X^T X``, ``total = sum
    X`` of ``m`` samples (``rows``: the samples themselves, needed when the problem is small)."""
    d = gram.shape[0]
    mean = total / m
    k_eff = min(k, m, d)
    if min(m, d) <= _SMALL and rows is not None:
        _, s, vh = np.linalg.svd(rows - mean, full_matrices=False)
        comps, var = vh[:k_eff], s[:k_eff] ** 2 / (m - 1)
    else:
        cov = gram - np.outer(total, mean)  # X^T X - m mean mean^T: the centred scatter
        found = _lanczos_top(cov, k_eff)
        if found is None:
            vals, vecs = np.linalg.eigh(cov)
            found = vals[::-1][:k_eff], vecs[:, ::-1][:, :k_eff]
        vals, vecs = found
        comps, var = vecs.T, np.maximum(vals, 0.0) / (m - 1)
    # scikit-learn's svd_flip (u_based_decision=False): the largest |loading| of each component is positive.
    signs = np.sign(comps[np.arange(k_eff), np.abs(comps).argmax(1)])
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    if k_eff < k:  # degenerate input: pad with zero components so callers always get k columns
        comps = np.concatenate([comps, np.zeros((k - k_eff, d))])
        var = np.concatenate([var, np.ones(k - k_eff)])
    return mean, comps, var


def _median3x3(mask: np.ndarray) -> np.ndarray:
    """3x3 majority vote of a bool ``[h, w]`` map (edges replicated): at least 5 of the 9 neighbours."""
    p = np.pad(mask.astype(np.int8), 1, mode="edge")
    h, w = mask.shape
    votes = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return votes >= 5


def _mask_from_pc1(pc1: np.ndarray, smooth: bool) -> np.ndarray:
    """The foreground rule on the first-component projection ``[h, w]`` (see :func:`foreground_mask`)."""
    h, w = pc1.shape
    fg = pc1 > 0
    border = np.zeros((h, w), dtype=bool)
    border[0, :] = border[-1, :] = True
    border[:, 0] = border[:, -1] = True
    if fg[border].mean() > 0.5:
        fg = ~fg
    if smooth and h >= 3 and w >= 3:
        fg = _median3x3(fg)
    if not fg.any():  # never return an empty foreground
        fg = np.ones((h, w), dtype=bool)
    return fg


def foreground_mask(features: Any, smooth: bool = True) -> Any:
    """Foreground of ``[h, w, D]`` patch features by the sign of the first principal component -> bool ``[h, w]``.

    The side of the split that covers less of the image border is taken as the foreground (3x3 majority smoothing
    with ``smooth``; never empty).
    """
    f = _as_numpy(features, np.float64)
    h, w, d = f.shape
    flat = f.reshape(-1, d)
    pc1 = fit_pca(flat, 1).transform(flat, whiten=False)[:, 0].reshape(h, w)
    fg = _mask_from_pc1(pc1, smooth)
    return _to_torch(fg) if _is_torch(features) else fg


@dataclass
class _Frame:
    """One image: its rows ``[h*w, D]`` (float64), their moments, its foreground ``[h, w]`` and the foreground's
    moments (``fg_gram``, ``fg_total``, ``n_fg``)."""

    rows: np.ndarray
    gram: np.ndarray
    total: np.ndarray
    fg: np.ndarray
    fg_gram: np.ndarray
    fg_total: np.ndarray
    n_fg: int

    def fg_rows(self) -> np.ndarray:
        return self.rows if self.n_fg == self.rows.shape[0] else self.rows[self.fg.reshape(-1)]


def _frame(f32: np.ndarray, mask: bool) -> _Frame:
    """One image's rows, moments and foreground (one symmetric product for all rows, one for the smaller side)."""
    h, w, d = f32.shape
    rows = f32.reshape(-1, d).astype(np.float64)
    gram, total = rows.T @ rows, rows.sum(0)
    if mask:
        mean, comps, _ = _fit_moments(rows, gram, total, rows.shape[0], 1)
        fg = _mask_from_pc1((rows @ comps[0] - mean @ comps[0]).reshape(h, w), smooth=True)
    else:
        fg = np.ones((h, w), dtype=bool)
    flat = fg.reshape(-1)
    n_fg = int(flat.sum())
    if n_fg == flat.size:
        return _Frame(rows, gram, total, fg, gram, total, n_fg)
    if n_fg <= flat.size // 2:
        sel = rows[flat]
        return _Frame(rows, gram, total, fg, sel.T @ sel, sel.sum(0), n_fg)
    rest = rows[~flat]  # fewer rows: the foreground moments as all minus the background
    return _Frame(rows, gram, total, fg, gram - rest.T @ rest, total - rest.sum(0), n_fg)


def pca_colors(feature_maps: Sequence[Any], *, mask: bool = True, joint: bool = False) -> list[tuple[Any, Any]]:
    """Colour pictures of patch features.

    Args:
        feature_maps: ``[h_i, w_i, D]`` per image (sizes may differ); torch tensors or numpy arrays.
        mask: black out the background (first-component foreground mask).
        joint: fit one PCA over all images (same colours for the same parts across images/frames); otherwise one
            PCA per image.

    Returns:
        ``(rgb, fg)`` per image: ``rgb`` float32 ``[h, w, 3]`` in [0, 1] (``sigmoid(2 * whitened projection)``,
        background black), ``fg`` bool ``[h, w]``; torch tensors when the first map is one, else numpy.
    """
    torch_out = bool(feature_maps) and _is_torch(feature_maps[0])
    frames = [_frame(_as_numpy(f, np.float32), mask) for f in feature_maps]
    if joint:
        n = sum(f.n_fg for f in frames)
        small = min(n, frames[0].rows.shape[1]) <= _SMALL
        rows = np.concatenate([f.fg_rows() for f in frames]) if small else None
        fit = _fit_moments(rows, sum(f.fg_gram for f in frames), sum(f.fg_total for f in frames), n, 3)
        fits = [fit] * len(frames)
    else:  # one PCA per image on its foreground (all patches when the foreground is a single patch)
        fits = [
            _fit_moments(f.fg_rows(), f.fg_gram, f.fg_total, f.n_fg, 3)
            if f.n_fg >= 2
            else _fit_moments(f.rows, f.gram, f.total, f.rows.shape[0], 3)
            for f in frames
        ]
    out = []
    for frame, (mean, comps, var) in zip(frames, fits):
        h, w = frame.fg.shape
        proj = (frame.rows @ comps.T - mean @ comps.T) / np.maximum(np.sqrt(var), 1e-12)
        with np.errstate(over="ignore"):  # exp overflow -> sigmoid 0, as torch.sigmoid
            rgb = (1.0 / (1.0 + np.exp(-2.0 * proj))).astype(np.float32).reshape(h, w, 3)
        rgb = rgb * frame.fg[..., None]
        out.append((_to_torch(rgb), _to_torch(frame.fg)) if torch_out else (rgb, frame.fg))
    return out
