"""The VGGT-compatible Aggregator: golden fixtures, DINOv3 patch embedding, memory features, weights, bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from conftest import fixture_config, fixture_state_dict, load_fixture
from dinov3_integration.models import SAT_MEAN, SAT_STD, create_model
from dinov3_integration.vggt_compat import Aggregator, StateDictMismatchError, extract_aggregator_state_dict
from dinov3_integration.vggt_compat.layers import DinoVisionTransformer

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def tiny(**kwargs) -> Aggregator:
    """A small conv-patch Aggregator (embed 32, 4 heads, depth 2, patch 14)."""
    torch.manual_seed(0)
    defaults = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, patch_embed="conv")
    return Aggregator(**{**defaults, **kwargs}).eval()


def tiny_dinov2(**kwargs) -> Aggregator:
    config = dict(embed_dim=32, depth=1, num_heads=2)
    return tiny(patch_embed="dinov2_vitl14_reg", patch_embed_config=config, **kwargs)


def tiny_dinov3(embed_dim: int = 384, **kwargs) -> Aggregator:
    torch.manual_seed(0)
    return Aggregator(
        img_size=32,
        patch_size=16,
        embed_dim=embed_dim,
        depth=2,
        num_heads=6 if embed_dim % 6 == 0 else 4,
        patch_embed="dinov3_vits16",
        patch_embed_config={"depth": 1},
        **kwargs,
    ).eval()


def images(B: int = 1, S: int = 3, H: int = 28, W: int = 42, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(seed))


def block_inputs(agg: Aggregator, x: torch.Tensor) -> torch.Tensor:
    """The tokens ``[B * S, P, C]`` that reach ``frame_blocks[0]``."""
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("x", args[0].clone())

    handle = agg.frame_blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            agg(x)
    finally:
        handle.remove()
    return seen["x"]


# ------------------------------------------------------------------------------------------------ golden fixtures


@pytest.mark.parametrize("name", ["agg_conv_tiny", "agg_dinov2_tiny"])
def test_matches_vggt_reference_outputs(name):
    meta, tensors = load_fixture(name)
    config = fixture_config(meta)
    pe_config = json.loads(meta["patch_embed_config"])
    if pe_config is not None:  # a tiny DINOv2-with-registers ViT instead of VGGT's ViT-L
        config["patch_embed"] = "dinov2_vitl14_reg"
        agg = Aggregator(**config, patch_embed_config=pe_config)
        assert isinstance(agg.patch_embed, DinoVisionTransformer)
    else:
        agg = Aggregator(**config)
    agg.load_state_dict(fixture_state_dict(tensors), strict=True)
    agg.eval()
    with torch.no_grad():
        outputs, patch_start_idx = agg(tensors["input"])
    assert patch_start_idx == int(meta["patch_start_idx"])
    assert len(outputs) == int(meta["num_outputs"])
    for i, out in enumerate(outputs):
        ref = tensors[f"out.{i}"]
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ layout and contract


def test_token_layout_and_four_dim_input():
    agg = tiny()
    x = images(B=2, S=3)
    tokens = block_inputs(agg, x).view(2, 3, -1, 32)
    assert tokens.shape[2] == 5 + 2 * 3
    cam, reg = agg.camera_token[0], agg.register_token[0]
    assert torch.equal(tokens[:, 0, 0], cam[0, 0].expand(2, -1))  # frame 0: slot 0
    assert torch.equal(tokens[:, 2, 0], cam[1, 0].expand(2, -1))  # other frames: slot 1
    assert torch.equal(tokens[:, 1, 1:5], reg[1].expand(2, -1, -1))
    with torch.no_grad():
        out4, _ = agg(x[1])  # [S, 3, H, W] is B = 1
        out5, _ = agg(x[1:2])
    assert all(torch.equal(a, b) for a, b in zip(out4, out5))


def test_output_layers_selection_is_exact():
    agg = tiny(depth=4)
    x = images(B=1, S=2)
    with torch.no_grad():
        full, _ = agg(x)
        picked, _ = agg(x, output_layers=[3, -4, 1])
        single, _ = agg(x, output_layers=-1)
    # Issue 12: a kept layer answers its absolute (and negative) index; iteration yields the kept ones in order.
    assert len(full) == 4 and len(picked) == 4 and picked.layers == [0, 1, 3] and len(list(picked)) == 3
    for out, layer in zip(picked, [0, 1, 3]):
        assert torch.equal(out, full[layer]) and torch.equal(picked[layer], full[layer])
    assert torch.equal(single[-1], full[3]) and single.layers == [3]
    padded = tiny(depth=4, output_layers=[1, 3], pad_output_list=True)
    with torch.no_grad():
        pad, _ = padded(x)
    assert [o is None for o in pad] == [True, False, True, False]
    assert torch.equal(pad[3], full[3])


def test_aa_block_size_and_order():
    agg = tiny(depth=4, aa_block_size=2, aa_order=["global", "frame"])
    with torch.no_grad():
        outputs, _ = agg(images(S=2))
    assert len(outputs) == 4 and outputs[0].shape == (1, 2, 11, 64)


def test_rope_disabled_works():
    with_rope, without = tiny(), tiny(rope_freq=0)
    without.load_state_dict(with_rope.state_dict())
    assert without.rope is None and without.position_getter is None
    with torch.no_grad():
        a, _ = with_rope(images())
        b, _ = without(images())
    assert a[-1].shape == b[-1].shape and not torch.allclose(a[-1], b[-1])


def test_chunked_patch_embedding_equals_unchunked():
    agg = tiny_dinov2()
    x = images(B=2, S=3)
    with torch.no_grad():
        ref, _ = agg(x)
        chunked, _ = agg(x, frames_chunk_size=4)
        agg.frames_chunk_size = 1
        single, _ = agg(x)
    for a, b, c in zip(ref, chunked, single):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
        torch.testing.assert_close(c, a, atol=1e-6, rtol=0)


def test_gradient_checkpointing_gives_same_gradients():
    x = images(B=1, S=2)
    grads = []
    for enabled in (False, True):
        agg = tiny_dinov2().train()
        agg.set_gradient_checkpointing(enabled)
        assert agg.patch_embed.gradient_checkpointing is enabled
        outputs, _ = agg(x, output_layers=[0, -1])
        (outputs[0].square().mean() + outputs[1].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in agg.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "camera_token" in grads[0]
    assert "patch_embed.blocks.0.attn.qkv.weight" in grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backbone", ["dinov2", "dinov3"])
def test_bfloat16_cast_and_autocast(backbone):
    agg = tiny_dinov2() if backbone == "dinov2" else tiny_dinov3(embed_dim=64)
    x = images() if backbone == "dinov2" else images(H=32, W=48)
    with torch.no_grad():
        ref, _ = agg(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto, _ = agg(x)
        cast = agg.to(torch.bfloat16)
        bf16, _ = cast(x.to(torch.bfloat16))
    assert auto[-1].dtype == torch.float32  # the residual stream stays float32 under autocast, as in VGGT
    assert bf16[-1].dtype == torch.bfloat16
    for out in (auto[-1], bf16[-1].float()):
        assert torch.isfinite(out).all()
        assert (out - ref[-1]).abs().max() < 0.25 * ref[-1].abs().max()


# ------------------------------------------------------------------------------------------------ DINOv3 patch embed


def test_dinov3_patch_tokens_reach_the_blocks():
    agg = tiny_dinov3()
    assert agg.patch_proj is None and agg.patch_size == 16 and agg.patch_embed_kind == "dinov3"
    assert sum(agg.normalization, ()) == pytest.approx(sum(IMAGENET, ()))
    x = images(B=1, S=2, H=32, W=48)
    tokens = block_inputs(agg, x)  # [2, 5 + 6, 384]
    normalised = (x[0] - torch.tensor(IMAGENET[0]).view(3, 1, 1)) / torch.tensor(IMAGENET[1]).view(3, 1, 1)
    with torch.no_grad():
        expected = agg.patch_embed.forward_features(normalised)["x_norm_patchtokens"]
    torch.testing.assert_close(tokens[:, 5:], expected, atol=1e-6, rtol=0)


def test_dinov3_width_projection_and_state_dict_names():
    agg = tiny_dinov3(embed_dim=64)
    assert agg.patch_proj is not None and agg.patch_proj.in_features == 384
    assert {"patch_proj.weight", "patch_proj.bias", "patch_embed.storage_tokens"} <= set(agg.state_dict())
    x = images(B=1, S=2, H=32, W=32)
    tokens = block_inputs(agg, x)
    with torch.no_grad():
        normalised = (x[0] - agg._resnet_mean[0]) / agg._resnet_std[0]
        expected = agg.patch_proj(agg.patch_embed.forward_features(normalised)["x_norm_patchtokens"])
        outputs, start = agg(x)
    torch.testing.assert_close(tokens[:, 5:], expected, atol=1e-6, rtol=0)
    assert start == 5 and outputs[-1].shape == (1, 2, 5 + 4, 128)


def test_dinov3_example_shapes():
    # The example at full size; the DINOv3 backbone is swapped for a conv patch embedding so it runs on
    # the meta device (shapes only).
    with torch.device("meta"):
        agg = Aggregator(
            img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, n_storage_tokens=4, patch_embed="conv"
        )
        outputs, start = agg(torch.empty(2, 8, 3, 224, 224))
    assert start == 5 and len(outputs) == 24 and all(o.shape == (2, 8, 201, 2048) for o in outputs)
    # The real DINOv3 ViT-L/16 backbone (one block, to keep it cheap): same token count and widths, no projection.
    torch.manual_seed(0)
    agg = Aggregator(
        img_size=224,
        patch_size=16,
        embed_dim=1024,
        depth=1,
        num_heads=16,
        n_storage_tokens=4,
        patch_embed="dinov3_vitl16_reg",
        patch_embed_config={"depth": 1},
    ).eval()
    assert agg.patch_proj is None and agg.patch_size == 16 and agg.num_register_tokens == 4
    with torch.no_grad():
        outputs, start = agg(torch.rand(1, 2, 3, 224, 224))
    assert start == 5 and outputs[0].shape == (1, 2, 201, 2048)


def test_dinov3_satellite_statistics_and_backbone_patch_size():
    with torch.device("meta"):
        agg = Aggregator(
            embed_dim=1024, depth=1, patch_embed="dinov3_vitl16", patch_embed_config={"depth": 1, "weights": "sat493m"}
        )
    assert agg.patch_size == 16  # VGGT's default patch_size=14 is replaced by the backbone's
    assert agg.patch_embed.weights_tag == "sat493m"
    # Buffers on meta hold no values: rebuild the statistics check on a real (1-block) model.
    agg = Aggregator(
        embed_dim=64,
        depth=1,
        num_heads=4,
        patch_embed="dinov3_vitl16",
        patch_embed_config={"depth": 1, "weights": "sat493m"},
    )
    assert sum(agg.normalization, ()) == pytest.approx(SAT_MEAN + SAT_STD)


# ------------------------------------------------------------------------------------------------ weights


def vggt_checkpoint(agg: Aggregator) -> dict[str, torch.Tensor]:
    """A full-VGGT-style state dict: ``aggregator.*`` plus some head weights."""
    state = {f"aggregator.{k}": v.clone() for k, v in agg.state_dict().items()}
    state["camera_head.trunk.0.norm1.weight"] = torch.ones(8)
    state["depth_head.norm.bias"] = torch.zeros(8)
    return state


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", None])
def test_from_vggt_loads_full_checkpoints(tmp_path, suffix):
    src = tiny_dinov2()
    state = vggt_checkpoint(src)
    if suffix == ".pt":
        source = tmp_path / "model.pt"
        torch.save(state, source)
    elif suffix == ".safetensors":
        source = tmp_path / "model.safetensors"
        save_file(state, str(source))
    else:
        source = state
    dst = Aggregator.from_vggt(
        source, img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, patch_embed="dinov2_vitl14_reg",
        patch_embed_config=dict(embed_dim=32, depth=1, num_heads=2),
    )  # fmt: skip
    assert not dst.training
    x = images()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src(x)[0], dst(x)[0]))


def test_extract_aggregator_state_dict_prefixes():
    nested = {
        "spatial_encoder.vggt_model.aggregator.camera_token": torch.zeros(1),
        "connector.mlp.0.bias": torch.zeros(1),
    }
    kept, ignored = extract_aggregator_state_dict({"model": nested})
    assert list(kept) == ["camera_token"] and ignored == ["connector.mlp.0.bias"]
    assert extract_aggregator_state_dict({"camera_token": 1})[0] == {"camera_token": 1}


def test_from_vggt_reports_bad_keys_by_name():
    src = tiny()
    state = vggt_checkpoint(src)
    del state["aggregator.global_blocks.1.ls2.gamma"]
    state["aggregator.frame_blocks.9.mlp.fc1.weight"] = torch.zeros(1)
    state["aggregator.camera_token"] = torch.zeros(1, 2, 1, 16)
    with pytest.raises(StateDictMismatchError) as info:
        Aggregator.from_vggt(state, img_size=28, embed_dim=32, depth=2, num_heads=4, patch_embed="conv")
    message = str(info.value)
    assert "global_blocks.1.ls2.gamma" in message and "frame_blocks.9.mlp.fc1.weight" in message
    assert "camera_token: (1, 2, 1, 16) in the checkpoint vs (1, 2, 1, 32)" in message  # hub.mismatch wording
    assert "camera_head" not in message  # other heads are ignored, not reported
    assert info.value.missing_keys == ["global_blocks.1.ls2.gamma"]
    loose = Aggregator.from_vggt(
        state, strict=False, img_size=28, embed_dim=32, depth=2, num_heads=4, patch_embed="conv"
    )
    assert torch.equal(loose.frame_blocks[0].attn.qkv.weight, src.frame_blocks[0].attn.qkv.weight)


def test_from_vggt_with_dinov3_patch_embed(tmp_path):
    vggt = tiny(embed_dim=384, num_heads=6)  # conv patch embedding: its keys cannot fit DINOv3
    state = vggt_checkpoint(vggt)
    kwargs = dict(
        img_size=32, embed_dim=384, depth=2, num_heads=6, patch_embed="dinov3_vits16", patch_embed_config={"depth": 1}
    )
    with pytest.raises(StateDictMismatchError, match="patch_embed_weights"):
        Aggregator.from_vggt(state, **kwargs)  # VGGT's DINOv2 keys do not fit a DINOv3 backbone
    # Blocks from VGGT, backbone from DINOv3 weights.
    pytest.importorskip("dinov3_integration.hub.sources")
    dinov3 = create_model("dinov3_vits16", depth=1)
    weights = tmp_path / "dinov3_vits16_tiny.pth"
    torch.save(dinov3.state_dict(), weights)
    agg = Aggregator.from_vggt(state, patch_embed_weights=str(weights), **kwargs)
    assert torch.equal(agg.patch_embed.blocks[0].attn.qkv.weight, dinov3.blocks[0].attn.qkv.weight)
    assert torch.equal(agg.global_blocks[1].mlp.fc2.weight, vggt.global_blocks[1].mlp.fc2.weight)


def test_new_projection_may_be_missing_from_vggt_weights():
    vggt = tiny(embed_dim=64)
    state = vggt_checkpoint(vggt)
    agg = tiny_dinov3(embed_dim=64)
    backbone = {k: v.clone() for k, v in agg.patch_embed.state_dict().items()}
    result = agg.load_vggt_state_dict(state, skip_patch_embed=True)  # strict: patch_proj may be absent
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert (
        "aggregator.patch_embed.proj.weight" not in result.ignored_keys
        and "patch_embed.proj.weight" in result.ignored_keys
    )
    assert torch.equal(agg.frame_blocks[0].attn.qkv.weight, vggt.frame_blocks[0].attn.qkv.weight)
    assert all(torch.equal(v, backbone[k]) for k, v in agg.patch_embed.state_dict().items())


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_errors():
    agg = tiny()
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        agg(torch.rand(3, 28, 28))
    with pytest.raises(ValueError, match="3 colour channels.*channels-last"):
        agg(torch.rand(1, 2, 28, 28, 3))
    with pytest.raises(ValueError, match="3 colour channels"):
        agg(torch.rand(1, 2, 4, 28, 28))
    with pytest.raises(TypeError, match="float"):
        agg(torch.zeros(1, 2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(
        ValueError, match=r"height 30 \(nearest valid: 28 or 42\).*width 50 \(nearest valid: 42 or 56\)"
    ):
        agg(torch.rand(1, 2, 3, 30, 50))
    with pytest.raises(ValueError, match="out of range"):
        agg(images(), output_layers=[2])


def test_out_of_range_values_warn_once():
    agg = tiny()
    with pytest.warns(UserWarning, match=r"\[0, 1\].*divide by 255"):
        agg(images() * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg(images() * 255)  # only once
        tiny()(images())  # in-range input: no warning


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"unknown attention type\(s\) \['cross'\]"):
        tiny(aa_order=["frame", "cross"])
    with pytest.raises(ValueError, match=r"lacks \['global'\]"):
        tiny(aa_order=["frame"])
    with pytest.raises(ValueError, match=r"divisible by aa_block_size \(2\)"):
        tiny(depth=3, aa_block_size=2)
    with pytest.raises(ValueError, match="unknown patch_embed 'dinov2_vitx14_reg'"):
        tiny(patch_embed="dinov2_vitx14_reg")
    with pytest.raises(ValueError, match="give only one"):
        tiny(num_register_tokens=2, n_storage_tokens=3)
    assert tiny(n_storage_tokens=2).patch_start_idx == 3
    with pytest.raises(ValueError, match="output_layers"):
        tiny(output_layers="last")


def test_patch_embed_outputs_are_handed_back():
    """``patch_embed_outputs`` receives the backbone's forward_features of every frame chunk, in order."""
    from dinov3_integration.models import create_model

    backbone = create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=4)
    agg = Aggregator(
        img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=4, patch_embed=backbone, frames_chunk_size=2
    ).eval()
    images = torch.rand(1, 3, 3, 32, 32)
    sink: list = []
    with torch.no_grad():
        agg(images, patch_embed_outputs=sink)
        mean, std = agg.normalization
        x = (images[0] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        ref = backbone.forward_features(x)
    assert [o["x_norm_clstoken"].shape[0] for o in sink] == [2, 1]
    cls = torch.cat([o["x_norm_clstoken"] for o in sink])
    torch.testing.assert_close(cls, ref["x_norm_clstoken"], atol=1e-5, rtol=0)
