"""timm's conventions on our ViT (issue 17 item 1), against timm's Eva ``vit_small_patch16_dinov3`` with the same weights."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.hub import formats
from dinov3_integration.models import DinoVisionTransformer

timm = pytest.importorskip("timm")

DEPTH = 3


def _pair(global_pool: str = "token", num_classes: int = 0) -> tuple[DinoVisionTransformer, torch.nn.Module]:
    torch.manual_seed(0)
    peer = timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, depth=DEPTH, global_pool=global_pool, num_classes=num_classes
    )
    randomize_(peer, std=0.05).eval()
    sd = formats.to_official(peer.state_dict(), periods="float32")
    model = DinoVisionTransformer(**formats.infer_architecture(sd), num_classes=num_classes, global_pool=global_pool)
    if num_classes:
        sd["head.weight"], sd["head.bias"] = peer.head.weight.detach().clone(), peer.head.bias.detach().clone()
    model.load_state_dict(sd, strict=True)
    return model.eval(), peer


@pytest.fixture(scope="module")
def pair() -> tuple[DinoVisionTransformer, torch.nn.Module]:
    return _pair()


def _equal(a, b) -> None:
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b):
            _equal(x, y)
        return
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("indices", [None, 2, [0, -1], (1,)])
@pytest.mark.parametrize("output_fmt", ["NCHW", "NLC"])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_intermediates_match_timm(pair, indices, output_fmt, norm) -> None:
    model, peer = pair
    x = torch.randn(2, 3, 48, 64)
    kwargs = {"indices": indices, "norm": norm, "output_fmt": output_fmt}
    with torch.no_grad():
        ours = model.forward_intermediates(x, **kwargs)
        theirs = peer.forward_intermediates(x, **kwargs)
        _equal(ours, theirs)
        _equal(model.forward_intermediates(x, intermediates_only=True, **kwargs), theirs[1])
        _equal(
            model.forward_intermediates(x, return_prefix_tokens=True, stop_early=True, **kwargs),
            peer.forward_intermediates(x, return_prefix_tokens=True, stop_early=True, **kwargs),
        )
    if output_fmt == "NCHW":
        assert ours[1][0].shape == (2, 384, 3, 4)


def test_forward_intermediates_agree_with_get_intermediate_layers(pair) -> None:
    model, _ = pair
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ours = model.forward_intermediates(x, indices=[0, 2], norm=True, intermediates_only=True)
        ref = model.get_intermediate_layers(x, n=[0, 2], reshape=True, norm=True)
    _equal(ours, list(ref))


@pytest.mark.parametrize(("kwargs", "pattern"), [({"indices": []}, "names no layer"), ({"output_fmt": "NHWC"}, "NCHW")])
def test_forward_intermediates_errors(pair, kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        pair[0].forward_intermediates(torch.randn(1, 3, 32, 32), **kwargs)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_classifier_and_pooling_match_timm(global_pool) -> None:
    model, peer = _pair(global_pool, num_classes=5)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        _equal(model(x), peer(x))
        feats = model.forward_features(x)
        _equal(model.forward_head(feats, pre_logits=True), peer.forward_head(peer.forward_features(x), pre_logits=True))
        _equal(model.forward_head(peer.forward_features(x)), peer(x))  # timm-style normed tokens also accepted
    assert model.num_classes == 5 and model.get_classifier() is model.head


def test_token_plus_avg_is_dinov3s_linear_classifier_input(pair) -> None:
    """``token+avg``: ``cat(cls, mean(patch tokens))`` as the reference's 7B linear head, into a ``Linear(2D, C)``."""
    model, _ = _pair()
    model.reset_classifier(7, global_pool="token+avg")
    assert model.head.in_features == 2 * 384 and model.global_pool == "token+avg"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = torch.cat((out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(1)), dim=-1)
        torch.testing.assert_close(model(x), model.head(pooled), atol=0, rtol=0)
        torch.testing.assert_close(model.forward_head(out, pre_logits=True), pooled, atol=0, rtol=0)
    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity)
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(3, global_pool="max")
    with pytest.raises(ValueError, match="num_classes=-1"):
        model.reset_classifier(-1)


def test_default_forward_is_the_reference_cls(pair) -> None:
    model, _ = pair
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x)["x_norm_clstoken"])


def _lr_scales(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_timm_optimizer_factory_groups_like_timm() -> None:
    """``no_weight_decay`` and ``group_matcher`` give timm's layer-decay groups: same scale and decay per tensor."""
    model, peer = _pair(num_classes=5)
    ours, theirs = _lr_scales(model), _lr_scales(peer)
    same_names = ["cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "head.weight"]
    for i in range(DEPTH):
        same_names += [f"blocks.{i}.norm1.weight", f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.mlp.fc2.bias"]
    for name in same_names:
        assert ours[name] == theirs[name], name
    assert ours["storage_tokens"] == theirs["reg_token"]
    assert ours["mask_token"] == ours["cls_token"]
    assert ours["blocks.0.ls1.gamma"] == theirs["blocks.0.gamma_1"]


def test_set_grad_checkpointing() -> None:
    model, _ = _pair()
    model.set_grad_checkpointing()
    assert model.gradient_checkpointing
    model.set_grad_checkpointing(False)
    assert not model.gradient_checkpointing


@pytest.mark.parametrize("out_indices", [(1, 2), 2, (-1,)])
def test_timm_feature_getter_matches_timms_features_only(out_indices) -> None:
    """``FeatureGetterNet(model, out_indices)`` on our ViT = ``timm.create_model(..., features_only=True)``."""
    from timm.models._features import FeatureGetterNet

    model, peer = _pair(num_classes=5)
    peer_features = timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, depth=DEPTH, features_only=True, out_indices=out_indices
    )
    peer_features.model.load_state_dict(peer.state_dict(), strict=False)  # no head in the features-only model
    ours = FeatureGetterNet(model, out_indices=out_indices).eval()
    peer_features.eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        _equal(ours(x), peer_features(x))
    assert ours.feature_info.channels() == peer_features.feature_info.channels()
    assert ours.feature_info.reduction() == peer_features.feature_info.reduction() == [16] * len(ours(x))
    assert isinstance(model.head, torch.nn.Identity) and len(model.blocks) <= DEPTH
