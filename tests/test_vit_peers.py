"""Our ViT against Hugging Face transformers and timm loaded with the same random weights.

Both peers recompute RoPE periods in float32 (the official checkpoints hold bfloat16-rounded ones), so these
tests convert with ``periods="float32"``. timm divides by the periods exactly as the reference does, so it
matches to the bit on CPU. transformers multiplies by ``inv_freq = 1 / periods`` instead of dividing, which moves
the angles by up to ~5e-7 rad, and runs q/k/v as three products; the tolerance 2e-5 covers that (observed ~3e-7
for outputs of order 1).
"""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.hub import formats
from dinov3_integration.models import DinoVisionTransformer, create_model, get_model_spec

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

HF_TOL = 2e-5


def _all_tokens(out: dict) -> torch.Tensor:
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_storage_tokens"], out["x_norm_patchtokens"]], dim=1)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 48, 80)])
def test_matches_transformers(gated: bool, shape: tuple[int, ...]) -> None:
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128 if gated else 256,
        num_register_tokens=4,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
    )
    hf = randomize_(transformers.DINOv3ViTModel(cfg)).eval()
    model = DinoVisionTransformer(**formats.kwargs_from_hf_config(cfg.to_dict())).eval()
    model.load_state_dict(formats.to_official(hf.state_dict(), num_heads=4, periods="float32"), strict=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        ours = _all_tokens(model.forward_features(x))
    torch.testing.assert_close(ours, ref, atol=HF_TOL, rtol=0)


@pytest.mark.parametrize(
    ("timm_name", "ours"),
    [
        ("vit_small_patch16_dinov3", "dinov3_vits16"),
        ("vit_small_plus_patch16_dinov3", "dinov3_vits16plus"),
        ("vit_small_patch16_dinov3_qkvb", "dinov3_vits16"),
    ],
)
def test_matches_timm(timm_name: str, ours: str) -> None:
    peer = randomize_(timm.create_model(timm_name, pretrained=False, depth=2, global_pool="token")).eval()
    sd = formats.to_official(peer.state_dict(), periods="float32")
    kwargs = formats.infer_architecture(sd)
    expected = {**get_model_spec(ours).kwargs(), "depth": 2}
    for key in ("embed_dim", "num_heads", "ffn_layer", "ffn_ratio", "n_storage_tokens"):
        assert kwargs[key] == expected[key], key
    model = DinoVisionTransformer(**kwargs).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(_all_tokens(model.forward_features(x)), peer.forward_features(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), peer(x), atol=1e-6, rtol=0)


def test_reference_periods_differ_from_peers() -> None:
    """With the checkpoint's bf16-rounded periods our output is the reference's, measurably not timm's."""
    peer = randomize_(timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=2)).eval()
    model = DinoVisionTransformer(**formats.infer_architecture(formats.to_official(peer.state_dict()))).eval()
    model.load_state_dict(formats.to_official(peer.state_dict(), periods="reference"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (_all_tokens(model.forward_features(x)) - peer.forward_features(x)).abs().max()
    assert diff > 1e-6  # the float32-period conversion above matches timm to the bit


def test_round_trips_between_layouts() -> None:
    model = randomize_(create_model("dinov3_vits16", depth=2)).eval()
    sd = model.state_dict()
    mask = sd["blocks.0.attn.qkv.bias_mask"]
    assert mask.sum() == 2 * 384  # [1, 0, 1]
    back = formats.to_official(formats.official_to_hf(sd), num_heads=6, periods=sd["rope_embed.periods"])
    restored = create_model("dinov3_vits16", depth=2).eval()
    restored.load_state_dict(back, strict=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), atol=0, rtol=0)
    assert formats.detect_format(formats.official_to_hf(sd)) == "hf"
    assert (
        formats.detect_format(
            {f"model.{k}" if k.startswith("layer.") else k: v for k, v in formats.official_to_hf(sd).items()}
        )
        == "hf"
    )
    assert formats.detect_format(sd) == "official"


def test_unknown_layout_is_rejected() -> None:
    with pytest.raises(formats.CheckpointFormatError, match="cannot recognise"):
        formats.detect_format({"foo.weight": torch.zeros(1)})


def test_rope_periods_values() -> None:
    """Reference periods: 100 ** (j / 16), exact float32 and rounded to bfloat16 (as stored in checkpoints)."""
    ref = torch.tensor(
        [
            1.0,
            1.3359375,
            1.78125,
            2.375,
            3.15625,
            4.21875,
            5.625,
            7.5,
            10.0,
            13.3125,
            17.75,
            23.75,
            31.625,
            42.25,
            56.25,
            75.0,
        ]
    )
    torch.testing.assert_close(formats.rope_periods(64, mode="reference"), ref, atol=0, rtol=0)
    torch.testing.assert_close(formats.rope_periods(64, mode="float32")[1], torch.tensor(1.3335215), atol=1e-6, rtol=0)
    assert formats.rope_periods(128).numel() == 32


@pytest.mark.parametrize(
    ("ours", "timm_name"),
    [("dinov3_vits16", "vit_small_patch16_dinov3"), ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3")],
)
def test_full_size_small_models_match_both_peers(ours: str, timm_name: str) -> None:
    """The released ViT-S/16 and ViT-S+/16 architectures (full depth), same random weights in all three."""
    model = randomize_(create_model(ours), std=0.05).eval()
    with torch.no_grad():  # zero q/v biases: timm's primary variants have none
        for blk in model.blocks:
            blk.attn.qkv.bias.zero_()
    sd = model.state_dict()
    spec_kwargs = get_model_spec(ours).kwargs()
    hf_config = transformers.DINOv3ViTConfig(**formats.hf_config_from_kwargs(spec_kwargs))
    hf = transformers.DINOv3ViTModel(hf_config).eval()
    hf_sd = {("model." + k if k.startswith("layer.") else k): v for k, v in formats.official_to_hf(sd).items()}
    hf.load_state_dict(hf_sd, strict=True)
    peer = timm.create_model(timm_name, pretrained=False, global_pool="token").eval()
    peer.load_state_dict(formats.official_to_timm(sd), strict=True)
    # both peers recompute float32 periods: give ours the same ones for this comparison
    model.rope_embed.periods.copy_(formats.rope_periods(64, mode="float32"))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ours_tokens = _all_tokens(model.forward_features(x))
        torch.testing.assert_close(ours_tokens, peer.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours_tokens, hf(pixel_values=x).last_hidden_state, atol=HF_TOL, rtol=0)
