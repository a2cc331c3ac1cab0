"""Hugging Face conventions (issue 17 item 2): save_pretrained / from_pretrained, AutoImageProcessor on a converted
folder, and the ``output_hidden_states`` equivalent, checked against transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize_
from dinov3_integration import DinoVisionTransformer, create_model
from dinov3_integration.hub import convert_checkpoint, save_state_dict_file
from dinov3_integration.transforms import make_transform
from dinov3_integration.utils.normalization import SAT_MEAN, SAT_STD

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def small() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return randomize_(create_model("dinov3_vits16", depth=2), std=0.05).eval()


def test_save_pretrained_round_trip(tmp_path, small) -> None:
    model = create_model("dinov3_vitl16", weights="sat493m", pretrained=False, depth=2, num_classes=3)
    model.reset_classifier(4, global_pool="token+avg")
    randomize_(model, std=0.05).eval()
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["kwargs"]["untie_global_and_local_cls_norm"] is True and config["kwargs"]["num_classes"] == 4
    back = DinoVisionTransformer.from_pretrained(folder)
    assert not back.training and back.model_name == "dinov3_vitl16" and back.weights_tag == "sat493m"
    assert back.pretrained_cfg["mean"] == SAT_MEAN
    assert back.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    # the folder is also a weights source for create_model
    again = create_model("dinov3_vitl16", weights=folder, depth=2, num_classes=4, global_pool="token+avg")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        DinoVisionTransformer.from_pretrained(tmp_path)


def test_converted_folder_has_an_auto_image_processor(tmp_path, small) -> None:
    src = save_state_dict_file(small.state_dict(), tmp_path / "small_sat493m.pth")
    folder = convert_checkpoint(src, tmp_path / "hf", to="hf")
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == list(SAT_MEAN) and list(processor.image_std) == list(SAT_STD)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    got = processor(images=image, return_tensors="pt")["pixel_values"]
    want = make_transform(small, resize=224, weights="sat493m")(image)
    assert got.shape == (1, 3, 224, 224)
    # transformers resizes the float image, the reference the uint8 one: rounding differences only
    torch.testing.assert_close(got[0], want, atol=0.03, rtol=0)
    assert (got[0] - want).abs().mean() < 1e-2  # about half a grey level over std


def test_output_hidden_states_equivalent(tmp_path, small) -> None:
    folder = convert_checkpoint(save_state_dict_file(small.state_dict(), tmp_path / "s.pth"), tmp_path / "hf", to="hf")
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        hidden = hf(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings, then each block
        ours = small.forward_intermediates(
            x, norm=False, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
        )
    assert len(hidden) == len(ours) + 1
    for h, (patches, prefix) in zip(hidden[1:], ours):
        torch.testing.assert_close(h, torch.cat((prefix, patches), dim=1), atol=3e-5, rtol=0)


def test_integrated_model_save_pretrained_round_trip(tmp_path) -> None:
    from dinov3_integration import DINOv3IntegratedModel

    torch.manual_seed(0)
    tiny = {"depth": 2, "embed_dim": 64, "num_heads": 4}
    model = DINOv3IntegratedModel(
        "dinov3_vits16", backbone_overrides=tiny, img_size=32, use_aggregator=True, aggregator_depth=1
    )
    randomize_(model, std=0.05).eval()
    folder = model.save_pretrained(tmp_path / "integrated")
    back = DINOv3IntegratedModel.from_pretrained(folder)
    assert back.to_config().to_dict() == model.to_config().to_dict()
    clips = torch.rand(1, 2, 3, 32, 48)
    with torch.no_grad():
        a, b = model(clips), back(clips)
    assert a.keys() == b.keys()
    for key in ("features", "cls_token", "patch_tokens"):
        assert torch.equal(a[key], b[key])
    assert all(torch.equal(x, y) for x, y in zip(a["output_list"], b["output_list"]) if x is not None)
