"""Writing checkpoints in other layouts, and loading them back (``dinov3 convert``)."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.hub import convert_checkpoint, save_state_dict_file
from dinov3_integration.hub.errors import WeightsMismatchError
from dinov3_integration.models import create_model

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


@pytest.fixture()
def small():
    """A random ViT-S/16 of depth 2 (its periods are the float32 ones, as the peers compute them)."""
    torch.manual_seed(0)
    return randomize_(create_model("dinov3_vits16", depth=2), std=0.05).eval()


def test_hf_folder_loads_in_transformers(tmp_path, small) -> None:
    src = save_state_dict_file(small.state_dict(), tmp_path / "small.pth")
    folder = convert_checkpoint(src, tmp_path / "hf", to="hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    hf = transformers.DINOv3ViTModel.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        ours = small.forward_features(x)
    torch.testing.assert_close(ref[:, 0], ours["x_norm_clstoken"], atol=2e-5, rtol=0)
    torch.testing.assert_close(ref[:, 5:], ours["x_norm_patchtokens"], atol=2e-5, rtol=0)
    # and back: the Hugging Face folder loads into our model through the hub, with float32 periods
    back = create_model("dinov3_vits16", depth=2, weights=str(folder), rope_periods="float32")
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), atol=1e-6, rtol=0)


def test_official_and_safetensors_round_trip(tmp_path, small) -> None:
    src = save_state_dict_file(small.state_dict(), tmp_path / "small.pth")
    st = convert_checkpoint(src, tmp_path / "small.safetensors", to="safetensors")
    pth = convert_checkpoint(st, tmp_path / "again.pth", to="official")
    loaded = torch.load(pth, weights_only=True)
    assert set(loaded) == set(small.state_dict())
    for k, v in small.state_dict().items():
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        convert_checkpoint(src, tmp_path / "x.pth", to="safetensors")


def test_timm_layout_loads_in_timm(tmp_path, small) -> None:
    src = save_state_dict_file(small.state_dict(), tmp_path / "small.pth")
    with pytest.warns(UserWarning, match="cannot hold mask_token"):  # timm's Eva has none: dropped, said so
        out = convert_checkpoint(src, tmp_path / "timm.safetensors", to="timm")
    peer = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, depth=2, global_pool="token").eval()
    from safetensors.torch import load_file

    peer.load_state_dict(load_file(out), strict=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(peer(x), small(x), atol=1e-6, rtol=0)


def test_inconsistent_checkpoint_lists_keys(tmp_path, small) -> None:
    sd = small.state_dict()
    del sd["blocks.1.norm2.weight"]
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    sd["blocks.1.ls1.gamma"] = torch.zeros(7)
    src = save_state_dict_file(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError) as err:
        convert_checkpoint(src, tmp_path / "out.safetensors")
    text = str(err.value)
    assert "blocks.1.norm2.weight" in text and "blocks.0.extra.weight" in text and "blocks.1.ls1.gamma" in text
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_model_named(tmp_path, small) -> None:
    src = save_state_dict_file(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(WeightsMismatchError, match=r"do not fit dinov3_vits16: tensors 150 missing"):
        convert_checkpoint(src, tmp_path / "o.safetensors", model_name="dinov3_vits16")


def test_hf_weights_get_reference_periods_by_default(tmp_path) -> None:
    """Hugging Face files have no periods: by default the official bf16-rounded ones are used (the reference
    model's outputs), and ``rope_periods="float32"`` reproduces transformers instead."""
    from dinov3_integration.hub.formats import rope_periods

    small = randomize_(create_model("dinov3_vits16", depth=2), std=0.3).eval()  # large q/k: RoPE matters
    folder = convert_checkpoint(save_state_dict_file(small.state_dict(), tmp_path / "s.pth"), tmp_path / "hf", to="hf")
    hf = transformers.DINOv3ViTModel.from_pretrained(folder).eval()
    reference = create_model("dinov3_vits16", depth=2, weights=str(folder))
    matching_hf = create_model("dinov3_vits16", depth=2, weights=str(folder), rope_periods="float32")
    torch.testing.assert_close(reference.rope_embed.periods, rope_periods(64, mode="reference"), atol=0, rtol=0)
    torch.testing.assert_close(matching_hf.rope_embed.periods, rope_periods(64, mode="float32"), atol=0, rtol=0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 5:]
        assert (matching_hf.forward_features(x)["x_norm_patchtokens"] - ref).abs().max() < 2e-5
        assert (reference.forward_features(x)["x_norm_patchtokens"] - ref).abs().max() > 1e-4


def test_convert_command(tmp_path, small) -> None:
    import subprocess
    import sys

    src = save_state_dict_file(small.state_dict(), tmp_path / "small.pth")
    run = [sys.executable, "-m", "dinov3_integration", "convert"]
    ok = subprocess.run([*run, str(src), str(tmp_path / "hf"), "--to", "hf"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "hf" / "config.json").is_file()
    bad = subprocess.run(
        [*run, str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a checkpoint file" in bad.stderr
