"""One preprocessing convention, made explicit (issue 17 item 3): ``make_transform(model)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from dinov3_integration import DINOv3IntegratedModel, create_model
from dinov3_integration.transforms import input_convention, make_transform
from dinov3_integration.utils.normalization import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD
from dinov3_integration.vggt_compat import Aggregator


def meta_readme_transform(resize_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """``make_transform`` of Meta's DINOv3 README, verbatim."""
    to_tensor = v2.ToImage()
    resize = v2.Resize((resize_size, resize_size), antialias=True)
    to_float = v2.ToDtype(torch.float32, scale=True)
    normalize = v2.Normalize(mean=mean, std=std)
    return v2.Compose([to_tensor, resize, to_float, normalize])


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))


def test_vit_transform_is_meta_readme_transform() -> None:
    vit = create_model("dinov3_vits16", depth=1, device="meta")
    assert input_convention(vit) == "normalized"
    got = make_transform(vit)(_image())
    assert got.shape == (3, 256, 256)
    assert torch.equal(got, meta_readme_transform()(_image()))
    sat = create_model("dinov3_vitl16", weights="sat493m", pretrained=False, device="meta")
    assert torch.equal(make_transform(sat, resize=32)(_image()), meta_readme_transform(32, SAT_MEAN, SAT_STD)(_image()))
    assert input_convention(create_model("dinov3_vits16", depth=3, device="meta", features_only=True)) == "normalized"
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        make_transform(vit, resize=250)


def test_integrated_and_aggregator_take_unit_range() -> None:
    torch.manual_seed(0)
    model = DINOv3IntegratedModel(
        "dinov3_vits16", backbone_overrides={"depth": 2, "embed_dim": 64, "num_heads": 4}, img_size=32
    ).eval()
    assert input_convention(model) == "unit"
    unit = make_transform(model, resize=32)(_image())
    assert 0.0 <= float(unit.min()) and float(unit.max()) <= 1.0
    normed = make_transform(model.backbone, resize=32)(_image())
    with torch.no_grad():
        ours = model(unit[None])["cls_token"]
        bare = model.backbone(normed[None])
    torch.testing.assert_close(ours, bare, atol=1e-5, rtol=1e-5)  # the same numbers through both conventions
    agg = Aggregator(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=4, patch_embed="conv")
    assert input_convention(agg) == "unit"
    assert len(make_transform(agg, resize=32).transforms) == 3  # no Normalize: the Aggregator normalises inside
