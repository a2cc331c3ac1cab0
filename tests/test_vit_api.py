"""Behaviour of the ViT beyond the fixtures: masks, shapes, input checks, compile, autocast, logging."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from conftest import randomize_
from dinov3_integration.models import DinoVisionTransformer, create_model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(create_model("dinov3_vits16", depth=2, embed_dim=64, num_heads=4), std=0.05).eval()


def test_shapes_non_square_and_batches(tiny) -> None:
    x = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        out = tiny.forward_features(x)
        single = tiny.forward_features(x[1:2])
    assert out["x_norm_clstoken"].shape == (3, 64)
    assert out["x_storage_tokens"].shape == (3, 4, 64)
    assert out["x_norm_patchtokens"].shape == (3, 15, 64)
    assert out["x_prenorm"].shape == (3, 20, 64)
    torch.testing.assert_close(single["x_prenorm"][0], out["x_prenorm"][1], atol=1e-5, rtol=0)


def test_masks_replace_patches_with_mask_token(tiny) -> None:
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = True
    with torch.no_grad():
        tiny.mask_token.normal_()
        out = tiny.forward_features(x, masks=masks)
        plain = tiny.forward_features(x)
        tokens, _ = tiny.prepare_tokens_with_masks(x, masks)
    assert out["masks"] is masks
    torch.testing.assert_close(tokens[0, 5 + 1], tiny.mask_token[0])
    assert not torch.allclose(out["x_prenorm"][0], plain["x_prenorm"][0])
    torch.testing.assert_close(out["x_prenorm"][1], plain["x_prenorm"][1], atol=1e-6, rtol=0)
    with torch.no_grad():
        tiny.mask_token.zero_()


def test_list_input(tiny) -> None:
    a, b = torch.randn(1, 3, 32, 32), torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        outs = tiny.forward_features([a, b])
        heads = tiny([a, b])
        ref_b = tiny.forward_features(b)
    assert isinstance(outs, list) and len(outs) == 2
    torch.testing.assert_close(outs[1]["x_prenorm"], ref_b["x_prenorm"])
    torch.testing.assert_close(heads[1], ref_b["x_norm_clstoken"])


def test_intermediate_layers_int_and_list(tiny) -> None:
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        last = tiny.get_intermediate_layers(x, n=1, return_class_token=True)
        ff = tiny.forward_features(x)
        both = tiny.get_intermediate_layers(x, n=[0, -1], norm=False)
        all2 = tiny.get_intermediate_layers(x, n=2, norm=False)
        shaped = tiny.get_intermediate_layers(x, n=1, reshape=True, return_extra_tokens=True)
    torch.testing.assert_close(last[0][0], ff["x_norm_patchtokens"], atol=0, rtol=0)
    torch.testing.assert_close(last[0][1], ff["x_norm_clstoken"], atol=0, rtol=0)
    torch.testing.assert_close(both[0], all2[0], atol=0, rtol=0)
    torch.testing.assert_close(both[1], ff["x_prenorm"][:, 5:], atol=0, rtol=0)
    assert shaped[0][0].shape == (2, 64, 2, 3) and shaped[0][1].shape == (2, 4, 64)
    with torch.no_grad():
        reordered = tiny.get_intermediate_layers(x, n=[1, 0], norm=False)
    torch.testing.assert_close(reordered[0], both[0], atol=0, rtol=0)  # block order, as the reference
    with pytest.raises(ValueError, match="out of range"):
        tiny.get_intermediate_layers(x, n=[5])
    with pytest.raises(ValueError, match="last 3 blocks"):
        tiny.get_intermediate_layers(x, n=3)


@pytest.mark.parametrize(
    ("n", "pattern"),
    [
        ([], r"n=\[\] names no layer"),
        ([1.5], r"1\.5 is not an integer"),
        (True, r"n=True: pass an int \(the last n blocks\)"),
        ([True], r"True is not an integer"),
        (0, r"n=0 asks for the last 0 blocks.*valid: 1\.\.2"),
        ([-3], r"index -3 is out of range for 2 blocks"),
        ("1", r"n='1': pass an int"),
        (1.0, r"n=1.0: pass an int"),
    ],
)
def test_intermediate_layer_index_errors(tiny, n, pattern) -> None:
    """issue 14 item 15 / issue 11 item 4: bad ``n`` values raise a clear ValueError (utils.indices rule)."""
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=pattern):
        tiny.get_intermediate_layers(x, n=n)


def test_intermediate_layer_indices_negative_and_duplicates(tiny) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = tiny.get_intermediate_layers(x, n=[0, 1], norm=False)
        same = tiny.get_intermediate_layers(x, n=[-2, 1, -1], norm=False)
    assert len(same) == 2
    for a, b in zip(ref, same):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("x", "exc", "pattern"),
    [
        (torch.randn(3, 32, 32), ValueError, r"4-D image batch \[B, 3, H, W\], got shape \(3, 32, 32\).*x\[None\]"),
        (torch.randn(1, 1, 32, 32), ValueError, r"expected 3 channels.*got shape \(1, 1, 32, 32\)"),
        (torch.randn(1, 32, 32, 3), ValueError, "channels-last"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point.*torch.uint8"),
        (torch.randn(1, 3, 8, 32), ValueError, "smaller than one 16x16 patch"),
    ],
)
def test_bad_input_errors(tiny, x, exc, pattern) -> None:
    with pytest.raises(exc, match=pattern):
        tiny(x)


def test_non_multiple_sizes_drop_pixels_and_warn_once(tiny) -> None:
    x = torch.randn(1, 3, 37, 50)
    with pytest.warns(UserWarning, match=r"37x50 is not a multiple of the patch size 16.*grid 2x3"):
        out = tiny.forward_features(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tiny.forward_features(x)  # same size: no second warning
        cropped = tiny.forward_features(x[:, :, :32, :48].contiguous())
    assert out["x_norm_patchtokens"].shape == (1, 6, 64)
    torch.testing.assert_close(again["x_prenorm"], cropped["x_prenorm"], atol=1e-6, rtol=0)


def test_torch_compile_matches_eager(tiny) -> None:
    x = torch.randn(2, 3, 32, 48)
    compiled = torch.compile(tiny, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny(x), atol=1e-5, rtol=0)


def test_autocast_bfloat16_stays_close(tiny) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny.forward_features(x)["x_norm_patchtokens"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny.forward_features(x)["x_norm_patchtokens"]
    assert out.dtype in (torch.float32, torch.bfloat16)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert torch.isfinite(out).all()


def test_bfloat16_model_runs(tiny) -> None:
    model = create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=4).to(torch.bfloat16)
    out = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_rope_tables_follow_periods(tiny) -> None:
    rope = tiny.rope_embed
    first = rope(H=2, W=3)
    assert torch.equal(rope(H=2, W=3)[0], first[0])
    with torch.no_grad():
        rope.periods.mul_(2.0)
    changed = rope(H=2, W=3)
    assert changed[0] is not first[0] and not torch.equal(changed[0], first[0])
    with torch.no_grad():
        rope.periods.div_(2.0)
    rope.train()
    assert rope(H=2, W=3)[0] is not rope(H=2, W=3)[0]
    rope.eval()


def test_rope_coordinates_and_layout() -> None:
    """Reference coordinates: for H=2, W=3 rows are [-0.5, 0.5] and columns [-2/3, 0, 2/3]."""
    model = create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=4)
    coords = model.rope_embed._coords(2, 3)
    torch.testing.assert_close(coords[:, 0], torch.tensor([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(coords[:, 1], torch.tensor([-2 / 3, 0.0, 2 / 3] * 2))
    sin, cos = model.rope_embed(H=2, W=3)
    assert sin.shape == (6, 16)
    torch.testing.assert_close(sin[:, :8], sin[:, 8:], atol=0, rtol=0)  # tile(2): [y | x | y | x]


def test_training_mode_and_gradient_checkpointing() -> None:
    model = create_model("dinov3_vits16", depth=2, embed_dim=64, num_heads=4, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    model.rope_embed.rescale_coords = None  # deterministic
    loss = model(x).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_init_weights_reference_rules() -> None:
    model = create_model("dinov3_vits16", depth=1)
    mask = model.blocks[0].attn.qkv.bias_mask
    assert mask[:384].eq(1).all() and mask[384:768].eq(0).all() and mask[768:].eq(1).all()
    assert model.mask_token.eq(0).all()
    assert model.blocks[0].ls1.gamma.eq(1e-5).all()
    assert model.cls_token.std().item() == pytest.approx(0.02, rel=0.3)


def test_logging_is_silent_by_default_and_verbose_on_debug(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov3"):
        create_model("dinov3_vits16", depth=1)
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="dinov3"):
        create_model("dinov3_vits16", depth=1)
    assert any("create_model('dinov3_vits16')" in r.getMessage() for r in caplog.records)
    assert all(r.name.startswith("dinov3") for r in caplog.records)


def test_block_hooks_see_lists_in_forward_features_as_the_reference(tiny) -> None:
    """issue 19 item 4: the reference calls its blocks with lists inside forward_features; ported hook code doing
    ``output[0]`` must get the ``[B, N, D]`` tokens, not the first batch item."""
    x = torch.randn(2, 3, 32, 48)
    seen: list = []
    handle = tiny.blocks[-1].register_forward_hook(lambda mod, args, out: seen.append((args, out)))
    try:
        with torch.no_grad():
            out = tiny.forward_features(x)
            layers = tiny.get_intermediate_layers(x, n=1, norm=False)
    finally:
        handle.remove()
    (args, hooked), (args_il, hooked_il) = seen
    assert isinstance(hooked, list) and len(hooked) == 1 and isinstance(args[0], list) and isinstance(args[1], list)
    assert torch.equal(hooked[0], out["x_prenorm"])  # what `output[0]` gives ported code
    # get_intermediate_layers calls the blocks with a tensor, as the reference's does
    assert isinstance(hooked_il, torch.Tensor) and torch.equal(hooked_il[:, 5:], layers[0])


def test_block_call_patterns(tiny) -> None:
    """issue 19 item 6: ``block(x, rope)``, ``block(x_list, rope_list)`` (reference) and ``rope=`` (earlier API)."""
    blk = tiny.blocks[0]
    a, b = torch.randn(2, 5 + 6, 64), torch.randn(1, 5 + 4, 64)
    ra, rb = tiny.rope_embed(H=2, W=3), tiny.rope_embed(H=2, W=2)
    with torch.no_grad():
        both = blk([a, b], [ra, rb])
        one_a, one_b = blk(a, ra), blk(b, rope=rb)
        no_rope = blk([a, b])
    assert torch.equal(both[0], one_a) and torch.equal(both[1], one_b)
    torch.testing.assert_close(no_rope[1], blk(b, None), atol=0, rtol=0)
    with pytest.raises(ValueError, match="2 token tensors but 1 RoPE"):
        blk([a, b], [ra])
    with pytest.raises(TypeError, match="not both"):
        blk(a, ra, rope=ra)
    with pytest.raises(TypeError, match="tensor or a list"):
        blk((a, b), [ra, rb])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_storage_tokens": -1}, r"n_storage_tokens=-1: must be an integer >= 0"),
        ({"n_storage_tokens": 1.5}, r"n_storage_tokens=1.5"),
        ({"ffn_ratio": float("nan")}, r"ffn_ratio=nan: must be a finite number"),
        ({"ffn_ratio": 0.0}, r"ffn_ratio=0.0"),
        ({"pos_embed_rope_base": float("nan")}, r"pos_embed_rope_base=nan"),
        ({"pos_embed_rope_base": -100.0}, r"pos_embed_rope_base=-100.0"),
        ({"pos_embed_rope_rescale_coords": 0.5}, r"pos_embed_rope_rescale_coords=0.5.*\[1, inf\)"),
        ({"pos_embed_rope_jitter_coords": float("inf")}, r"pos_embed_rope_jitter_coords=inf"),
        ({"pos_embed_rope_shift_coords": -0.1}, r"pos_embed_rope_shift_coords"),
        ({"drop_path_rate": float("nan")}, r"drop_path_rate=nan"),
        ({"drop_path_rate": 1.5}, r"drop_path_rate=1.5.*\[0, 1\]"),
        ({"layerscale_init": float("nan")}, r"layerscale_init=nan"),
        ({"embed_dim": 0}, r"embed_dim=0: must be a positive integer"),
        ({"embed_dim": 64.0}, r"embed_dim=64.0: must be a positive integer"),
        ({"depth": -2}, r"depth=-2"),
        ({"num_heads": 0}, r"num_heads=0"),
        ({"patch_size": True}, r"patch_size=True"),
        ({"in_chans": 0}, r"in_chans=0"),
    ],
)
def test_constructor_validates_ranges(kwargs, pattern) -> None:
    """issue 14 item 8: bad numbers are refused at construction, naming the argument and the valid range."""
    args = {"embed_dim": 64, "depth": 1, "num_heads": 4, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        DinoVisionTransformer(**args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(tiny, dtype) -> None:
    """issue 14 item 15: float64/float16 images into a float32 model are cast (transformers' rule), not a traceback."""
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = tiny(x.to(dtype).float())
        out = tiny(x.to(dtype))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("masks", "exc", "pattern"),
    [
        (torch.zeros(2, 5, dtype=torch.bool), ValueError, r"shape \[B, N\] = \[2, 4\].*got \(2, 5\)"),
        (torch.zeros(2, 2, 2, dtype=torch.bool), ValueError, r"masks.flatten\(1\)"),
        (torch.zeros(1, 4, dtype=torch.bool), ValueError, r"got \(1, 4\)"),
        (torch.zeros(2, 4), TypeError, r"dtype torch.float32; use masks.bool\(\)"),
        ([[True] * 4] * 2, TypeError, r"bool tensor.*got list"),
    ],
)
def test_bad_masks_errors(tiny, masks, exc, pattern) -> None:
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(exc, match=pattern):
        tiny.forward_features(x, masks=masks)


def test_list_input_needs_list_masks(tiny) -> None:
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with pytest.raises(TypeError, match="pass masks as a list too"):
        tiny.forward_features([a, b], masks=torch.zeros(2, 4, dtype=torch.bool))


def test_compute_attention_takes_qkv_as_the_reference(tiny) -> None:
    """issue 19 item 6: ``attn.compute_attention(qkv, attn_bias=None, rope=None)`` with the pre-projected qkv."""
    attn = tiny.blocks[0].attn
    x = torch.randn(2, 5 + 6, 64)
    rope = tiny.rope_embed(H=2, W=3)
    with torch.no_grad():
        qkv = attn.qkv(x)
        out = attn.compute_attention(qkv, rope=rope)
        positional = attn.compute_attention(qkv, None, rope)
        full = attn(x, rope=rope)
        # the same computation written out: heads, RoPE on the patch rows only, SDPA
        q, k, v = qkv.reshape(2, 11, 3, 4, 16).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        sin, cos = rope

        def rot(t: torch.Tensor) -> torch.Tensor:
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat((-t2, t1), dim=-1) * sin

        q = torch.cat((q[:, :, :5], rot(q[:, :, 5:])), dim=2)
        k = torch.cat((k[:, :, :5], rot(k[:, :, 5:])), dim=2)
        manual = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 11, 64)
    assert out.shape == (2, 11, 64)
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=0)
    assert torch.equal(positional, out)
    torch.testing.assert_close(attn.proj(out), full, atol=1e-6, rtol=0)
    with pytest.warns(DeprecationWarning, match=r"compute_attention\(attn.qkv\(x\)"), torch.no_grad():
        legacy = attn.compute_attention(x, rope)  # the earlier (x, rope) form
    assert torch.equal(legacy, out)
    with pytest.raises(ValueError, match=r"expects qkv \[B, N, 192\]"):
        attn.compute_attention(torch.randn(2, 11, 100))
    with pytest.raises(NotImplementedError, match="attn_bias=None"):
        attn.compute_attention(qkv, torch.zeros(1))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"norm_layer": "batchnorm"}, r"unknown norm_layer 'batchnorm'; choose one of \['layernorm'"),
        ({"ffn_layer": "swiglu65"}, r"unknown ffn_layer 'swiglu65'"),
        ({"pos_embed_rope_dtype": "fp8"}, r"unknown pos_embed_rope_dtype 'fp8'"),
        ({"global_pool": "max"}, r"global_pool='max'"),
    ],
)
def test_constructor_validates_names(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        DinoVisionTransformer(embed_dim=64, depth=1, num_heads=4, **kwargs)
