"""No cached decision may change an answer (issue 13 item 1, issue 19 item 2).

Weights and buffers written in ways that bypass version counters (``.data`` copies, EMA updates on ``.data``,
``vector_to_parameters``, ``load_state_dict(assign=True)``, in-place edits of ``bias_mask`` / ``periods`` through
``.data``, changed RoPE attributes) must give, in the very next no-grad forward, the output of a freshly built model
loaded with the same weights: ``torch.equal`` in eager (the fast paths are bit-identical to the reference path),
and under ``torch.compile`` (``backend="eager"``, which traces the same Python decisions without code generation).
"""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from dinov3_integration.models import DinoVisionTransformer

CONFIG = {
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "patch_size": 16,
    "n_storage_tokens": 1,
    "layerscale_init": 1e-5,
    "mask_k_bias": True,
    "pos_embed_rope_dtype": "fp32",
}


def build(**overrides) -> DinoVisionTransformer:
    """A tiny model as ``__init__`` leaves it: zero biases, ``bias_mask = [1, 0, 1]`` (so ``bias * mask == 0``)."""
    return DinoVisionTransformer(**{**CONFIG, **overrides}).eval()


def random_state(**overrides) -> dict[str, torch.Tensor]:
    """Random weights with non-zero biases; ``bias_mask`` all ones so that the masked bias matters."""
    state = randomize_(build(**overrides), std=0.2).state_dict()
    for k in state:
        if k.endswith("bias_mask"):
            state[k] = torch.ones_like(state[k])
    return state


def fresh(state: dict[str, torch.Tensor], **overrides) -> DinoVisionTransformer:
    model = build(**overrides)
    model.load_state_dict(state)
    return model


def no_grad_out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)["x_norm_patchtokens"]


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(got, expected), f"max |diff| {(got - expected).abs().max().item()}"


X = (2, 3, 32, 48)


# ------------------------------------------------------------------------------------------------ issue 13 item 1
def _data_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    for k, t in named.items():
        t.data.copy_(state[k])


def _ema(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """An EMA teacher update with momentum 0 through ``.data`` (``t = t * m + s * (1 - m)``): ends at ``state``."""
    for k, p in model.named_parameters():
        p.data.mul_(0.0).add_(state[k], alpha=1.0)
    for k, b in model.named_buffers():
        b.data.copy_(state[k])


def _vector_to_parameters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    names = [k for k, _ in model.named_parameters()]
    torch.nn.utils.vector_to_parameters(torch.cat([state[k].flatten() for k in names]), model.parameters())
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(state[k])


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)


@pytest.mark.parametrize("write", [_data_copy, _ema, _vector_to_parameters, _assign])
@pytest.mark.parametrize("first_forward", [False, True])
def test_weights_written_any_way_give_the_fresh_models_output(write, first_forward: bool) -> None:
    state = random_state()
    x = torch.randn(X)
    model = build()
    if first_forward:
        no_grad_out(model, x)  # whatever a first forward may decide or cache
    write(model, state)
    assert_same(no_grad_out(model, x), no_grad_out(fresh(state), x))


def test_ema_teacher_under_inference_mode() -> None:
    """The DINO teacher pattern: a real momentum, several steps, forwards in between."""
    student, teacher = random_state(), build()
    x = torch.randn(X)
    for _ in range(3):
        with torch.inference_mode():
            teacher.forward_features(x)
        with torch.no_grad():
            for k, p in teacher.named_parameters():
                p.data.mul_(0.5).add_(student[k], alpha=0.5)
            for k, b in teacher.named_buffers():
                b.data.copy_(student[k])
    expected = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.inference_mode():
        got = teacher.forward_features(x)["x_norm_patchtokens"]
    assert_same(got, no_grad_out(fresh(expected), x))


# ------------------------------------------------------------------------------------------------ issue 19 item 2
def _released_layout_state() -> dict[str, torch.Tensor]:
    """Random weights, non-zero biases, ``bias_mask`` all zeros (as every released checkpoint)."""
    state = random_state()
    for k in state:
        if k.endswith("bias_mask"):
            state[k] = torch.zeros_like(state[k])
    return state


def test_bias_mask_written_through_data_after_a_forward() -> None:
    state = _released_layout_state()
    model, x = fresh(state), torch.randn(X)
    no_grad_out(model, x)
    for blk in model.blocks:
        blk.attn.qkv.bias_mask.data.fill_(1)
    expected = fresh({k: torch.ones_like(v) if k.endswith("bias_mask") else v for k, v in state.items()})
    assert_same(no_grad_out(model, x), no_grad_out(expected, x))


def test_rope_periods_written_through_data_after_a_forward() -> None:
    state = random_state()
    model, x = fresh(state), torch.randn(X)
    no_grad_out(model, x)
    model.rope_embed.periods.data.mul_(2)
    expected = fresh({**state, "rope_embed.periods": state["rope_embed.periods"] * 2})
    assert_same(no_grad_out(model, x), no_grad_out(expected, x))


def test_rope_normalize_coords_changed_after_a_forward() -> None:
    state = random_state()
    model, x = fresh(state), torch.randn(X)  # a 2x3 grid: "max" and "separate" differ
    no_grad_out(model, x)
    model.rope_embed.normalize_coords = "max"
    expected = fresh(state, pos_embed_rope_normalize_coords="max")
    got = no_grad_out(model, x)
    assert_same(got, no_grad_out(expected, x))
    assert not torch.equal(got, no_grad_out(fresh(state), x))  # the attribute matters for this input


# ------------------------------------------------------------------------------------------------ torch.compile
def test_compiled_model_follows_data_writes() -> None:
    """The compiled graph must not bake in a decision taken from values (backend="eager": Dynamo's tracing only)."""
    state = _released_layout_state()
    model, x = fresh(state), torch.randn(X)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    with torch.no_grad():
        compiled(x)  # traced with the zero mask
    for blk in model.blocks:
        blk.attn.qkv.bias_mask.data.fill_(1)
    model.rope_embed.periods.data.mul_(2)
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        got = compiled(x)
    torch.testing.assert_close(got, fresh(changed)(x).detach(), atol=1e-6, rtol=0)
