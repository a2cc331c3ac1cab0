"""PCA visualisation maths and pictures."""

from __future__ import annotations

import numpy as np
import torch

from dinov3_integration.pca import compose_rows, fit_pca, foreground_mask, pca_colors, render_row


def test_fit_pca_matches_numpy_svd_with_whitening() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g) @ torch.randn(10, 10, generator=g)
    fit = fit_pca(x, 3)
    y = fit.transform(x)
    assert y.shape == (200, 3)
    np.testing.assert_allclose(y.var(0, unbiased=True).numpy(), 1.0, rtol=1e-6)  # whitened
    xc = (x - x.mean(0)).double().numpy()
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(fit.components.numpy()), np.abs(vt[:3]), atol=1e-8)
    # sign convention (scikit-learn svd_flip): largest |loading| positive
    comps = fit.components
    assert (comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all()
    np.testing.assert_allclose(fit.std.numpy(), s[:3] / np.sqrt(199), rtol=1e-6)


def _object_features(h: int = 8, w: int = 10, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obj = torch.zeros(h, w, dtype=torch.bool)
    obj[2:6, 3:7] = True
    feats = 0.1 * torch.randn(h, w, d, generator=g)
    feats[obj] += torch.linspace(1, 2, d)
    return feats, obj


def test_foreground_is_the_object_not_the_border() -> None:
    feats, obj = _object_features()
    fg = foreground_mask(feats)
    assert (fg == obj).float().mean() > 0.9
    assert not fg[0].any() and not fg[-1].any()


def test_pca_colors_and_pictures() -> None:
    feats, obj = _object_features()
    ((rgb, fg),) = pca_colors([feats], mask=True)
    assert rgb.shape == (8, 10, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert (rgb[~fg] == 0).all() and (rgb[fg] > 0).any()
    joint = pca_colors([feats, feats.flip(1)], mask=False, joint=True)
    torch.testing.assert_close(joint[0][0].flip(1), joint[1][0])  # same features -> same colours
    image = torch.full((3, 128, 160), 7, dtype=torch.uint8)
    row = render_row(image, rgb, (128, 160))
    assert row.size == (320, 128)
    assert np.asarray(row)[:, :160].max() == 7
    alone = render_row(None, rgb, (64, 80), upsample="bilinear")
    assert alone.size == (80, 64)
    grid = compose_rows([row, alone])
    assert grid.size == (320, 192)


def _full_svd_pca(x: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The solver before the low-rank one: a full float64 SVD, components with scikit-learn's sign rule."""
    xc = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    return comps * signs[:, None], (s[:k] ** 2 / (x.shape[0] - 1)).sqrt()


def test_low_rank_solver_equals_the_full_svd() -> None:
    """Issue 15 item 3: the covariance/subspace solver gives the full SVD's components (same signs) and pictures."""
    g = torch.Generator().manual_seed(3)
    for m, d in [(600, 96), (40, 200)]:  # D > k + 8 (the refined path), and fewer samples than dimensions
        x = torch.randn(m, 12, generator=g) @ torch.randn(12, d, generator=g) + 0.2 * torch.randn(m, d, generator=g)
        fit = fit_pca(x, 3)
        comps, std = _full_svd_pca(x, 3)
        torch.testing.assert_close(fit.components, comps, rtol=0, atol=1e-6)
        torch.testing.assert_close(fit.std, std, rtol=1e-9, atol=0)
    feats, _ = _object_features(12, 14, 48)
    ((rgb, _),) = pca_colors([feats], mask=False)
    flat = feats.reshape(-1, 48).double()
    comps, std = _full_svd_pca(flat)
    want = torch.sigmoid(2 * ((flat - flat.mean(0)) @ comps.T / std)).float().reshape(12, 14, 3)
    torch.testing.assert_close(rgb, want, rtol=0, atol=1e-5)


def test_compose_picture_equal_widths_captions_and_banner() -> None:
    from dinov3_integration.pca import CAPTION_HEIGHT as C
    from dinov3_integration.pca import compose_picture, missing_input_panel

    feats, _ = _object_features()
    ((rgb, _),) = pca_colors([feats], mask=False)
    wide = render_row(missing_input_panel((32, 40)), rgb, (32, 40))  # 80 x 32
    narrow = render_row(missing_input_panel((40, 20)), rgb, (40, 20))  # 40 x 40
    picture = compose_picture([wide, narrow], ["a/very/long/path/to/wide.png", "narrow.png"], banner="RANDOM")
    assert picture.size == (80, C + C + 32 + C + 80)  # the narrow row scaled 2x to the common width
    arr = np.asarray(picture)
    assert (arr[:C] == (190, 0, 0)).all(-1).mean() > 0.5  # the banner
    assert (arr[2 * C + 32 + C :, :80] != 255).any(-1).all()  # no white margin beside the scaled row
    assert (np.asarray(missing_input_panel((4, 5))) == 200).all()
    assert compose_picture([wide]).size == wide.size
