"""The benchmark's plain VGGT transcription (benchmarks/vggt_reference.py) reproduces VGGT's golden outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import fixture_config, fixture_state_dict, load_fixture
from dinov3_integration.vggt_compat import Aggregator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from vggt_reference import vggt_reference_forward  # noqa: E402


@pytest.mark.parametrize("name", ["agg_conv_tiny", "agg_dinov2_tiny"])
def test_transcription_matches_vggt_fixtures_and_the_aggregator(name):
    meta, tensors = load_fixture(name)
    config = fixture_config(meta)
    pe_config = json.loads(meta["patch_embed_config"])
    if pe_config is not None:
        config.update(patch_embed="dinov2_vitl14_reg", patch_embed_config=pe_config)
    agg = Aggregator(**config)
    agg.load_state_dict(fixture_state_dict(tensors))
    agg.eval()
    x = tensors["input"]
    with torch.no_grad():
        ref, start = vggt_reference_forward(agg, x)
        ours, _ = agg(x)
    assert start == int(meta["patch_start_idx"]) and len(ref) == int(meta["num_outputs"])
    for i, (r, o) in enumerate(zip(ref, ours)):
        torch.testing.assert_close(r, tensors[f"out.{i}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(o, r, atol=1e-5, rtol=0)
