"""The Aggregator's eager inference fast path (issue 18) is bit-identical to its reference path.

``Aggregator._forward_fast`` (one plan for the whole forward, RoPE tables gathered once per forward and rotated in
place, workspace buffers, residual stream updated in place, frame/global layouts as views) must give exactly
(``torch.equal``) what the reference loop gives with the fast paths switched off, in every mode a caller uses, and
must never run while autograd records (the training path).
"""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.layers import fastpath
from dinov3_integration.vggt_compat import Aggregator
from dinov3_integration.vggt_compat.layers.block import Block
from dinov3_integration.vggt_compat.rope import PositionGetter, RotaryPositionEmbedding2D


def tiny(**kwargs) -> Aggregator:
    torch.manual_seed(0)
    defaults = dict(img_size=28, patch_size=14, embed_dim=64, depth=4, num_heads=4, patch_embed="conv")
    agg = Aggregator(**{**defaults, **kwargs}).eval()
    return randomize_(agg, std=0.2)


def images(S: int, H: int, W: int, B: int = 1) -> torch.Tensor:
    return torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(S * H + W))


@pytest.fixture
def fast_calls(monkeypatch):
    """Count the blocks run through ``Block.forward_fast``."""
    calls = {"n": 0}
    original = Block.forward_fast

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward_fast", counting)
    return calls


def reference_run(agg: Aggregator, x: torch.Tensor, **kwargs):
    fastpath.set_fast_paths(False)
    try:
        return agg(x, **kwargs)[0]
    finally:
        fastpath.set_fast_paths(True)


def assert_identical(fast, reference) -> None:
    fast, reference = list(fast), list(reference)
    assert len(fast) == len(reference) and fast
    for a, b in zip(fast, reference):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("S,H,W", [(2, 28, 42), (3, 42, 28)])
@pytest.mark.parametrize("precision", ["float32", "autocast_bf16", "bfloat16"])
@pytest.mark.parametrize("output_layers", ["all", [1, -1]])
def test_fast_path_is_bit_identical(S, H, W, precision, output_layers, fast_calls, monkeypatch):
    monkeypatch.setenv("DINOV3_DEBUG_WORKSPACE", "1")  # dead workspace buffers are NaN: a stale read shows
    agg = tiny()
    agg.use_workspace = output_layers == "all"  # with and without the shared workspace buffers
    x = images(S, H, W)
    if precision == "bfloat16":
        agg, x = agg.to(torch.bfloat16), x.to(torch.bfloat16)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast_bf16")
    with torch.inference_mode(), autocast:
        fast = agg(x, output_layers=output_layers)[0]
        assert fast_calls["n"] == 2 * agg.depth
        reference = reference_run(agg, x, output_layers=output_layers)
    assert fast_calls["n"] == 2 * agg.depth  # the reference run did not take it
    assert_identical(fast, reference)
    assert all(torch.isfinite(t).all() for t in fast)


@pytest.mark.parametrize("kwargs", [dict(aa_block_size=2, aa_order=["global", "frame"]), dict(rope_freq=0)])
def test_fast_path_other_block_layouts_and_no_rope(kwargs, fast_calls):
    agg = tiny(**kwargs)
    x = images(2, 28, 42, B=2)
    with torch.no_grad():
        fast = agg(x)[0]
        reference = reference_run(agg, x)
    assert fast_calls["n"] == 2 * agg.depth
    assert_identical(fast, reference)


def test_dinov2_patch_embedding_with_fast_blocks(fast_calls):
    agg = tiny(patch_embed="dinov2_vitl14_reg", patch_embed_config=dict(embed_dim=32, depth=2, num_heads=2))
    x = images(3, 28, 42)
    with torch.inference_mode():
        fast = agg(x, output_layers=[0, 3])[0]
        reference = reference_run(agg, x, output_layers=[0, 3])
    assert fast_calls["n"] == 2 * agg.depth
    assert_identical(fast, reference)


def test_grad_enabled_takes_the_reference_path(fast_calls):
    agg = tiny()
    x = images(2, 28, 42)
    with torch.inference_mode():
        fast = agg(x)[0]
    calls = fast_calls["n"]
    trained = agg(x)[0]  # autograd records (the training path): never the fast path
    assert fast_calls["n"] == calls
    assert all(t.requires_grad for t in trained)
    assert_identical(fast, [t.detach() for t in trained])
    sum(t.sum() for t in trained).backward()
    assert agg.frame_blocks[0].attn.qkv.weight.grad is not None


def test_hooks_and_training_mode_take_the_reference_path(fast_calls):
    agg = tiny()
    x = images(2, 28, 42)
    seen = []
    handle = agg.global_blocks[1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        hooked = agg(x)[0]
        agg.train()
        trained_mode = agg(x)[0]
        agg.eval()
    handle.remove()
    assert fast_calls["n"] == 0 and len(seen) == 2
    with torch.inference_mode():
        assert_identical(agg(x)[0], hooked)
        assert_identical(hooked, trained_mode)
    assert torch.equal(seen[0].view(1, 2, -1, 64), hooked[1][..., 64:])  # the hook saw the layer's output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 8])
def test_prepared_rope_rotates_in_place_as_the_reference(dtype, head_dim):
    rope = RotaryPositionEmbedding2D(frequency=100)
    positions = PositionGetter()(1, 4, 6, "cpu").expand(3, -1, -1) + 1  # [3, 24, 2], shared by the batch
    tokens = torch.randn(3, 24, 2, head_dim).to(dtype).transpose(1, 2)  # [3, 2, 24, d], strided
    prepared = rope.prepare(positions, 8)
    expected = rope(tokens, positions)
    rotated = tokens.clone()
    assert prepared.rotate_(rotated) is rotated and rotated.stride() == tokens.stride()
    assert torch.equal(rotated, expected)
    again = tokens.contiguous()
    assert torch.equal(prepared.rotate_(again), expected)  # the tables are reused (and still right)
