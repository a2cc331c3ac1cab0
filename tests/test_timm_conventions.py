"""timm's create_model keywords and data config (issue 17 item 1), checked with timm's own functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize_
from dinov3_integration import create_model
from dinov3_integration.hub import formats
from dinov3_integration.hub.checkpoint_io import save_state_dict_file
from dinov3_integration.utils.normalization import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402

DEPTH = 3


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """timm's features_only ViT-S (random weights) and the same weights as an official-layout file."""
    torch.manual_seed(0)
    full = randomize_(timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=DEPTH), std=0.05)
    sd = full.state_dict()
    peer = timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, depth=DEPTH, features_only=True, out_indices=(0, 2)
    ).eval()
    kept = peer.model.state_dict()
    peer.model.load_state_dict({k: v for k, v in sd.items() if k in kept}, strict=True)
    path = save_state_dict_file(formats.to_official(sd, periods="float32"), tmp_path_factory.mktemp("w") / "w.pth")
    return path, peer


def test_features_only_matches_timm(timm_file: tuple[Path, torch.nn.Module]) -> None:
    path, peer = timm_file
    ours = create_model("dinov3_vits16", weights=path, depth=DEPTH, features_only=True, out_indices=(0, 2))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        got, want = ours(x), peer(x)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert a.shape == b.shape == (2, 384, 4, 3)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert ours.feature_info.channels() == peer.feature_info.channels() == [384, 384]
    assert ours.feature_info.reduction() == peer.feature_info.reduction() == [16, 16]
    assert ours.feature_info.module_name() == peer.feature_info.module_name() == ["blocks.0", "blocks.2"]
    assert ours.feature_info.get_dicts() == peer.feature_info.get_dicts()
    assert ours.feature_info.channels(-1) == 384
    # timm's default: the last 3 blocks, no norm
    default = create_model("dinov3_vits16", depth=4, features_only=True)
    assert default.feature_info.module_name() == ["blocks.1", "blocks.2", "blocks.3"]


def test_checkpoint_path_and_cfg_overlay_file_are_aliases_of_weights(timm_file) -> None:
    path, _ = timm_file
    x = torch.randn(1, 3, 32, 32)
    ref = create_model("dinov3_vits16", weights=path, depth=DEPTH)
    for kwargs in ({"checkpoint_path": path}, {"pretrained_cfg_overlay": {"file": str(path)}}):
        model = create_model("dinov3_vits16", depth=DEPTH, **kwargs)
        assert model.weights_source == ref.weights_source
        with torch.no_grad():
            assert torch.equal(model(x), ref(x))
    with pytest.raises(ValueError, match="two weight sources"):
        create_model("dinov3_vits16", weights="lvd1689m", checkpoint_path=path, depth=DEPTH)
    with pytest.raises(TypeError, match="features_only"):
        create_model("dinov3_vits16", depth=DEPTH, out_indices=(0,))


def test_num_classes_and_global_pool_through_create_model() -> None:
    torch.manual_seed(0)
    model = create_model("dinov3_vits16", depth=2, num_classes=7, global_pool="token+avg")
    assert model.get_classifier().weight.shape == (7, 768)
    assert model.pretrained_cfg["num_classes"] == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = torch.cat((feats["x_norm_clstoken"], feats["x_norm_patchtokens"].mean(1)), -1)
        torch.testing.assert_close(model(x), model.head(pooled))


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("weights", "mean", "std"), [("lvd1689m", IMAGENET_MEAN, IMAGENET_STD), ("sat493m", SAT_MEAN, SAT_STD)]
)
def test_timm_data_config_is_this_models(weights: str, mean, std) -> None:
    model = create_model("dinov3_vitl16", weights=weights, pretrained=False, device="meta")
    cfg = resolve_data_config({}, model=model)
    assert cfg == {
        "input_size": (3, 256, 256),
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    got = create_transform(**cfg)(_image())
    # what the numbers must be: short side to 256 (bilinear), centre 256 crop, [0, 1], normalised
    img = _image().resize((341, 256), Image.BILINEAR)
    left = round((341 - 256) / 2)  # torchvision CenterCrop: 42
    arr = torch.from_numpy(np.array(img.crop((left, 0, left + 256, 256)))).permute(2, 0, 1).float() / 255
    want = (arr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # an overlay wins, as in timm
    model.pretrained_cfg = {"input_size": (3, 224, 224)}
    assert resolve_data_config({}, model=model)["input_size"] == (3, 224, 224)
    overlaid = create_model("dinov3_vits16", depth=1, device="meta", pretrained_cfg_overlay={"crop_pct": 0.875})
    assert resolve_data_config({}, model=overlaid)["crop_pct"] == 0.875
