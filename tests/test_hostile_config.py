"""Issue 14 item 8 for the Aggregator and the YAML configuration: out-of-range numbers are refused up front."""

from __future__ import annotations

import math

import pytest

from dinov3_integration import load_config
from dinov3_integration.config import ConfigError
from dinov3_integration.vggt_compat import Aggregator


@pytest.mark.parametrize("key", ["mlp_ratio", "rope_freq", "init_values"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_aggregator_refuses_non_finite_settings(key, bad):
    with pytest.raises(ValueError, match=f"{key} must be a finite number"):
        Aggregator(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, patch_embed="conv", **{key: bad})


def _yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("key", ["mlp_ratio", "rope_freq", "init_values"])
def test_config_refuses_nan_aggregator_settings(tmp_path, key):
    path = _yaml(tmp_path, f"model:\n  backbone:\n    dinov3_model: dinov3_vits16\n  aggregator:\n    {key}: .nan\n")
    with pytest.raises(ConfigError, match=f"model.aggregator.{key}"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "value"), [("n_storage_tokens", "-2"), ("ffn_ratio", ".nan"), ("layerscale_init", ".inf")]
)
def test_config_refuses_out_of_range_backbone_overrides(tmp_path, override, value):
    path = _yaml(
        tmp_path, f"model:\n  backbone:\n    dinov3_model: dinov3_vits16\n    overrides:\n      {override}: {value}\n"
    )
    with pytest.raises(ConfigError, match=f"overrides.{override}"):
        load_config(path)
