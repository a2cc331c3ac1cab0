"""Correctness (not speed) of the inference fast paths and of ``torch.compile`` (benchmarks/README.md).

The fast paths run when gradients are disabled (``torch.no_grad`` / ``torch.inference_mode``): in-place RoPE inside
the qkv buffer, in-place LayerScale + residual add in the block, in-place activations in the FFNs, and RoPE tables
fetched once per forward in eval, and inside a ViT forward one workspace buffer per role for all blocks with the
residual stream updated in place. They must be bit-identical to the autograd path, which is the reference
computation.
"""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.layers import (
    LayerScale,
    LinearKMaskedBias,
    Mlp,
    RopePositionEmbedding,
    SelfAttention,
    SelfAttentionBlock,
)
from dinov3_integration.layers.ffn import SwiGLUFFN
from dinov3_integration.layers.rope import rope_apply, rope_apply_
from dinov3_integration.layers.workspace import Workspace, active_workspace, inference_workspace
from dinov3_integration.models import DinoVisionTransformer

TINY = {
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "patch_size": 16,
    "n_storage_tokens": 2,
    "layerscale_init": 1e-5,
    "mask_k_bias": True,
    "norm_layer": "layernormbf16",
    "pos_embed_rope_dtype": "fp32",
    "pos_embed_rope_rescale_coords": 2,
}


def tiny_model(**overrides) -> DinoVisionTransformer:
    model = DinoVisionTransformer(**{**TINY, **overrides}).eval()
    return randomize_(model, std=0.2)


def autograd_path(fn, *args):
    """Run ``fn`` with gradients enabled (the reference, non-fast path) and detach the result."""
    with torch.enable_grad():
        out = fn(*args)
    return tree_detach(out)


def tree_detach(out):
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, dict):
        return {k: tree_detach(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(tree_detach(v) for v in out)
    return out


def assert_equal_tree(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), f"max |diff| {(a.float() - b.float()).abs().max().item()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_equal_tree(u, v)
    else:
        assert a == b


# ------------------------------------------------------------------------------------------------ rope_apply_
def _tables(n: int, d: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.randn(n, d)
    return angles.sin().to(dtype), angles.cos().to(dtype)


def test_rope_apply_inplace_is_bit_identical_on_strided_views() -> None:
    sin, cos = _tables(7, 16)
    qkv = torch.randn(2, 9, 3, 4, 16)  # [B, N, 3, h, d]; q is a strided view, the last 7 tokens are patches
    q = qkv[:, :, 0].transpose(1, 2)
    expected = rope_apply(q[:, :, 2:], sin, cos)
    prefix = q[:, :, :2].clone()
    v_before = qkv[:, :, 2].clone()
    out = rope_apply_(q[:, :, 2:], sin, cos)
    assert torch.equal(q[:, :, 2:], expected)
    assert torch.equal(out, expected)
    assert torch.equal(q[:, :, :2], prefix)
    assert torch.equal(qkv[:, :, 2], v_before)


def test_rope_apply_inplace_bfloat16_rounds_like_the_out_of_place_path() -> None:
    sin, cos = _tables(5, 8)
    x = torch.randn(3, 5, 8).to(torch.bfloat16)
    expected = rope_apply(x.float(), sin, cos).to(torch.bfloat16)
    rope_apply_(x, sin, cos)
    assert torch.equal(x, expected)


def test_rope_apply_inplace_refuses_narrower_tables() -> None:
    sin, cos = _tables(5, 8, torch.bfloat16)
    with pytest.raises(ValueError, match="lower-precision"):
        rope_apply_(torch.randn(5, 8), sin, cos)


# ------------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("rope_dtype", [torch.float32, torch.bfloat16])
def test_attention_inplace_rope_matches_autograd_path(qk_norm: bool, rope_dtype: torch.dtype) -> None:
    attn = randomize_(SelfAttention(32, num_heads=2, qkv_bias=True, mask_k_bias=True, qk_norm=qk_norm)).eval()
    rope = RopePositionEmbedding(32, num_heads=2, dtype=rope_dtype).eval()(H=3, W=4)
    x = torch.randn(2, 3 + 12, 32)
    expected = autograd_path(attn, x, None, rope)
    with torch.no_grad():
        assert_equal_tree(attn(x, rope=rope), expected)
    with torch.inference_mode():
        assert_equal_tree(attn(x, rope=rope), expected)


def test_attention_callable_rope_path_is_unchanged() -> None:
    """VGGT passes a callable ``rope(q, k)``; it must receive ``[B, h, N, d]`` q/k and its result must be used."""
    attn = randomize_(SelfAttention(32, num_heads=2, qkv_bias=True, qk_norm=True)).eval()
    seen = []

    def rope(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(q.shape)
        return q * 2.0, k.flip(-2)

    x = torch.randn(2, 6, 32)
    expected = autograd_path(attn, x, None, rope)
    with torch.no_grad():
        assert_equal_tree(attn(x, rope=rope), expected)
    assert seen == [torch.Size([2, 2, 6, 16])] * 2


# ------------------------------------------------------------------------------------------------ block / ffn
@pytest.mark.parametrize("init_values", [None, 1e-3])
@pytest.mark.parametrize("ffn_layer", [Mlp, SwiGLUFFN])
@pytest.mark.parametrize("autocast", [False, True])
def test_block_fast_path_matches_autograd_path(init_values, ffn_layer, autocast: bool) -> None:
    blk = SelfAttentionBlock(32, 2, init_values=init_values, ffn_layer=ffn_layer, qkv_bias=True, mask_k_bias=True)
    blk = randomize_(blk).eval()
    rope = RopePositionEmbedding(32, num_heads=2).eval()(H=2, W=3)
    x = torch.randn(2, 1 + 6, 32)
    x_before = x.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = autograd_path(blk, x, rope)
        with torch.no_grad():
            out = blk(x, rope)
    assert_equal_tree(out, expected)
    assert torch.equal(x, x_before), "the block must not modify its input"


@pytest.mark.parametrize("ffn_layer", [Mlp, SwiGLUFFN])
def test_hooked_outputs_are_not_overwritten(ffn_layer) -> None:
    """Forward hooks may keep outputs (feature extraction): the in-place paths must not modify what they saw."""
    blk = SelfAttentionBlock(32, 2, init_values=1e-3, ffn_layer=ffn_layer, qkv_bias=True, mask_k_bias=True)
    blk = randomize_(blk).eval()
    rope = RopePositionEmbedding(32, num_heads=2).eval()(H=2, W=3)
    x = torch.randn(2, 7, 32)
    names = ["attn.qkv", "attn.proj", "attn", "mlp", "ls1"] + (
        ["mlp.fc1", "mlp.act"] if ffn_layer is Mlp else ["mlp.w1"]
    )

    def run(enable_grad: bool) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        handles = [
            blk.get_submodule(n).register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, out))
            for n in names
        ]
        with torch.set_grad_enabled(enable_grad):
            seen["out"] = blk(x, rope)
        for h in handles:
            h.remove()
        return {k: v.detach().clone() for k, v in seen.items()}

    expected = run(True)
    got = run(False)
    assert_equal_tree(got, expected)


def test_hooks_fire_under_no_grad() -> None:
    mlp = randomize_(Mlp(8, 16)).eval()
    calls = []
    mlp.act.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    with torch.no_grad():
        mlp(torch.randn(3, 8))
    assert len(calls) == 1
    blk = randomize_(SelfAttentionBlock(16, 2, init_values=1e-3)).eval()
    blk.ls1.register_forward_hook(lambda mod, inp, out: calls.append(1))
    with torch.no_grad():
        blk(torch.randn(1, 4, 16))
    assert calls[-1] == 1
    assert isinstance(blk.ls1, LayerScale)


def test_global_forward_hook_disables_the_in_place_paths() -> None:
    blk = randomize_(SelfAttentionBlock(16, 2, init_values=1e-3)).eval()
    rope = RopePositionEmbedding(16, num_heads=2).eval()(H=1, W=3)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(mod, inp, out) -> None:
        if isinstance(out, torch.Tensor):
            seen.append((out, out.clone()))  # the tensor, and its value when the hook saw it

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            blk(torch.randn(1, 4, 16), rope)
    finally:
        handle.remove()
    assert len(seen) > 5
    for out, value_then in seen:
        assert torch.equal(out, value_then)


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_model_fast_path_matches_autograd_path(context) -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 48, 64)
    expected = autograd_path(model.forward_features, x)
    expected_layers = autograd_path(
        lambda t: model.get_intermediate_layers(t, n=2, return_class_token=True, return_extra_tokens=True), x
    )
    raw = autograd_path(lambda t: model.get_intermediate_layers(t, n=[0, 1], norm=False), x)
    with context():
        assert_equal_tree(model.forward_features(x), expected)
        assert_equal_tree(
            model.get_intermediate_layers(x, n=2, return_class_token=True, return_extra_tokens=True), expected_layers
        )
        # raw block outputs are returned as-is: a later block must not have overwritten an earlier one
        assert_equal_tree(model.get_intermediate_layers(x, n=[0, 1], norm=False), raw)


def test_model_fast_path_matches_autograd_path_under_bfloat16_autocast() -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = autograd_path(model.forward_features, x)
        with torch.inference_mode():
            assert_equal_tree(model.forward_features(x), expected)


def test_model_swiglu_untied_fast_path_matches_autograd_path() -> None:
    model = tiny_model(ffn_layer="swiglu64", untie_cls_and_patch_norms=True, n_storage_tokens=0, mask_k_bias=False)
    x = torch.randn(1, 3, 32, 48)
    expected = autograd_path(model, x)
    with torch.inference_mode():
        assert_equal_tree(model(x), expected)


def test_model_list_input_fast_path_matches_autograd_path() -> None:
    model = tiny_model()
    xs = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 48, 32)]
    expected = autograd_path(model.forward_features, xs)
    with torch.no_grad():
        assert_equal_tree(model.forward_features(xs), expected)


# ------------------------------------------------------------------------------------------------ rope cache
def test_rope_cache_hit_returns_the_same_tensors() -> None:
    rope = RopePositionEmbedding(64, num_heads=2).eval()
    a = rope(H=3, W=5)
    b = rope(H=3, W=5)
    assert a[0] is b[0] and a[1] is b[1]
    assert rope(H=5, W=3)[0] is not a[0]
    fresh = rope.compute(3, 5)
    assert torch.equal(a[0], fresh[0]) and torch.equal(a[1], fresh[1])


def test_rope_cache_invalidated_by_load_state_dict_and_to() -> None:
    model = tiny_model()
    rope = model.rope_embed
    a = rope(H=2, W=2)
    sd = model.state_dict()
    sd["rope_embed.periods"] = sd["rope_embed.periods"] * 2
    model.load_state_dict(sd)
    b = rope(H=2, W=2)
    assert b[0] is not a[0] and not torch.equal(b[0], a[0])
    assert torch.equal(b[0], rope.compute(2, 2)[0])
    assert len(rope._cache) > 0
    model.to(torch.float32)
    assert len(rope._cache) == 0
    c = rope(H=2, W=2)
    assert c[0] is not b[0] and torch.equal(c[0], b[0])


def test_rope_fetched_once_per_forward_in_eval_and_per_block_in_training() -> None:
    model = tiny_model(depth=3)
    calls = []
    model.rope_embed.register_forward_hook(lambda mod, inp, out: calls.append(out))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert len(calls) == 1
    calls.clear()
    model.train()
    model.rope_embed._cache.clear()
    model(x)
    assert len(calls) == 3
    assert len(model.rope_embed._cache) == 0, "training must not use (or fill) the cache"
    # augmentations draw new coordinates per block in training
    assert not torch.equal(calls[0][0], calls[1][0])


# ------------------------------------------------------------------------------------------------ torch.compile
def _explain(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


@pytest.mark.parametrize("grad", [False, True])
def test_no_graph_breaks(grad: bool) -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 32, 48)
    with torch.set_grad_enabled(grad):
        for fn in (model, model.forward_features):
            explanation = _explain(fn, x)
            assert explanation.graph_break_count == 0, explanation.break_reasons
            assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_equals_eager(backend: str) -> None:
    model = tiny_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=False)
    for shape in [(2, 3, 32, 48), (1, 3, 48, 32)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(compiled(x), autograd_path(model, x), atol=1e-6, rtol=0)


def test_one_compile_per_resolution() -> None:
    """Repeated calls at a seen shape reuse the graph; each new resolution compiles once (dynamic=False)."""
    from torch._dynamo.testing import CompileCounter

    model = tiny_model()
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    with torch.no_grad():
        for shape in [(2, 3, 32, 48), (2, 3, 32, 48), (2, 3, 48, 32), (2, 3, 32, 48), (2, 3, 48, 32)]:
            compiled(torch.randn(shape))
    assert counter.frame_count == 2


def test_compiled_inductor_equals_eager() -> None:
    """The real backend once, on a 1-block model (~20 s cold on 2 cores, most of it C++ compilation)."""
    model = tiny_model(depth=1)
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ workspace
def test_workspace_buffer_is_reused_and_grows() -> None:
    ws = Workspace()
    like = torch.empty(0)
    a = ws.buffer("wide", (4, 6), like)
    b = ws.buffer("wide", (3, 8), like)  # 24 elements: same memory, another shape
    assert b.shape == (3, 8) and b.data_ptr() == a.data_ptr()
    c = ws.buffer("wide", (5, 6), like)  # larger: grown
    assert c.shape == (5, 6) and c.is_contiguous()
    assert ws.buffer("branch", (4, 6), like).data_ptr() != c.data_ptr()
    assert ws.buffer("wide", (4, 6), torch.empty(0, dtype=torch.float64)).dtype == torch.float64
    tail = ws.buffer("wide", (2, 3), like, offset=24)  # inside the 30 elements: the same memory, 24 in
    assert tail.data_ptr() == c.data_ptr() + 24 * c.element_size()
    grown = ws.buffer("wide", (2, 5), like, offset=24)  # past the end: new memory; c stays valid (its own storage)
    assert grown.data_ptr() != c.data_ptr() + 24 * c.element_size() and ws.reserve("wide", 1, like).numel() == 34


def test_rope_apply_inplace_with_scratch_is_bit_identical() -> None:
    sin, cos = _tables(5, 8)
    x = torch.randn(2, 5, 3, 8)[:, :, :2].transpose(1, 2)  # strided, like q/k inside qkv
    expected = rope_apply(x.clone(), sin, cos)
    scratch = (torch.full((2, 2, 5, 4), float("nan")), torch.full((2, 2, 5, 4), float("nan")))
    got = rope_apply_(x, sin, cos, scratch=scratch)
    assert got is x and torch.equal(x, expected)


def test_workspace_ownership_is_by_identity() -> None:
    ws = Workspace()
    x = ws.own(torch.zeros(3))
    assert ws.owns(x) and not ws.owns(x.view(3)) and not ws.owns(x.clone())
    y = ws.own(torch.zeros(3), replacing=x)
    assert ws.owns(y) and not ws.owns(x)


def test_model_forward_reuses_workspace_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path really runs through the workspace: one buffer per role for all blocks.

    "wide" holds qkv (3D) with room for a RoPE temporary after it, then the MLP hidden activation (4D), all in one
    allocation; "branch" the other RoPE temporary, then the projections back to D.
    """
    model = tiny_model(depth=3)
    x = torch.randn(2, 3, 32, 48)
    ptrs: dict[str, set[int]] = {}  # role -> data pointers handed out
    allocations: dict[str, set[int]] = {}  # role -> the role's underlying buffers
    original_buffer, original_reserve = Workspace.buffer, Workspace.reserve

    def spy_buffer(self, role, shape, like, offset=0):
        buf = original_buffer(self, role, shape, like, offset)
        ptrs.setdefault(role, set()).add(buf.data_ptr())
        return buf

    def spy_reserve(self, role, numel, like):
        flat = original_reserve(self, role, numel, like)
        allocations.setdefault(role, set()).add(flat.data_ptr())
        return flat

    monkeypatch.setattr(Workspace, "buffer", spy_buffer)
    monkeypatch.setattr(Workspace, "reserve", spy_reserve)
    expected = autograd_path(model.forward_features, x)
    assert ptrs == {}  # not with autograd
    with torch.inference_mode():
        got = model.forward_features(x)
    assert_equal_tree(got, expected)
    assert set(ptrs) == {"wide", "branch"}
    assert len(ptrs["wide"]) == 2 and len(ptrs["branch"]) == 1, ptrs  # wide: qkv, and the RoPE temporary after it
    assert all(len(a) == 1 for a in allocations.values()), allocations  # one allocation per role, never grown
    assert active_workspace() is None  # left when the forward returned
    ptrs.clear()
    model.use_workspace = False
    with torch.inference_mode():
        assert_equal_tree(model.forward_features(x), expected)
    assert ptrs == {}


def test_block_in_a_workspace_leaves_a_foreign_input_alone() -> None:
    """A tensor the workspace does not own is never written, and results never alias a workspace buffer."""
    blk = randomize_(SelfAttentionBlock(32, 2, init_values=1e-3, qkv_bias=True, mask_k_bias=True)).eval()
    rope = RopePositionEmbedding(32, num_heads=2).eval()(H=2, W=3)
    x = torch.randn(2, 7, 32)
    x_before = x.clone()
    expected = autograd_path(blk, x, rope)
    with torch.no_grad(), inference_workspace() as ws:
        out = blk(x, rope)
        assert torch.equal(x, x_before) and ws.owns(out) and not ws.owns(x)
        out_value = out.clone()
        out2 = blk(out, rope)  # owned: updated in place
        assert out2 is out
        third = blk(x, rope)  # reuses the buffers the first call used
    assert torch.equal(out_value, expected)
    assert torch.equal(third, expected)
    assert torch.equal(out2, autograd_path(blk, expected, rope))


def test_block_hook_on_the_model_keeps_block_outputs() -> None:
    """A hook on a block sees the residual stream, which the workspace path would update in place later."""
    model = tiny_model(depth=3)
    x = torch.randn(1, 3, 32, 32)

    def run(enable_grad: bool) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        # forward_features calls the blocks with a list of tensors, as the reference (issue 19 item 4)
        handle = model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out[0]))
        with torch.set_grad_enabled(enable_grad):
            seen.append(model(x))
        handle.remove()
        return [t.detach() for t in seen]

    assert_equal_tree(run(False), run(True))


def test_bfloat16_model_fast_path_matches_autograd_path() -> None:
    model = tiny_model().to(torch.bfloat16)
    x = torch.randn(2, 3, 32, 48, dtype=torch.bfloat16)
    expected = autograd_path(model.forward_features, x)
    with torch.inference_mode():
        assert_equal_tree(model.forward_features(x), expected)


# ------------------------------------------------------------------------------------------------ zero masked bias
def zero_mask_model() -> DinoVisionTransformer:
    """Like the released checkpoints: ``qkv.bias_mask`` all zeros (loaded with the state dict)."""
    model = tiny_model()
    state = model.state_dict()
    for k in state:
        if k.endswith("qkv.bias_mask"):
            state[k] = torch.zeros_like(state[k])
    model.load_state_dict(state)
    return model


def test_vanishing_masked_bias_is_skipped_only_without_gradients() -> None:
    model = zero_mask_model()
    qkv = model.blocks[0].attn.qkv
    assert qkv.effective_bias() is not None  # gradients on: the reference computation
    with torch.no_grad():
        assert qkv.effective_bias() is None
    x = torch.randn(2, 3, 32, 48)
    expected = autograd_path(model.forward_features, x)
    with torch.inference_mode():
        assert_equal_tree(model.forward_features(x), expected)
    model.use_workspace = False
    with torch.no_grad():
        assert_equal_tree(model.forward_features(x), expected)


def test_vanishing_masked_bias_is_rechecked_after_changes() -> None:
    qkv = randomize_(LinearKMaskedBias(8, 24))
    with torch.no_grad():
        assert qkv.effective_bias() is not None  # mask [1, 0, 1]
        qkv.bias_mask.zero_()
        assert qkv.effective_bias() is None
        qkv.bias[0] = float("nan")  # NaN * 0 is NaN: the reference output is NaN, so the bias is kept
        assert qkv.effective_bias() is not None
        qkv.bias[0] = 1.0
        assert qkv.effective_bias() is None
        qkv.reset_bias_mask()
        assert torch.equal(qkv.effective_bias(), qkv.masked_bias())


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_with_vanishing_masked_bias_equals_eager(backend: str) -> None:
    model = zero_mask_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=False)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(compiled(x), autograd_path(model, x), atol=1e-6, rtol=0)
