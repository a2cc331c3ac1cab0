"""DINOv3IntegratedModel: every input form and output key, equality with the backbone and the Aggregator run
directly, training switches, config round trips and the packaged variants (tiny sizes; CPU)."""

from __future__ import annotations

import pytest
import torch

from dinov3_integration import build_model
from dinov3_integration.config import ConfigError, load_config, save_config
from dinov3_integration.integrated import DINOv3IntegratedModel
from dinov3_integration.models import IMAGENET_MEAN, SAT_MEAN
from dinov3_integration.vggt_compat import Aggregator

TINY_BB = {"depth": 2, "embed_dim": 64, "num_heads": 4}
TINY_OVERRIDES = ["model.backbone.overrides={depth: 2, embed_dim: 64, num_heads: 4}", "model.backbone.img_size=32"]
H, W = 32, 48  # a 2 x 3 patch grid
N = (H // 16) * (W // 16)


def tiny(**kwargs) -> DINOv3IntegratedModel:
    kwargs.setdefault("backbone_overrides", TINY_BB)
    kwargs.setdefault("img_size", 32)
    if kwargs.get("use_aggregator"):
        kwargs.setdefault("aggregator_depth", 2)
    torch.manual_seed(0)
    return DINOv3IntegratedModel("dinov3_vits16", **kwargs).eval()


def images(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, 3, H, W, generator=torch.Generator().manual_seed(1))


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=(0.229, 0.224, 0.225)) -> torch.Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# ---------------------------------------------------------------------------------------------------- single frame
def test_single_frame_keys_and_shapes():
    model = tiny(intermediate_layers=[0, -1])
    out = model(images(2))
    assert set(out) == {"cls_token", "storage_tokens", "patch_tokens", "patch_grid", "intermediate"}
    assert out["cls_token"].shape == (2, 64)
    assert out["storage_tokens"].shape == (2, 4, 64)
    assert out["patch_tokens"].shape == (2, N, 64)
    assert out["patch_grid"] == (2, 3)
    assert [t.shape for t in out["intermediate"]] == [(2, N, 64)] * 2
    assert tiny()(images(1))["intermediate"] == []
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone"}


def test_single_frame_equals_backbone():
    model = tiny(intermediate_layers=[0, 1])
    x = images(2)
    out = model(x)
    ref = model.backbone.forward_features(normalize(x))
    torch.testing.assert_close(out["cls_token"], ref["x_norm_clstoken"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["storage_tokens"], ref["x_storage_tokens"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["patch_tokens"], ref["x_norm_patchtokens"], rtol=0, atol=1e-6)
    layers = model.backbone.get_intermediate_layers(normalize(x), n=[0, 1])
    for got, want in zip(out["intermediate"], layers):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_normalize_false_and_satellite_statistics():
    raw = tiny(normalize=False)
    x = normalize(images(1))
    torch.testing.assert_close(raw(x)["cls_token"], raw.backbone.forward_features(x)["x_norm_clstoken"])
    sat = DINOv3IntegratedModel("dinov3_vitl16", weights="sat493m", backbone_overrides=TINY_BB, img_size=32)
    torch.testing.assert_close(sat.mean.flatten(), torch.tensor(SAT_MEAN))
    assert sat.backbone.untie_global_and_local_cls_norm  # the satellite architecture


# ---------------------------------------------------------------------------------------------------- frames
def test_frames_without_aggregator_equal_per_frame_backbone():
    model = tiny(intermediate_layers=[0])
    x = images(2, 3)
    out = model(x)
    assert out["cls_token"].shape == (2, 3, 64)
    assert out["storage_tokens"].shape == (2, 3, 4, 64)
    assert out["patch_tokens"].shape == (2, 3, N, 64)
    assert out["intermediate"][0].shape == (2, 3, N, 64)
    assert out["patch_grid"] == (2, 3)
    for s in range(3):
        ref = model(x[:, s])
        for key in ("cls_token", "storage_tokens", "patch_tokens"):
            torch.testing.assert_close(out[key][:, s], ref[key], rtol=0, atol=1e-5)
    model.frames_chunk_size = 4  # 6 frames in chunks of 4 and 2: the same result
    chunked = model(x)
    torch.testing.assert_close(chunked["patch_tokens"], out["patch_tokens"], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked["intermediate"][0], out["intermediate"][0], rtol=0, atol=1e-5)


def test_aggregator_keys_shapes_and_equality_with_direct_calls():
    model = tiny(use_aggregator=True, frames_chunk_size=4)
    x = images(2, 3)
    out = model(x)
    P = 5 + N
    assert set(out) == {
        "features",
        "output_list",
        "patch_start_idx",
        "cls_token",
        "storage_tokens",
        "patch_tokens",
        "patch_grid",
    }
    assert out["features"].shape == (2, 3, P, 128)
    assert len(out["output_list"]) == 2 and all(t.shape == (2, 3, P, 128) for t in out["output_list"])
    assert out["features"] is out["output_list"][-1]
    assert out["patch_start_idx"] == 5
    assert out["cls_token"].shape == (2, 3, 64)
    assert out["storage_tokens"].shape == (2, 3, 4, 64)
    assert out["patch_tokens"].shape == (2, 3, N, 64)
    assert out["patch_grid"] == (2, 3)
    assert {k.split(".")[0] for k in model.state_dict()} == {"aggregator"}  # VGGT layout, one backbone copy
    assert model.backbone is model.aggregator.patch_embed

    # The same weights in a standalone Aggregator (built by name) and backbone give the same numbers.
    direct = Aggregator(
        img_size=32,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=4,
        patch_embed="dinov3_vits16",
        patch_embed_config=TINY_BB,
    ).eval()
    direct.load_state_dict(model.aggregator.state_dict())
    ref_list, ref_start = direct(x)
    assert ref_start == out["patch_start_idx"]
    for got, want in zip(out["output_list"], ref_list):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    ref = model.backbone.forward_features(normalize(x.flatten(0, 1)))
    torch.testing.assert_close(out["cls_token"], ref["x_norm_clstoken"].unflatten(0, (2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["patch_tokens"], ref["x_norm_patchtokens"].unflatten(0, (2, 3)), rtol=0, atol=1e-5)


def test_aggregator_runs_the_backbone_once_per_frame():
    model = tiny(use_aggregator=True, frames_chunk_size=4)
    seen: list[int] = []
    model.backbone.patch_embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    model(images(2, 3))
    assert seen == [4, 2]  # 6 frames, chunks of 4: each frame embedded exactly once


def test_aggregator_output_layers():
    model = tiny(use_aggregator=True, aggregator_depth=4, output_layers=[1, 2])
    out = model(images(1, 2))
    assert [t is None for t in out["output_list"]] == [True, False, False, True]  # absolute indexing kept
    assert out["features"] is out["output_list"][2]  # the deepest kept layer
    last = tiny(use_aggregator=True, aggregator_depth=4, output_layers=[-1])(images(1, 2))
    assert last["features"] is last["output_list"][3]


def test_aggregator_width_different_from_backbone_adds_projection():
    model = tiny(use_aggregator=True, aggregator_embed_dim=32, aggregator_num_heads=2)
    assert model.aggregator.patch_proj is not None
    out = model(images(1, 2))
    assert out["features"].shape[-1] == 64 and out["cls_token"].shape[-1] == 64


def test_aggregator_normalize_false():
    model = tiny(use_aggregator=True, normalize=False)
    x = images(1, 2)
    ref = tiny(use_aggregator=True)(x)
    torch.testing.assert_close(model(normalize(x))["features"], ref["features"], rtol=0, atol=1e-5)


def test_four_dim_input_with_aggregator_gives_backbone_features():
    out = tiny(use_aggregator=True)(images(2))
    assert out["cls_token"].shape == (2, 64) and "features" not in out


@pytest.mark.parametrize(
    ("shape", "error", "match"),
    [
        ((3, H, W), ValueError, r"add a batch dim"),
        ((2, 4, H, W), ValueError, r"expected 3 RGB channels"),
        ((1, 1, 1, 3, H, W), ValueError, r"\[B, S, 3, H, W\]"),
    ],
)
def test_bad_input_shapes(shape, error, match):
    with pytest.raises(error, match=match):
        tiny()(torch.rand(*shape))


# ---------------------------------------------------------------------------------------------------- training
def test_freeze_backbone_trains_only_the_aggregator():
    model = tiny(use_aggregator=True).train()
    assert model.freeze_backbone() is model
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for n, p in model.aggregator.named_parameters() if not n.startswith("patch_embed."))
    model(images(1, 2))["features"].square().mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.aggregator.frame_blocks[0].attn.qkv.weight.grad is not None
    assert model.to_config().model.freeze_backbone is True
    model.freeze_backbone(False)
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if n != "mask_token")


def test_gradient_checkpointing_gives_the_same_gradients():
    x = images(1, 2)
    grads = []
    for enabled in (False, True):
        model = tiny(use_aggregator=True, gradient_checkpointing=enabled).train()
        assert model.backbone.gradient_checkpointing is enabled and model.aggregator.gradient_checkpointing is enabled
        model(x)["features"].sum().backward()
        grads.append(model.backbone.blocks[0].attn.qkv.weight.grad.clone())
        assert model.to_config().model.gradient_checkpointing is enabled
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    model.set_gradient_checkpointing(False)
    assert not model.backbone.gradient_checkpointing and not model.aggregator.gradient_checkpointing


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("use_aggregator", [False, True])
def test_to_config_round_trip(tmp_path, use_aggregator):
    model = tiny(use_aggregator=use_aggregator, intermediate_layers=[0], output_layers=[1], freeze_backbone=True)
    cfg = model.to_config()
    assert cfg.model.backbone.embed_dim == 64 and cfg.model.backbone.depth == 2  # every value explicit
    path = save_config(cfg, tmp_path / "model.yaml")
    loaded = load_config(path)
    assert loaded == cfg
    rebuilt = build_model(loaded)
    assert rebuilt.to_config() == cfg
    sd, rebuilt_sd = model.state_dict(), rebuilt.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in rebuilt_sd.items()}
    rebuilt.load_state_dict(sd)
    x = images(1, 2)
    a, b = model(x), rebuilt(x)
    for key in ("cls_token", "patch_tokens") + (("features",) if use_aggregator else ("intermediate",)):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not any(p.requires_grad for p in rebuilt.backbone.parameters())


def test_from_config_mapping_and_build_model_path(tmp_path):
    mapping = {"model": {"backbone": {"dinov3_model": "dinov3_vits16", "img_size": 32, "overrides": TINY_BB}}}
    model = DINOv3IntegratedModel.from_config(mapping)
    assert model.embed_dim == 64 and model.aggregator is None
    path = save_config(model.to_config(), tmp_path / "m.yaml")
    assert build_model(path).to_config() == model.to_config()
    with pytest.raises(ConfigError, match=r"^<mapping>: model\.backbone\.dinov3_modle"):
        DINOv3IntegratedModel.from_config({"model": {"backbone": {"dinov3_modle": "x"}}})


@pytest.mark.parametrize("variant", ["lightweight", "high_performance", "video"])
def test_variants_build_and_run(variant):
    cfg = load_config(
        variant,
        TINY_OVERRIDES
        + ["model.aggregator.depth=2", "model.aggregator.num_heads=4", "model.aggregator.output_layers=[-1]"],
    )
    model = build_model(cfg)
    if cfg.model.aggregator.enabled:
        out = model(images(1, 2))
        assert out["features"].shape == (1, 2, 5 + N, 128)
    else:
        assert model(images(2))["cls_token"].shape == (2, 64)
    assert model.to_config().model.backbone.dinov3_model == cfg.model.backbone.dinov3_model


@pytest.mark.parametrize(
    ("variant", "millions"),
    [(None, 85.7), ("lightweight", 21.6), ("high_performance", 907.9), ("video", 907.9)],
)
def test_variants_full_size_on_meta(variant, millions):
    model = DINOv3IntegratedModel.from_config(load_config(variant), device="meta")
    assert next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    if variant == "video":
        assert model.frames_chunk_size == 8 and model.aggregator.frames_chunk_size == 8
        assert model.aggregator.output_layers == [-1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aggregator_num_heads": 5}, r"^DINOv3IntegratedModel\(\.\.\.\): aggregator_num_heads = 5: .*not divisible"),
        ({"backbone_overrides": {"dept": 2}}, r"backbone_overrides\['dept'\] = 2: .*did you mean 'depth'"),
        ({"aggregator_depth": 3, "aa_block_size": 2}, r"aa_block_size = 2: depth 3 is not a multiple"),
        ({"aa_order": ["frame", "glob"]}, r"aa_order = \['frame', 'glob'\]: unknown attention type"),
        ({"output_layers": [30]}, r"output_layers = \[30\]: layer index 30 is out of range"),
        ({"intermediate_layers": [12]}, r"intermediate_layers = \[12\]: layer index 12"),
        ({"img_size": "big"}, r"img_size = 'big': expected an integer"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DINOv3IntegratedModel("dinov3_vits16", **kwargs)


def test_unknown_backbone_name_suggests():
    with pytest.raises(ConfigError, match=r"dinov3_model = 'dinov3_vits15': unknown model .*'dinov3_vits16'"):
        DINOv3IntegratedModel("dinov3_vits15")


# ---------------------------------------------------------------------------------------------------- redesign
def _block_runs(model: DINOv3IntegratedModel, x: torch.Tensor) -> tuple[int, int]:
    """How often the first backbone block and the first frame block run in one forward + backward (2 = recomputed
    by gradient checkpointing)."""
    counts = [0, 0]
    hooks = [
        block.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
        for i, block in enumerate((model.backbone.blocks[0], model.aggregator.frame_blocks[0]))
    ]
    try:
        model(x)["features"].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    return counts[0], counts[1]


def test_gradient_checkpointing_defaults_to_training_mode_like_vggt():
    x = images(1, 2)
    model = tiny(use_aggregator=True)  # gradient_checkpointing left at its default (None)
    assert model.to_config().model.gradient_checkpointing is None
    model.train()
    assert model.backbone.gradient_checkpointing and model.aggregator.gradient_checkpointing
    assert _block_runs(model, x) == (2, 2)  # recomputed in the backward pass
    model.eval()
    assert not model.backbone.gradient_checkpointing and not model.aggregator.gradient_checkpointing
    assert _block_runs(model, x) == (1, 1)  # eval with gradients (e.g. attribution): nothing recomputed
    for explicit, runs in ((False, (1, 1)), (True, (2, 2))):
        model = tiny(use_aggregator=True, gradient_checkpointing=explicit)
        for mode in (True, False):
            model.train(mode)
            assert _block_runs(model, x) == runs  # an explicit switch wins over the mode
    model.set_gradient_checkpointing(None)
    assert not model.train(False).backbone.gradient_checkpointing and model.train().backbone.gradient_checkpointing
    with pytest.raises(TypeError, match="True, False or None"):
        model.set_gradient_checkpointing("yes")


def test_build_model_lives_in_integrated_old_path_is_deprecated():
    import dinov3_integration
    import dinov3_integration.config as config_pkg
    from dinov3_integration.integrated import build_model as owner

    assert dinov3_integration.build_model is owner
    with pytest.warns(DeprecationWarning, match="use dinov3_integration.build_model"):
        assert config_pkg.build_model is owner
    with pytest.raises(AttributeError):
        config_pkg.no_such_name  # noqa: B018


def test_build_aggregator_is_the_integrated_models_assembly():
    from dinov3_integration.integrated import build_aggregator

    model = tiny(use_aggregator=True)
    torch.manual_seed(0)
    backbone = DINOv3IntegratedModel("dinov3_vits16", backbone_overrides=TINY_BB, img_size=32).backbone
    backbone.load_state_dict(model.backbone.state_dict())
    agg = build_aggregator(backbone, depth=2, img_size=32, pad_output_list=True).eval()
    agg.load_state_dict(model.aggregator.state_dict())
    assert agg.patch_embed is backbone and (agg.patch_size, agg.embed_dim, agg.num_heads) == (16, 64, 4)
    x = images(1, 2)
    torch.testing.assert_close(agg(x)[0][-1], model(x)["features"], rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(agg.normalization[0]), torch.tensor(IMAGENET_MEAN))
    assert build_aggregator(backbone, depth=2, normalization="sat").normalization[0] == pytest.approx(SAT_MEAN)
    assert build_aggregator(backbone, depth=2, normalization=None).normalization == ((0.0,) * 3, (1.0,) * 3)
    pair = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert build_aggregator(backbone, depth=2, normalization=pair).normalization == pair
    with pytest.raises(ValueError, match="unknown normalization 'imagnet'; use one of auto, imagenet, sat"):
        build_aggregator(backbone, depth=2, normalization="imagnet")
    with pytest.raises(ValueError, match="3 values each"):
        build_aggregator(backbone, depth=2, normalization=((0.5,), (0.5,)))
    with pytest.raises(TypeError, match="first argument"):
        build_aggregator(backbone, patch_embed="conv")
