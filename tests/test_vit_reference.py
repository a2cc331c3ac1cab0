"""Outputs of our ViT against golden outputs of Meta's reference implementation (tests/data/reference)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import fixture_config, fixture_state_dict, load_fixture
from dinov3_integration.models import DinoVisionTransformer

FIXTURES = ["vit_mlp_tiny", "vit_swiglu_untied"]
TOL = 1e-5  # the fixture README's bound; float32 on another CPU/BLAS differs by ~1e-6


def _build(name: str) -> tuple[DinoVisionTransformer, dict, dict]:
    meta, t = load_fixture(name)
    model = DinoVisionTransformer(**fixture_config(meta)).eval()
    result = model.load_state_dict(fixture_state_dict(t), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model, meta, t


@pytest.mark.parametrize("name", FIXTURES)
def test_forward_features_match_reference(name: str) -> None:
    model, _, t = _build(name)
    with torch.no_grad():
        out = model.forward_features(t["input"])
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm"):
        ref = t[f"out.forward_features.{key}"]
        assert out[key].shape == ref.shape, key
        torch.testing.assert_close(out[key], ref, atol=TOL, rtol=0, msg=key)
    assert out["masks"] is None


@pytest.mark.parametrize("name", FIXTURES)
def test_forward_matches_reference(name: str) -> None:
    model, _, t = _build(name)
    with torch.no_grad():
        torch.testing.assert_close(model(t["input"]), t["out.forward"], atol=TOL, rtol=0)
        dict_out = model(t["input"], is_training=True)
    assert set(dict_out) == {"x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm", "masks"}


@pytest.mark.parametrize("name", FIXTURES)
def test_intermediate_layers_match_reference(name: str) -> None:
    model, meta, t = _build(name)
    n = int(meta["intermediate_n"])
    with torch.no_grad():
        layers = model.get_intermediate_layers(
            t["input"], n=n, reshape=True, return_class_token=True, return_extra_tokens=True, norm=True
        )
        assert len(layers) == n
        for i, (patch, cls, extra) in enumerate(layers):
            torch.testing.assert_close(patch, t[f"out.intermediate_norm.{i}.patch"], atol=TOL, rtol=0)
            torch.testing.assert_close(cls, t[f"out.intermediate_norm.{i}.cls"], atol=TOL, rtol=0)
            torch.testing.assert_close(extra, t[f"out.intermediate_norm.{i}.extra"], atol=TOL, rtol=0)
        idx = json.loads(meta["intermediate_raw_idx"])
        raw = model.get_intermediate_layers(t["input"], n=idx, norm=False)
        assert len(raw) == len(idx)
        for i, patch in enumerate(raw):
            torch.testing.assert_close(patch, t[f"out.intermediate_raw_idx.{i}"], atol=TOL, rtol=0)


def test_periods_come_from_the_checkpoint() -> None:
    """The loaded periods are the stored ones, not recomputed (the reference stores bf16-rounded values)."""
    model, _, t = _build("vit_mlp_tiny")
    torch.testing.assert_close(model.rope_embed.periods, t["state_dict.rope_embed.periods"], atol=0, rtol=0)
    perturbed = fixture_state_dict(t)
    perturbed["rope_embed.periods"] = perturbed["rope_embed.periods"] * 1.01
    model.load_state_dict(perturbed)
    with torch.no_grad():
        out = model.forward_features(t["input"])["x_prenorm"]
    assert (out - t["out.forward_features.x_prenorm"]).abs().max() > 10 * TOL  # the test can fail


def test_wrong_checkpoint_is_reported() -> None:
    meta, t = load_fixture("vit_mlp_tiny")
    cfg = fixture_config(meta)
    cfg["ffn_layer"] = "swiglu"
    model = DinoVisionTransformer(**cfg)
    with pytest.raises(RuntimeError, match="mlp.fc1.weight"):
        model.load_state_dict(fixture_state_dict(t), strict=True)
