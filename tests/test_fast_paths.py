"""Correctness (not speed) of the inference fast paths and of ``torch.compile`` (benchmarks/README.md).

The fast paths run when gradients are disabled (``torch.no_grad`` / ``torch.inference_mode``): in-place RoPE inside
the qkv buffer, in-place LayerScale + residual add in the block, in-place activations in the FFNs, and RoPE tables
fetched once per forward in eval, and inside a ViT forward one workspace buffer per role for all blocks with the
residual stream updated in place. They must be bit-identical to the autograd path, which is the reference
computation.
"""

from __future__ import annotations

import os

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
    fast_paths_enabled,
    set_fast_paths,
)
from dinov3_integration.layers.ffn import SwiGLUFFN
from dinov3_integration.layers.rope import rope_apply, rope_apply_
from dinov3_integration.layers.workspace import Role, Workspace, inference_workspace
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
def test_rope_tables_are_computed_per_call() -> None:
    """No cache: the tables always follow ``periods`` (also after ``load_state_dict`` and ``.to()``)."""
    model = tiny_model()
    rope = model.rope_embed
    a = rope(H=2, W=2)
    assert torch.equal(a[0], rope.compute(2, 2)[0]) and torch.equal(a[1], rope.compute(2, 2)[1])
    sd = model.state_dict()
    sd["rope_embed.periods"] = sd["rope_embed.periods"] * 2
    model.load_state_dict(sd)
    b = rope(H=2, W=2)
    assert not torch.equal(b[0], a[0])
    assert torch.equal(b[0], rope.compute(2, 2)[0])
    model.to(torch.float64)
    assert rope(H=2, W=2)[0].dtype == torch.float64


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
    model(x)
    assert len(calls) == 3
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
    a = ws.take(Role.WIDE, (4, 6), like)
    ws.release(a)
    b = ws.take(Role.WIDE, (3, 8), like)  # 24 elements: same memory, another shape
    assert b.shape == (3, 8) and b.data_ptr() == a.data_ptr()
    ws.release(b)
    c = ws.take(Role.WIDE, (5, 6), like, spare=4)  # larger: grown, with 4 spare elements after it
    assert c.shape == (5, 6) and c.is_contiguous()
    assert ws.spare(Role.WIDE, (2, 2), like).data_ptr() == c.data_ptr() + 30 * c.element_size()
    with pytest.raises(RuntimeError, match="spare room"):
        ws.spare(Role.WIDE, (5,), like)
    branch = ws.take(Role.BRANCH, (4, 6), like)
    assert branch.data_ptr() != c.data_ptr()
    assert ws.take(Role.WIDE, (4, 6), torch.empty(0, dtype=torch.float64)).dtype == torch.float64  # own buffer
    assert ws.holds(c) and not ws.holds(c.view(30))
    ws.release(c.view(30))  # not the taken tensor: a no-op
    assert ws.holds(c)


def test_workspace_refuses_overlapping_lifetimes() -> None:
    """A role taken twice would hand out memory that still holds a live tensor: an error, never silent."""
    ws = Workspace()
    like = torch.empty(0)
    held = ws.take(Role.BRANCH, (2, 3), like)
    with pytest.raises(RuntimeError, match="taken twice"):
        ws.take(Role.BRANCH, (2, 3), like)
    with pytest.raises(RuntimeError, match="cannot grow"):
        ws.reserve(Role.BRANCH, 100, like)
    ws.release(held)
    ws.take(Role.BRANCH, (2, 3), like)


def test_debug_workspace_poisons_taken_and_released_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOV3_DEBUG_WORKSPACE", "1")
    ws = Workspace()
    assert ws.debug and not Workspace(debug=False).debug
    like = torch.empty(0)
    t = ws.take(Role.WIDE, (2, 3), like)
    assert t.isnan().all()  # uninitialised memory reads as NaN
    t.fill_(1.0)
    stale = t.view(6)  # a view kept past the release
    ws.release(t)
    assert stale.isnan().all()  # any use of a dead tensor shows up as NaN
    monkeypatch.setenv("DINOV3_DEBUG_WORKSPACE", "0")
    assert not Workspace().debug


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

    WIDE holds qkv (3D) with room for a RoPE temporary after it, then the MLP hidden activation (4D), all in one
    allocation; BRANCH the other RoPE temporary, then the projections back to D. Every take is released.
    """
    model = tiny_model(depth=3)
    x = torch.randn(2, 3, 32, 48)
    ptrs: dict[Role, set[int]] = {}  # role -> data pointers handed out
    allocations: dict[Role, set[int]] = {}  # role -> the role's underlying buffers
    workspaces: list[Workspace] = []
    original_take, original_reserve = Workspace.take, Workspace.reserve

    def spy_take(self, role, shape, like, spare=0):
        buf = original_take(self, role, shape, like, spare)
        ptrs.setdefault(role, set()).add(buf.data_ptr())
        workspaces.append(self)
        return buf

    def spy_reserve(self, role, numel, like):
        original_reserve(self, role, numel, like)
        allocations.setdefault(role, set()).add(self._buffers[(role, like.dtype, like.device)].data_ptr())

    monkeypatch.setattr(Workspace, "take", spy_take)
    monkeypatch.setattr(Workspace, "reserve", spy_reserve)
    expected = autograd_path(model.forward_features, x)
    assert ptrs == {}  # not with autograd
    with torch.inference_mode():
        got = model.forward_features(x)
    assert_equal_tree(got, expected)
    assert set(ptrs) == {Role.WIDE, Role.BRANCH}
    assert len(ptrs[Role.WIDE]) == 1 and len(ptrs[Role.BRANCH]) == 1, ptrs
    assert all(len(a) == 1 for a in allocations.values()), allocations  # one allocation per role, never grown
    assert len(set(map(id, workspaces))) == 1 and workspaces[0].taken() == []  # all released
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


def test_zero_masked_bias_model_fast_path_matches_autograd_path() -> None:
    model = zero_mask_model()
    x = torch.randn(2, 3, 32, 48)
    expected = autograd_path(model.forward_features, x)
    with torch.inference_mode():
        assert_equal_tree(model.forward_features(x), expected)
    model.use_workspace = False
    with torch.no_grad():
        assert_equal_tree(model.forward_features(x), expected)


def test_masked_bias_is_always_added() -> None:
    """``bias * bias_mask`` is added on every call, whatever its values (NaN * 0 is NaN, as in the reference)."""
    qkv = randomize_(LinearKMaskedBias(8, 24))
    x = torch.randn(3, 8)
    with torch.no_grad():
        for edit in (lambda: None, qkv.bias_mask.zero_, lambda: qkv.bias.data.__setitem__(0, float("nan"))):
            edit()
            expected = torch.nn.functional.linear(x, qkv.weight, qkv.bias * qkv.bias_mask)
            torch.testing.assert_close(qkv(x), expected, rtol=0, atol=0, equal_nan=True)
        assert qkv(x)[:, 0].isnan().all()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_with_vanishing_masked_bias_equals_eager(backend: str) -> None:
    model = zero_mask_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, dynamic=False)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(compiled(x), autograd_path(model, x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ switch, decision
FAST_FORWARDS = [(SelfAttention, "_forward_fast"), (Mlp, "_forward_fast"), (SelfAttentionBlock, "_forward_fast")]


def _count_fast_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls: dict[str, int] = {}
    for cls, name in FAST_FORWARDS:
        original = getattr(cls, name)

        def spy(self, *args, _original=original, _key=cls.__name__, **kwargs):
            calls[_key] = calls.get(_key, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    return calls


def test_one_switch_turns_every_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 32, 48)
    expected = autograd_path(model.forward_features, x)
    calls = _count_fast_calls(monkeypatch)
    with torch.no_grad():
        assert_equal_tree(model.forward_features(x), expected)
    assert calls == {"SelfAttention": 2, "Mlp": 2, "SelfAttentionBlock": 2}  # they do run by default
    for off in ("process", "model"):
        calls.clear()
        if off == "process":
            set_fast_paths(False)
        else:
            model.use_fast_paths = False
        try:
            assert not fast_paths_enabled() or off == "model"
            with torch.no_grad():
                assert_equal_tree(model.forward_features(x), expected)
                layers = model.get_intermediate_layers(x, n=2)
            assert_equal_tree(layers, autograd_path(lambda t: model.get_intermediate_layers(t, n=2), x))
            assert calls == {}, off
        finally:
            set_fast_paths(True)
            model.use_fast_paths = True


def test_environment_variable_turns_the_fast_paths_off() -> None:
    import subprocess
    import sys

    code = "from dinov3_integration.layers import fast_paths_enabled as f; print(f())"
    env = {**os.environ, "DINOV3_FAST_PATHS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env["DINOV3_FAST_PATHS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("overrides", [{}, {"ffn_layer": "swiglu64", "untie_cls_and_patch_norms": True}])
def test_debug_workspace_mode_gives_identical_outputs(monkeypatch: pytest.MonkeyPatch, overrides) -> None:
    """With every buffer poisoned (NaN) when taken and released, a read of a dead tensor would show in the output."""
    monkeypatch.setenv("DINOV3_DEBUG_WORKSPACE", "1")
    poisoned = []
    original_release = Workspace.release

    def spy_release(self, tensor):
        poisoned.append(self.debug)
        return original_release(self, tensor)

    monkeypatch.setattr(Workspace, "release", spy_release)
    model = tiny_model(depth=3, **overrides)
    x = torch.randn(2, 3, 32, 48)
    xs = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 48, 32)]
    layers = lambda t: model.get_intermediate_layers(t, n=[0, 2], norm=False)  # noqa: E731
    expected = [autograd_path(model.forward_features, x), autograd_path(layers, x), autograd_path(model, xs)]
    with torch.inference_mode():
        got = [model.forward_features(x), layers(x), model(xs)]
    assert_equal_tree(got, expected)
    assert poisoned and all(poisoned)


class _TanhGELU(torch.nn.GELU):
    """A GELU subclass that computes something else: the fast path must not replace it by the exact GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class _ScaledLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


def test_subclasses_take_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = randomize_(Mlp(8, 16, act_layer=_TanhGELU)).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.fc2(torch.tanh(mlp.fc1(x))))
    attn = randomize_(SelfAttention(16, num_heads=2, qkv_bias=True)).eval()
    scaled = _ScaledLinear(16, 48)
    scaled.load_state_dict(attn.qkv.state_dict())
    attn.qkv = scaled
    x = torch.randn(2, 5, 16)
    calls = _count_fast_calls(monkeypatch)
    expected = autograd_path(attn, x)
    with torch.no_grad():
        assert torch.equal(attn(x), expected)
    assert calls == {}
    blk = randomize_(SelfAttentionBlock(16, 2, init_values=1e-3, act_layer=_TanhGELU)).eval()
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        out = blk(x)
    torch.testing.assert_close(out, autograd_path(blk, x), rtol=0, atol=0)
    assert calls == {"SelfAttention": 1, "SelfAttentionBlock": 1}  # Mlp with a GELU subclass: reference


def test_layers_use_no_private_torch_c_api() -> None:
    from pathlib import Path

    import dinov3_integration.layers as layers_pkg

    for path in Path(layers_pkg.__file__).parent.glob("*.py"):
        assert "torch._C" not in path.read_text(), path.name


def test_moved_workspace_helpers_keep_their_old_import_path() -> None:
    from dinov3_integration.layers import fastpath, workspace
    from dinov3_integration.layers.workspace import can_write_into, linear, linear_into

    assert (linear, linear_into, can_write_into) == (fastpath.linear, fastpath.linear_into, fastpath.can_write_into)
    with pytest.raises(AttributeError):
        workspace.no_such_name  # noqa: B018
