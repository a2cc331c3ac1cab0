"""FlexiViT pseudo-inverse resampling of the patch kernel (ViT-L/16 weights in ViT-L/14)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinov3_integration.hub.resample import resample_patch_embed


def test_same_size_is_identity() -> None:
    w = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(resample_patch_embed(w, 16), w, atol=0, rtol=0)


@pytest.mark.parametrize("new", [14, 8, 20])
def test_piecewise_constant_input_keeps_its_response(new: int) -> None:
    w = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    w_new = resample_patch_embed(w, new)
    assert w_new.shape == (8, 3, new, new)
    values = torch.randn(1, 3, 3, 4, dtype=torch.float64)  # one colour per patch on a 3x4 grid
    img_old = values.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    img_new = values.repeat_interleave(new, dim=2).repeat_interleave(new, dim=3)
    out_old = F.conv2d(img_old, w, stride=16)
    out_new = F.conv2d(img_new, w_new, stride=new)
    torch.testing.assert_close(out_new, out_old, atol=1e-9, rtol=1e-9)


def test_upsampling_preserves_resized_patches_exactly() -> None:
    """For p' > p the system is exactly solvable: any patch and its bilinear resize give the same token."""
    w = torch.randn(4, 3, 14, 14, dtype=torch.float64)
    w_new = resample_patch_embed(w, 16)
    x = torch.randn(5, 3, 14, 14, dtype=torch.float64)
    x_new = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(F.conv2d(x_new, w_new), F.conv2d(x, w), atol=1e-9, rtol=1e-9)


def test_rejects_non_kernel() -> None:
    with pytest.raises(ValueError, match=r"\[D, C, p, p\]"):
        resample_patch_embed(torch.randn(3, 16, 16), 14)
