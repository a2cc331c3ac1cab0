"""VGGT-compatible layers (``dinov3_integration.vggt_compat.layers``) and VGGT's 2D RoPE."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov3_integration.vggt_compat import PositionGetter, RotaryPositionEmbedding2D
from dinov3_integration.vggt_compat.layers import (
    Attention,
    Block,
    DinoVisionTransformer,
    DropPath,
    LayerScale,
    MemEffAttention,
    Mlp,
    NestedTensorBlock,
    PatchEmbed,
    SwiGLUFFN,
    SwiGLUFFNFused,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)

# ------------------------------------------------------------------------------------------------ RoPE reference


def reference_rope(tokens: torch.Tensor, positions: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """VGGT's 2D RoPE written out channel pair by channel pair (the spec's formulas, no shared code).

    tokens [B, h, N, D], positions [B, N, 2]. Channels ``[0, D/2)`` rotate by y, ``[D/2, D)`` by x; inside each
    half of width d, channel j pairs with j + d/2 at frequency ``base ** (-2 (j mod d/2) / d)``. Angles are
    computed in float32, cast to the token dtype, then cos/sin.
    """
    D = tokens.shape[-1]
    d = D // 2
    out = torch.empty_like(tokens)
    for axis in range(2):
        part = tokens[..., axis * d : (axis + 1) * d]
        p = positions[..., axis].float()  # [B, N]
        for j in range(d // 2):
            freq = 1.0 / (base ** (torch.tensor(2 * j, dtype=torch.float32) / d))
            angle = (p * freq).to(tokens.dtype)[:, None, :]  # [B, 1, N]
            cos, sin = angle.cos().to(tokens.dtype), angle.sin().to(tokens.dtype)
            a, b = part[..., j], part[..., j + d // 2]
            out[..., axis * d + j] = a * cos - b * sin
            out[..., axis * d + j + d // 2] = b * cos + a * sin
    return out


def test_position_getter_order_and_device_key():
    getter = PositionGetter()
    pos = getter(2, 2, 3, "cpu")
    assert pos.shape == (2, 6, 2) and pos.dtype == torch.int64
    assert pos[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    pos[0, 0, 0] = 99  # a fresh copy: the cache is not modified
    assert getter(1, 2, 3, "cpu")[0, 0, 0] == 0
    getter(1, 2, 3, "meta")
    assert {k[2].type for k in getter.position_cache} == {"cpu", "meta"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_matches_reference_math(dtype):
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D(frequency=100.0)
    tokens = torch.randn(2, 3, 7, 16).to(dtype)
    positions = torch.randint(0, 12, (2, 7, 2))
    out = rope(tokens, positions)
    ref = reference_rope(tokens, positions)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    assert out.dtype == dtype


def test_rope_bf16_rounds_angles_before_cos_sin():
    """VGGT casts the angle table to bf16 before cos/sin: position 37 at frequency 1 is visibly rounded."""
    rope = RotaryPositionEmbedding2D()
    cos, sin = rope._compute_frequency_components(32, 40, torch.device("cpu"), torch.bfloat16)
    exponents = torch.arange(0, 32, 2).float() / 32
    f2 = (1.0 / (100.0**exponents))[2]  # 100 ** (-4 / 32)
    angle_bf16 = (torch.tensor(37.0) * f2).to(torch.bfloat16)
    assert cos[37, 2] == angle_bf16.cos().to(torch.bfloat16)
    assert cos[37, 2 + 16] == cos[37, 2]  # columns j and j + d/2 share a frequency
    assert abs(float(angle_bf16) - 37.0 * float(f2)) > 1e-3  # the rounding is real


def test_rope_bound_expanded_positions_and_pair_are_identical():
    torch.manual_seed(1)
    rope = RotaryPositionEmbedding2D()
    q, k = torch.randn(2, 4, 2, 10, 8).unbind(0)
    base = torch.randint(0, 6, (1, 10, 2))
    expanded, materialised = base.expand(4, -1, -1), base.expand(4, -1, -1).clone()
    q4, k4 = q, k  # [4, 2, 10, 8]
    plain = rope(q4, materialised)  # VGGT's path: table length from positions.max()
    with rope.position_bound(6):
        bounded = rope(q4, expanded)
        pair_q, pair_k = rope.rotate_pair(q4, k4, expanded)
    assert torch.equal(plain, bounded) and torch.equal(plain, pair_q)
    assert torch.equal(pair_k, rope(k4, materialised))
    assert rope._position_bound is None
    with pytest.raises(ValueError, match="positions must be"):
        rope(q, base[0])


def test_rope_tables_usable_with_autograd_after_inference_mode():
    rope = RotaryPositionEmbedding2D()
    pos = torch.randint(0, 5, (1, 6, 2))
    with torch.inference_mode():
        rope(torch.randn(1, 1, 6, 8), pos)
    x = torch.randn(1, 1, 6, 8, requires_grad=True)
    rope(x, pos).sum().backward()
    assert x.grad is not None


# ------------------------------------------------------------------------------------------------ attention, block


def test_attention_qk_norm_rope_matches_manual():
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D()
    attn = Attention(32, num_heads=4, qk_norm=True, rope=rope).eval()
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 9, 32)
    pos = torch.randint(0, 4, (2, 9, 2))
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q = F.layer_norm(q, (8,), attn.q_norm.weight, attn.q_norm.bias, eps=1e-5)
    k = F.layer_norm(k, (8,), attn.k_norm.weight, attn.k_norm.bias, eps=1e-5)
    q, k = reference_rope(q, pos), reference_rope(k, pos)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x, pos=pos), ref, atol=1e-5, rtol=1e-5)
    assert sorted(attn.state_dict()) == sorted(
        f"{m}.{p}" for m in ("qkv", "q_norm", "k_norm", "proj") for p in ("weight", "bias")
    )
    # Without positions (or without a rope) no rotation happens.
    plain = Attention(32, num_heads=4, qk_norm=True)
    plain.load_state_dict(attn.state_dict())
    torch.testing.assert_close(attn(x), plain(x, pos=pos))


def test_mem_eff_attention_refuses_positions_and_bias():
    attn = MemEffAttention(16, num_heads=2)
    x = torch.randn(1, 3, 16)
    assert attn(x).shape == x.shape
    with pytest.raises(ValueError, match="pos must be None"):
        attn(x, pos=torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="xFormers"):
        attn(x, attn_bias=torch.zeros(1))


def test_block_keys_and_forward():
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D()
    block = Block(32, 4, init_values=0.01, qk_norm=True, rope=rope).eval()
    keys = set(block.state_dict())
    assert len(keys) == 18 and {"ls1.gamma", "ls2.gamma", "attn.q_norm.weight", "mlp.fc2.bias"} <= keys
    assert block.norm1.eps == 1e-5 and isinstance(block.mlp.act, nn.GELU)
    x = torch.randn(2, 5, 32)
    pos = torch.randint(0, 3, (2, 5, 2))
    y = x + block.ls1(block.attn(block.norm1(x), pos=pos))
    y = y + block.ls2(block.mlp(block.norm2(y)))
    torch.testing.assert_close(block(x, pos=pos), y)
    assert not any(k.startswith("ls") for k in Block(32, 4).state_dict())  # init_values=None: no LayerScale


def test_block_stochastic_depth_subsets_positions():
    torch.manual_seed(0)
    block = Block(16, 2, drop_path=0.5, rope=RotaryPositionEmbedding2D()).train()
    x = torch.randn(4, 3, 16)
    out = block(x, pos=torch.randint(0, 3, (4, 3, 2)))
    assert out.shape == x.shape
    assert isinstance(block.drop_path1, DropPath)


def test_nested_tensor_block_list():
    block = NestedTensorBlock(16, 2).eval()
    xs = [torch.randn(1, 3, 16), torch.randn(2, 5, 16)]
    for x, y in zip(xs, block(xs)):
        torch.testing.assert_close(y, block(x))


def test_ffn_layers_and_layer_scale():
    swiglu = SwiGLUFFN(8, hidden_features=12, out_features=6)
    assert set(swiglu.state_dict()) == {"w12.weight", "w12.bias", "w3.weight", "w3.bias"}
    x = torch.randn(3, 8)
    x1, x2 = swiglu.w12(x).chunk(2, -1)
    torch.testing.assert_close(swiglu(x), swiglu.w3(F.silu(x1) * x2))
    assert SwiGLUFFNFused(64, hidden_features=256).w3.in_features == 176  # (int(256 * 2 / 3) + 7) // 8 * 8
    assert SwiGLUFFNFused(1024, hidden_features=4096).hidden_features == 2736
    assert set(Mlp(8, 16).state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert torch.equal(LayerScale(4, init_values=0.5).gamma, torch.full((4,), 0.5))


def test_patch_embed_requires_whole_patches():
    pe = PatchEmbed(img_size=28, patch_size=14, embed_dim=8)
    assert pe(torch.randn(1, 3, 28, 42)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        pe(torch.randn(1, 3, 30, 42))


# ------------------------------------------------------------------------------------------------ DINOv2 ViT


def test_vit_factories_architecture():
    with torch.device("meta"):
        sizes = {f.__name__: f(patch_size=14, num_register_tokens=4) for f in (vit_small, vit_base, vit_large)}
        giant = vit_giant2(patch_size=14, depth=1)
    assert [(m.embed_dim, m.n_blocks, m.num_heads) for m in sizes.values()] == [
        (384, 12, 6),
        (768, 12, 12),
        (1024, 24, 16),
    ]
    assert giant.embed_dim == 1536 and giant.num_heads == 24
    large = sizes["vit_large"]
    assert isinstance(large.blocks[0], nn.ModuleList)  # class default block_chunks=1: one BlockChunk
    assert isinstance(large.blocks[0][0].attn, MemEffAttention)
    assert large.norm.eps == 1e-6


def tiny_vit(**kwargs) -> DinoVisionTransformer:
    defaults = dict(
        img_size=70,
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_register_tokens=2,
        interpolate_antialias=True,
        interpolate_offset=0.0,
        block_chunks=0,
        init_values=1.0,
    )
    return vit_small(**{**defaults, **kwargs}).eval()


def test_vit_keys_tokens_and_pos_embed_interpolation():
    torch.manual_seed(0)
    vit = tiny_vit()
    assert {"cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.proj.weight", "norm.weight"} <= set(
        vit.state_dict()
    )
    assert "blocks.1.ls2.gamma" in vit.state_dict()
    x = torch.randn(2, 3, 42, 56)
    out = vit.forward_features(x)
    assert out["x_norm_patchtokens"].shape == (2, 12, 32)
    assert out["x_norm_regtokens"].shape == (2, 2, 32)
    pe = vit.interpolate_pos_encoding(torch.zeros(1, 13, 32), 42, 56)
    grid = vit.pos_embed[:, 1:].reshape(1, 5, 5, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 4), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 12, 32)
    torch.testing.assert_close(pe[:, 1:], expected)
    assert vit.interpolate_pos_encoding(torch.zeros(1, 26, 32), 70, 70) is vit.pos_embed  # exact grid: unchanged
    tokens = vit.prepare_tokens_with_masks(x)  # [cls, reg x 2, patches]; registers carry no position embedding
    assert torch.equal(tokens[:, 1:3], vit.register_tokens.expand(2, -1, -1))
    # The forward returns the dict by default (VGGT); get_intermediate_layers agrees with it.
    last = vit.get_intermediate_layers(x, n=1)[0]
    torch.testing.assert_close(last, out["x_norm_patchtokens"])
    assert vit(x, is_training=False).shape == (2, 32)
    assert vit.get_intermediate_layers(x, n=[0], reshape=True)[0].shape == (2, 32, 3, 4)


def test_vit_block_chunks_and_checkpointing():
    torch.manual_seed(0)
    flat = tiny_vit()
    chunked = tiny_vit(block_chunks=2)
    assert "blocks.1.1.norm1.weight" in chunked.state_dict()
    x = torch.randn(1, 3, 28, 28)
    # With 2 chunks of 1 block, block i sits at blocks.i.i (chunks are padded with Identity).
    chunked.load_state_dict({re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.\1.", k): v for k, v in flat.state_dict().items()})
    torch.testing.assert_close(
        chunked.forward_features(x)["x_norm_patchtokens"], flat.forward_features(x)["x_norm_patchtokens"]
    )
    flat.set_gradient_checkpointing(True)
    xg = x.clone().requires_grad_(True)
    flat.forward_features(xg)["x_norm_patchtokens"].sum().backward()
    assert xg.grad is not None


def test_rope2d_base_frequency_change_after_a_first_call_is_honoured():
    from dinov3_integration.vggt_compat.rope import PositionGetter, RotaryPositionEmbedding2D

    torch.manual_seed(0)
    tokens = torch.randn(2, 3, 12, 16)
    pos = PositionGetter()(2, 3, 4, tokens.device)
    rope = RotaryPositionEmbedding2D(frequency=100.0)
    rope(tokens, pos)  # fills the table cache at frequency 100
    rope.base_frequency = 10.0
    assert torch.equal(rope(tokens, pos), RotaryPositionEmbedding2D(frequency=10.0)(tokens, pos))
    assert not torch.equal(rope(tokens, pos), RotaryPositionEmbedding2D(frequency=100.0)(tokens, pos))
