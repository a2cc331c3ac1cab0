"""Registry: names, aliases, parameter counts (the table of Meta's dinov3/hub/backbones.py), FLOPs, meta-device builds."""

from __future__ import annotations

import pytest
import torch

from dinov3_integration.models import (
    count_flops,
    create_model,
    dinov3_vitl16,
    get_model_spec,
    list_models,
    model_info,
)

# Parameter counts of the reference hub models (they include mask_token and, where present, local_cls_norm).
REFERENCE_PARAMS = {
    ("dinov3_vits16", None): 21_601_152,
    ("dinov3_vits16plus", None): 28_697_472,
    ("dinov3_vitb16", None): 85_669_632,
    ("dinov3_vitl16", None): 303_154_176,
    ("dinov3_vitl16", "sat493m"): 303_156_224,
    ("dinov3_vitl16plus", None): 403_915_776,
    ("dinov3_vith16plus", None): 840_633_600,
    ("dinov3_vit7b16", None): 6_716_043_264,
    ("dinov3_vit7b16", "sat493m"): 6_716_043_264,
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "weights"), list(REFERENCE_PARAMS))
def test_parameter_counts_match_reference(name: str, weights: str | None) -> None:
    model = create_model(name, pretrained=False, weights=weights, device="meta")  # the tag selects the architecture
    assert next(model.parameters()).device.type == "meta"
    expected = REFERENCE_PARAMS[(name, weights)]
    assert _count(model) == expected
    assert model_info(name, weights=weights).params == expected


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_on_meta_and_info_counts_match(name: str) -> None:
    model = create_model(name, device="meta")
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    info = model_info(name)
    assert info.params == _count(model)
    assert info.patch_size == model.patch_size


def test_extra_variants() -> None:
    g = create_model("dinov3_vitg16", device="meta")
    assert (g.embed_dim, g.n_blocks, g.num_heads, g.patch_size) == (1536, 40, 24, 16)
    l14 = create_model("dinov3_vitl14", device="meta")
    assert (l14.embed_dim, l14.n_blocks, l14.patch_size) == (1024, 24, 14)
    assert l14.patch_embed.proj.weight.shape == (1024, 3, 14, 14)


def test_satellite_settings_selected_by_weights() -> None:
    assert create_model("dinov3_vitl16", device="meta").local_cls_norm is None
    sat = dinov3_vitl16(pretrained=False, weights="sat493m", device="meta")
    assert sat.local_cls_norm is not None and sat.untie_global_and_local_cls_norm


def test_reg_alias_and_listing() -> None:
    assert get_model_spec("dinov3_vitl16_reg").name == "dinov3_vitl16"
    assert list_models("*vitl*") == ["dinov3_vitl16", "dinov3_vitl16plus", "dinov3_vitl14"]
    assert "dinov3_vitg16" not in list_models(pretrained=True)
    assert len(list_models()) == 9


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'dinov3_vitl61'.*'dinov3_vitl16'"):
        create_model("dinov3_vitl61")
    with pytest.raises(ValueError, match="dinov3_vits16"):
        get_model_spec("dinov3_vit_s16")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"'embed_dims' \(did you mean 'embed_dim'\?\)"):
        create_model("dinov3_vits16", embed_dims=64, device="meta")


def test_flops_formula() -> None:
    """ViT-S/16 at 224 is ~9.4 GFLOP, and the formula is 2 x MACs of the matmuls."""
    assert model_info("dinov3_vits16").gflops == pytest.approx(9.4, abs=0.05)
    assert model_info("dinov3_vitb16", 512).gflops == pytest.approx(215.0, rel=0.01)
    assert model_info("dinov3_vit7b16").gflops == pytest.approx(2725, rel=0.01)
    kw = {
        "embed_dim": 8,
        "depth": 1,
        "num_heads": 2,
        "patch_size": 4,
        "n_storage_tokens": 0,
        "ffn_layer": "mlp",
        "ffn_ratio": 1.0,
    }
    # 1 patch + cls = 2 tokens: qkv+proj 2*4*64=512, mlp 2*2*64=256, attention 2*4*8=64, patch 48*8=384 (MACs)
    assert count_flops(kw, 4, 4) == 2 * (512 + 256 + 64 + 384)


def test_flops_match_counted_macs() -> None:
    """The formula against MACs counted by running a small model under FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("dinov3_vits16", depth=2).eval()
    x = torch.randn(1, 3, 64, 96)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    expected = count_flops({**get_model_spec("dinov3_vits16").kwargs(), "depth": 2}, 64, 96)
    n_tokens, dim, depth = 5 + 4 * 6, 384, 2
    attention = 2 * depth * 2 * n_tokens**2 * dim  # QK^T and AV: the counter does not see SDPA on CPU
    assert counter.get_total_flops() == expected - attention
