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


# ------------------------------------------------------------------------------------------------ the Aggregator
TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}
TINY_AGG = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "n_storage_tokens": 2}


def _tiny_aggregator(**kwargs: object) -> torch.nn.Module:
    from dinov3_integration.vggt_compat import Aggregator

    torch.manual_seed(0)
    agg = Aggregator(**{**TINY_AGG, "patch_embed": "dinov3_vits16", "patch_embed_config": TINY_VIT, **kwargs})
    return randomize_(agg, std=0.05).eval()


def _assert_same_aggregator(a: torch.nn.Module, b: torch.nn.Module, side: int = 16) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.normalization == a.normalization and not b.training
    x = torch.rand(2, 3, 3, 2 * side, 3 * side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (out_a, idx_a), (out_b, idx_b) = a(x, output_layers="all"), b(x, output_layers="all")
    assert idx_a == idx_b and len(out_a) == len(out_b) == a.depth
    assert all(torch.equal(p, q) for p, q in zip(out_a, out_b))
    assert out_a[-1].abs().mean() > 1e-3  # the comparison is not between zeros


def test_aggregator_save_pretrained_round_trip(tmp_path) -> None:
    from dinov3_integration.vggt_compat import Aggregator

    agg = _tiny_aggregator(patch_embed_config={**TINY_VIT, "weights": "sat493m"}, output_layers=[-1])
    agg.set_normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))  # not in the state dict: kept by config.json
    folder = agg.save_pretrained(tmp_path / "agg")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    vit = config["kwargs"]["patch_embed"]["dinov3_vit"]
    assert (
        vit["weights_tag"] == "sat493m" and vit["kwargs"]["depth"] == 1 and "patch_embed_config" not in config["kwargs"]
    )
    back = Aggregator.from_pretrained(folder)
    _assert_same_aggregator(agg, back)
    assert back.output_layers == [-1] and back.patch_embed.weights_tag == "sat493m"
    assert Aggregator.from_pretrained(folder, output_layers="all").output_layers == "all"
    with pytest.raises(TypeError, match="change the architecture"):
        Aggregator.from_pretrained(folder, depth=3)


@pytest.mark.parametrize("kind", ["assembled", "conv", "dinov2"])
def test_aggregator_round_trip_other_patch_embeddings(tmp_path, kind) -> None:
    from dinov3_integration.integrated import build_aggregator
    from dinov3_integration.vggt_compat import Aggregator

    torch.manual_seed(0)
    side = 16
    if kind == "assembled":  # a ViT module, as DINOv3IntegratedModel and `extract --aggregate` build it
        agg = build_aggregator(create_model("dinov3_vits16", **TINY_VIT), depth=2, num_register_tokens=2)
    elif kind == "conv":  # positional arguments, as VGGT's signature allows
        agg = Aggregator(32, 16, 32, 2, 2, 4.0, 3, patch_embed="conv")
    else:
        agg = Aggregator(**TINY_AGG, patch_size=14, patch_embed="dinov2_vits14_reg", patch_embed_config=TINY_VIT)
        side = 14
    randomize_(agg, std=0.05).eval()
    back = Aggregator.from_pretrained(agg.save_pretrained(tmp_path / kind))
    assert back.patch_embed_kind == agg.patch_embed_kind and back.num_register_tokens == agg.num_register_tokens
    _assert_same_aggregator(agg, back, side)


def test_aggregator_save_pretrained_refuses_what_it_cannot_write(tmp_path) -> None:
    from dinov3_integration.vggt_compat import Aggregator
    from dinov3_integration.vggt_compat.layers.block import Block
    from dinov3_integration.vggt_compat.layers.patch_embed import PatchEmbed

    class MyBlock(Block):
        pass

    agg = Aggregator(**TINY_AGG, patch_embed="conv", patch_size=16, block_fn=MyBlock)
    with pytest.raises(TypeError, match="block_fn=.*MyBlock.*cannot be written"):
        agg.save_pretrained(tmp_path / "a")
    agg = Aggregator(**TINY_AGG, patch_size=16, patch_embed=PatchEmbed(img_size=32, patch_size=16, embed_dim=32))
    with pytest.raises(TypeError, match="patch_embed=PatchEmbed .*cannot be written"):
        agg.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "a" / "model.safetensors").exists() and not (tmp_path / "b" / "config.json").exists()


def test_aggregator_from_a_hub_cache_offline(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    from _http_server import make_hf_cache
    from dinov3_integration.vggt_compat import Aggregator

    agg = _tiny_aggregator()
    folder = agg.save_pretrained(tmp_path / "saved")
    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    make_hf_cache(tmp_path / "hf", "someone/tiny-aggregator", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    back = Aggregator.from_pretrained("someone/tiny-aggregator", cache_dir=str(tmp_path / "hf"))
    _assert_same_aggregator(agg, back)


def test_aggregator_damaged_or_foreign_folders(tmp_path) -> None:
    from dinov3_integration.hub.errors import CheckpointFormatError
    from dinov3_integration.vggt_compat import Aggregator, StateDictMismatchError

    folder = _tiny_aggregator().save_pretrained(tmp_path / "agg")
    config = json.loads((folder / "config.json").read_text())
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config["kwargs"]["depth"] = 3
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(StateDictMismatchError, match=r"36 missing \(e\.g\. frame_blocks\.2\..*write it again") as info:
        Aggregator.from_pretrained(edited)
    assert info.value.missing_keys and all(".2." in k for k in info.value.missing_keys)
    config["kwargs"]["depth"], config["kwargs"]["embed_dim"] = 2, 64
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(StateDictMismatchError, match="with other shapes"):
        Aggregator.from_pretrained(edited)
    (edited / "config.json").write_text((folder / "config.json").read_text())
    (edited / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointFormatError, match="damaged or truncated"):
        Aggregator.from_pretrained(edited)
    vit = create_model("dinov3_vits16", **TINY_VIT).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not written by Aggregator.save_pretrained"):
        Aggregator.from_pretrained(vit)
    with pytest.raises(FileNotFoundError, match="Aggregator.from_vggt"):
        Aggregator.from_pretrained(tmp_path)


def test_aggregator_push_to_hub_without_network(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, object]] = []

    class FakeApi:
        def __init__(self, token=None) -> None:
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", (repo_id, private, exist_ok)))

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message, revision):
            from pathlib import Path

            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls.append(("upload", (repo_id, sorted(files), allow_patterns, revision)))
            (tmp_path / "uploaded").mkdir()
            for name, data in files.items():
                (tmp_path / "uploaded" / name).write_bytes(data)
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    from dinov3_integration.vggt_compat import Aggregator

    agg = _tiny_aggregator()
    url = agg.push_to_hub("me/tiny-agg", private=True, token="t0k")
    assert url == "https://huggingface.co/me/tiny-agg/commit/abc"
    assert calls[:2] == [("token", "t0k"), ("create", ("me/tiny-agg", True, True))]
    assert calls[2][1][:2] == ("me/tiny-agg", ["config.json", "model.safetensors"])
    _assert_same_aggregator(agg, Aggregator.from_pretrained(tmp_path / "uploaded"))
