"""timm's own ``vit_*_patch16_dinov3`` state dicts (issue 12.6): the main models have no qkv bias.

The state dicts come from ``timm.create_model(name, pretrained=False)`` (keys and shapes exactly as timm's released
files have them; values randomised so every tensor matters). They load into ``create_model`` and
``dinov3 convert --to official`` turns them into files a strict loader of the reference layout accepts; outputs
are compared with timm's own forward on the same weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov3_integration.factory import create_model
from dinov3_integration.hub import convert_checkpoint, save_state_dict_file

timm = pytest.importorskip("timm")

CASES = [
    ("dinov3_vits16", "vit_small_patch16_dinov3"),
    ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3"),
    ("dinov3_vitb16", "vit_base_patch16_dinov3"),
    ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb"),
]


def timm_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    peer = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0.0, 0.02)
    return peer


def compare(ours: torch.nn.Module, peer: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = peer.forward_features(x)
        out = ours.eval().forward_features(x)
    torch.testing.assert_close(out["x_norm_clstoken"], ref[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["x_norm_patchtokens"], ref[:, 5:], atol=1e-5, rtol=0)


def check(tmp_path: Path, model_name: str, timm_name: str) -> None:
    peer = timm_model(timm_name)
    sd = peer.state_dict()
    assert any(k.endswith("attn.q_bias") for k in sd) == timm_name.endswith("_qkvb")
    path = save_state_dict_file(sd, tmp_path / f"{timm_name}.safetensors")

    ours = create_model(model_name, weights=path, rope_periods="float32")
    compare(ours, peer)

    out = convert_checkpoint(path, tmp_path / "official.pth", to="official", periods="float32")
    official = torch.load(out, weights_only=True)
    reference_layout = create_model(model_name, pretrained=False, device="meta")
    assert set(official) == set(reference_layout.state_dict())
    reference_layout.load_state_dict(official, strict=True, assign=True)  # strict, as Meta's hub loads the file
    if not timm_name.endswith("_qkvb"):
        bias, mask = official["blocks.0.attn.qkv.bias"], official["blocks.0.attn.qkv.bias_mask"]
        assert not bias.any() and not mask.any()  # zero bias, zero mask: as the released official files
    compare(reference_layout, peer)


@pytest.mark.parametrize(("model_name", "timm_name"), CASES)
def test_timm_state_dicts_load_and_convert_to_official(tmp_path: Path, model_name: str, timm_name: str) -> None:
    check(tmp_path, model_name, timm_name)


def test_timm_vit_large(tmp_path: Path) -> None:
    check(tmp_path, "dinov3_vitl16", "vit_large_patch16_dinov3")
