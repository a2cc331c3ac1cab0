"""The Aggregator as VGGT's heads, VGGT's training code and Spatial-MLLM call it (issue 12), tiny configs on CPU."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

from dinov3_integration.vggt_compat import Aggregator, BackboneFamilyError, StateDictMismatchError
from dinov3_integration.vggt_compat import aggregator as aggregator_module
from dinov3_integration.vggt_compat.layers import vision_transformer as dinov2_module
from dinov3_integration.vggt_compat.outputs import LayerNotKeptError, LayerOutputs

VGGT_HEAD_LAYERS = [4, 11, 17, 23]


def tiny(**kwargs) -> Aggregator:
    torch.manual_seed(0)
    defaults = dict(img_size=28, patch_size=14, embed_dim=32, depth=24, num_heads=4, patch_embed="conv")
    return Aggregator(**{**defaults, **kwargs}).eval()


def images(B: int = 1, S: int = 2, H: int = 28, W: int = 42) -> torch.Tensor:
    return torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ VGGT's heads


def dpt_head_reads(aggregated_tokens_list, patch_start_idx):
    """What VGGT's DPTHead does with the list: absolute layer indices, then the patch tokens."""
    return [aggregated_tokens_list[layer_idx][:, :, patch_start_idx:] for layer_idx in VGGT_HEAD_LAYERS]


def camera_head_reads(aggregated_tokens_list):
    """VGGT's CameraHead: the camera token of the last layer."""
    return aggregated_tokens_list[-1][:, :, 0]


def spatial_mllm_encoder(aggregated_tokens_list, patch_start_idx, batch_size, layer_idx=-1):
    """Spatial-MLLM's encoder: split every entry per video, then its connector reads ``[layer_idx]``."""
    per_video = [[tokens[i] for tokens in aggregated_tokens_list] for i in range(batch_size)]
    return [layers[layer_idx][:, patch_start_idx:] for layers in per_video]


def test_vggt_heads_and_spatial_mllm_read_the_full_runs_tensors():
    agg = tiny()
    x = images(B=2)
    with torch.no_grad():
        full, start = agg(x)
        kept, start_kept = agg(x, output_layers=VGGT_HEAD_LAYERS)
    assert isinstance(full, list) and len(full) == 24  # "all": VGGT's plain list
    assert isinstance(kept, LayerOutputs) and start_kept == start == 5
    for a, b in zip(dpt_head_reads(kept, start), dpt_head_reads(full, start)):
        assert torch.equal(a, b)
    assert torch.equal(camera_head_reads(kept), camera_head_reads(full))
    assert torch.equal(kept[23], full[23]) and torch.equal(kept[-20], full[4])
    for a, b in zip(spatial_mllm_encoder(kept, start, 2), spatial_mllm_encoder(full, start, 2)):
        assert torch.equal(a, b)
    # len() is the depth (indices mean VGGT's), iteration yields the kept layers in layer order
    assert len(kept) == 24 and kept.layers == VGGT_HEAD_LAYERS
    assert [t.data_ptr() for t in kept] == [kept[i].data_ptr() for i in VGGT_HEAD_LAYERS]
    assert all(torch.equal(t, full[i]) for i, t in kept.items())


def test_reading_a_layer_not_kept_names_the_fix():
    agg = tiny(output_layers=[-1, 4])
    with torch.no_grad():
        out, _ = agg(images())
    assert out.layers == [4, 23] and torch.equal(out[-1], out[23])
    with pytest.raises(LayerNotKeptError, match=r"layer 11 .*holds layers \[4, 23\].*output_layers=\[4, 11, 23\]"):
        out[11]
    with pytest.raises(LayerNotKeptError, match=r"layer 5 \(index -19\)"):
        out[-19]
    with pytest.raises(LayerNotKeptError):
        out[20:]  # a slice reads every layer in it
    assert [t.shape[-1] for t in out[23:]] == [64]
    with pytest.raises(IndexError, match="out of range"):
        out[24]
    # What pad_output_list gives instead: a plain list with None placeholders (kept for old callers).
    padded = tiny(output_layers=[4], pad_output_list=True)
    with torch.no_grad():
        pad, _ = padded(images())
    assert isinstance(pad, list) and len(pad) == 24 and pad[3] is None and torch.equal(pad[4], out[4])


def test_readme_example_with_heads_layers():
    """The README's memory-mode example, at a tiny width: VGGT's heads read the four layers absolutely."""
    agg = tiny(output_layers=[4, 11, 17, 23])
    with torch.inference_mode():
        output_list, patch_start_idx = agg(images())
    assert [output_list[i].shape for i in (4, 11, 17, 23, -1)] == [(1, 2, 11, 64)] * 5


# ------------------------------------------------------------------------------------------------ training memory


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.saved_bytes = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._seen:
            self._seen.add(ptr)
            self.saved_bytes += t.untyped_storage().nbytes()
        return t


def kept_for_backward(agg: Aggregator, x: torch.Tensor, monkeypatch) -> _Counter:
    """Checkpoint calls and bytes saved for backward (saved-tensor hooks, distinct storages) of one forward."""
    counter = _Counter()
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        counter.calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(aggregator_module, "checkpoint", counting)
    monkeypatch.setattr(dinov2_module, "checkpoint", counting)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        outputs, _ = agg(x)
    (outputs[-1].float().square().mean()).backward()
    return counter


def small_dinov2(**kwargs) -> Aggregator:
    return tiny(
        depth=4, patch_embed="dinov2_vitl14_reg", patch_embed_config=dict(embed_dim=32, depth=2, num_heads=2), **kwargs
    )


def test_training_checkpoints_every_block_by_default_as_vggt(monkeypatch):
    x = images(S=4, H=56, W=56)
    default = kept_for_backward(small_dinov2().train(), x, monkeypatch)
    assert default.calls == 2 * 4 + 2  # 4 frame + 4 global blocks, and the DINOv2 backbone's 2 blocks
    off = kept_for_backward(small_dinov2(gradient_checkpointing=False).train(), x, monkeypatch)
    assert off.calls == 0
    assert default.saved_bytes * 5 < off.saved_bytes  # 0.35 MB vs 3.0 MB here; the gap grows with depth
    # eval mode with autograd on (feature extraction with gradients): no checkpointing unless asked for
    assert kept_for_backward(small_dinov2().eval(), x, monkeypatch).calls == 0
    forced = small_dinov2(gradient_checkpointing=True).eval()
    assert kept_for_backward(forced, x, monkeypatch).calls == 10
    agg = small_dinov2().train()
    agg.set_gradient_checkpointing(False)
    assert not agg.checkpointing and kept_for_backward(agg, x, monkeypatch).calls == 0
    agg.set_gradient_checkpointing(None)
    assert agg.checkpointing and agg.patch_embed.gradient_checkpointing is None


def test_training_checkpoints_a_dinov3_backbone_too(monkeypatch):
    from dinov3_integration.models import vision_transformer as dinov3_module

    torch.manual_seed(0)
    agg = Aggregator(
        img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, patch_embed="dinov3_vits16",
        patch_embed_config={"depth": 2, "embed_dim": 64, "num_heads": 4},
    ).train()  # fmt: skip
    calls = {"n": 0}
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(aggregator_module, "checkpoint", counting)
    monkeypatch.setattr(dinov3_module, "checkpoint", counting)
    outputs, _ = agg(torch.rand(1, 2, 3, 32, 32))
    outputs[-1].sum().backward()
    assert calls["n"] == 2 * 2 + 2
    assert agg.patch_embed.gradient_checkpointing is False  # the backbone's own switch is left as it was


def test_checkpointed_training_gives_the_same_gradients():
    x = images(S=2)
    grads = []
    for mode in (None, False):
        agg = small_dinov2(gradient_checkpointing=mode).train()
        outputs, _ = agg(x, output_layers=[0, -1])
        (outputs[0].square().mean() + outputs[-1].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in agg.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[0][name], g, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------ silent hybrids


def vggt_checkpoint(agg: Aggregator) -> dict[str, torch.Tensor]:
    state = {f"aggregator.{k}": v.clone() for k, v in agg.state_dict().items()}
    state["camera_head.trunk.0.norm1.weight"] = torch.ones(8)
    return state


def dinov2_vggt(embed_dim: int = 384) -> Aggregator:
    torch.manual_seed(0)
    return Aggregator(
        img_size=32, patch_size=16, embed_dim=embed_dim, depth=2, num_heads=6, patch_embed="dinov2_vits14_reg",
        patch_embed_config={"depth": 1},
    )  # fmt: skip


DINOV3_KWARGS = dict(
    img_size=32, embed_dim=384, depth=2, num_heads=6, patch_embed="dinov3_vits16", patch_embed_config={"depth": 1}
)


@pytest.mark.parametrize("strict", [True, False])
def test_dinov2_tensors_never_load_into_a_dinov3_backbone(strict):
    state = vggt_checkpoint(dinov2_vggt())
    with pytest.raises(BackboneFamilyError) as info:
        Aggregator.from_vggt(state, strict=strict, **DINOV3_KWARGS)
    message = str(info.value)
    assert "VGGT's DINOv2 ViT" in message and "a DINOv3 ViT" in message and "patch_embed_weights=True" in message
    assert isinstance(info.value, StateDictMismatchError)


def test_dinov3_tensors_never_load_into_a_dinov2_backbone():
    torch.manual_seed(0)
    state = vggt_checkpoint(Aggregator(**DINOV3_KWARGS))
    target = dinov2_vggt()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(BackboneFamilyError, match="patch_embed='dinov2_vitl14_reg'"):
        target.load_vggt_state_dict(state, strict=False)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded


def test_the_suggested_fix_keeps_the_blocks_and_takes_dinov3_weights(tmp_path):
    from dinov3_integration.models import create_model

    vggt = dinov2_vggt()
    state = vggt_checkpoint(vggt)
    dinov3 = create_model("dinov3_vits16", depth=1)
    weights = tmp_path / "dinov3_vits16_tiny.pth"
    torch.save(dinov3.state_dict(), weights)
    agg = Aggregator.from_vggt(state, patch_embed_weights=str(weights), **DINOV3_KWARGS)
    assert torch.equal(agg.patch_embed.blocks[0].attn.qkv.weight, dinov3.blocks[0].attn.qkv.weight)
    assert torch.equal(agg.global_blocks[1].mlp.fc2.weight, vggt.global_blocks[1].mlp.fc2.weight)
    assert torch.equal(agg.camera_token, vggt.camera_token)


def _hinted_arguments(message: str) -> set[str]:
    return set(re.findall(r"\b([a-z_]+)=", message))


def test_every_hint_names_arguments_that_exist(tmp_path):
    from dinov3_integration.vggt_compat import vggt_preprocess

    valid = set()
    for fn in (Aggregator.__init__, Aggregator.from_vggt, Aggregator.load_vggt_state_dict, vggt_preprocess):
        valid |= set(inspect.signature(fn).parameters)
    messages = []
    for build in (lambda: Aggregator.from_vggt(vggt_checkpoint(dinov2_vggt()), **DINOV3_KWARGS),
                  lambda: dinov2_vggt().load_vggt_state_dict(vggt_checkpoint(Aggregator(**DINOV3_KWARGS))),
                  lambda: tiny(depth=2).load_vggt_state_dict({"aggregator.patch_embed.x": torch.zeros(1)}),
                  lambda: tiny(depth=2)(torch.rand(1, 1, 3, 30, 50)),
                  lambda: tiny(depth=2, output_layers=[0])(images())[0][1]):  # fmt: skip
        with pytest.raises(Exception) as info:
            build()
        messages.append(str(info.value))
    hinted = set().union(*map(_hinted_arguments, messages))
    assert {"patch_embed_weights", "skip_patch_embed", "output_layers", "patch_size"} <= hinted
    assert hinted <= valid, f"hints name arguments that do not exist: {sorted(hinted - valid)}"
    assert "strict=False" not in " ".join(messages[:2])


# ------------------------------------------------------------------------------------------------ misc


def test_vggt_block_is_built_from_ready_submodules():
    from dinov3_integration.vggt_compat.layers import Block

    block = Block(32, 4, init_values=0.01, qk_norm=True)
    assert type(block).__mro__[1] is nn.Module  # no adapter over another block class
    assert [n for n, _ in block.named_children()] == [
        "norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ DINOv3 /16 heads


class DPTLikeHead(nn.Module):
    """What VGGT's DPTHead does with the patch grid: ``patch_h = H // self.patch_size``, then a map of
    ``patch_h * patch_size`` pixels (VGGT builds it with its default ``patch_size=14``)."""

    def __init__(self, dim: int, patch_size: int = 14) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, 1)

    def forward(self, aggregated_tokens_list, images, patch_start_idx):
        B, S, _, H, W = images.shape
        patch_h, patch_w = H // self.patch_size, W // self.patch_size
        x = aggregated_tokens_list[23][:, :, patch_start_idx:]  # reads layer 23 absolutely
        x = self.proj(x).reshape(B * S, 1, patch_h, patch_w)  # RuntimeError when the grid is not the backbone's
        return nn.functional.interpolate(x, size=(patch_h * self.patch_size, patch_w * self.patch_size))


class TrackLikeHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.patch_size = 14
        self.feature_extractor = DPTLikeHead(dim)


class VGGTLike(nn.Module):
    """VGGT's attributes (``aggregator``, ``camera_head`` without a patch size, DPT heads, ``track_head``)."""

    def __init__(self, aggregator: Aggregator) -> None:
        super().__init__()
        self.aggregator = aggregator
        dim = 2 * aggregator.embed_dim
        self.camera_head = nn.Linear(dim, 9)
        self.depth_head, self.point_head = DPTLikeHead(dim), DPTLikeHead(dim)
        self.track_head = TrackLikeHead(dim)

    def forward(self, images):
        tokens, start = self.aggregator(images)
        return self.depth_head(tokens, images, start)


def dinov3_vggt() -> VGGTLike:
    torch.manual_seed(0)
    agg = Aggregator(
        embed_dim=64, depth=24, num_heads=4, patch_embed="dinov3_vits16",
        patch_embed_config={"depth": 1, "embed_dim": 64, "num_heads": 4}, output_layers=VGGT_HEAD_LAYERS,
    )  # fmt: skip
    return VGGTLike(agg).eval()


def test_adapted_heads_give_full_size_maps_with_a_16_pixel_backbone():
    from dinov3_integration.vggt_compat import adapt_vggt_heads

    model = dinov3_vggt()
    x = torch.rand(1, 2, 3, 96, 96)
    with torch.inference_mode():
        assert model(x).shape[-2:] == (84, 84)  # the upstream bug: silently 84x84 maps for 96x96 images
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 2, 3, 96, 128))  # or a reshape error
        changed = adapt_vggt_heads(model)
        assert changed == {
            "depth_head": (14, 16), "point_head": (14, 16), "track_head": (14, 16),
            "track_head.feature_extractor": (14, 16),
        }  # fmt: skip
        assert model(x).shape[-2:] == (96, 96)
        assert model(torch.rand(1, 2, 3, 96, 128)).shape[-2:] == (96, 128)
    assert adapt_vggt_heads(model) == {}  # idempotent
    with pytest.raises(ValueError, match="head_names="):
        adapt_vggt_heads(nn.Module(), patch_size=16)
    with pytest.raises(ValueError, match="patch_size="):
        adapt_vggt_heads(nn.Module())


def test_vggt_preprocess_sizes_are_multiples_of_the_patch():
    from dinov3_integration.vggt_compat import vggt_preprocess

    frames = torch.rand(2, 3, 480, 640)
    assert vggt_preprocess(frames).shape == (2, 3, 392, 518)  # VGGT's own sizes at 14
    assert vggt_preprocess(frames, patch_size=16).shape == (2, 3, 384, 512)  # 518 -> 512
    assert vggt_preprocess(torch.rand(3, 900, 600), patch_size=16).shape == (1, 3, 512, 512)  # crop to <= target
    assert vggt_preprocess(frames, patch_size=16, mode="pad").shape == (2, 3, 512, 512)
    mixed = vggt_preprocess([torch.rand(3, 480, 640), torch.rand(3, 640, 480)], patch_size=16)
    assert mixed.shape == (2, 3, 512, 512) and mixed[0, :, :32].eq(1).all()  # padded white, as VGGT
    out = vggt_preprocess(frames, patch_size=16)
    assert out.min() >= 0 and out.max() <= 1
    agg = tiny(depth=2, patch_size=16, img_size=32)
    with torch.no_grad():
        assert agg(out[None])[0][-1].shape[2] == 5 + 24 * 32
    with pytest.raises(ValueError, match=r"width 518 \(nearest valid: 512 or 528\).*vggt_preprocess"):
        agg(torch.rand(1, 1, 3, 384, 518))


# ------------------------------------------------------------------------------------------------ Spatial-MLLM /14


SMALL_VITL = {"depth": 1, "embed_dim": 64, "num_heads": 4}  # ViT-L's names and code path at a tiny width


@pytest.fixture(scope="module")
def spatial_mllm_inputs(tmp_path_factory):
    """A VGGT-layout checkpoint (Spatial-MLLM's ``spatial_encoder.vggt_model.*`` prefix) and ViT-L/16 weights."""
    from dinov3_integration.factory import create_model

    torch.manual_seed(0)
    vggt = Aggregator(embed_dim=64, depth=2, num_heads=4, patch_embed_config=SMALL_VITL)  # VGGT's DINOv2 ViT-L/14
    state = {f"spatial_encoder.vggt_model.aggregator.{k}": v for k, v in vggt.state_dict().items()}
    state["spatial_encoder.vggt_model.camera_head.token_norm.weight"] = torch.ones(128)
    state["connector.mlp.0.bias"] = torch.zeros(8)
    folder = tmp_path_factory.mktemp("spatial_mllm")
    from safetensors.torch import save_file

    save_file(state, str(folder / "model.safetensors"))
    vitl16 = create_model("dinov3_vitl16", **SMALL_VITL)
    torch.save(vitl16.state_dict(), folder / "vitl16.pth")
    return folder, vggt, vitl16


@pytest.mark.parametrize("size", [(518, 518), (476, 644)])  # VGGT's 518, and Qwen2.5-VL's smart_resize (x28)
def test_spatial_mllm_dinov3_vitl14_end_to_end_in_bf16(spatial_mllm_inputs, size):
    folder, vggt, vitl16 = spatial_mllm_inputs
    agg = Aggregator.from_vggt(
        folder, embed_dim=64, depth=2, num_heads=4, patch_embed="dinov3_vitl14", patch_embed_config=SMALL_VITL,
        patch_embed_weights=str(folder / "vitl16.pth"),
    )  # fmt: skip
    assert agg.patch_size == 14 and agg.patch_embed_kind == "dinov3" and agg.patch_proj is None
    assert torch.equal(agg.global_blocks[1].attn.qkv.weight, vggt.global_blocks[1].attn.qkv.weight)
    assert torch.equal(agg.patch_embed.blocks[0].mlp.fc1.weight, vitl16.blocks[0].mlp.fc1.weight)
    assert agg.patch_embed.patch_embed.proj.weight.shape[-2:] == (14, 14)  # the /16 kernel resampled to 14
    H, W = size
    frames = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))  # [T, 3, H, W] in [0, 1]
    with torch.inference_mode():
        ref, start = agg(frames, output_layers=[-1])
        bf16 = agg.to(torch.bfloat16)  # Spatial-MLLM casts the encoder to bf16 and feeds bf16 frames
        out, _ = bf16(frames.to(torch.bfloat16), output_layers=[-1])
    h, w = H // 14, W // 14
    spatial = out[-1][:, :, start:]
    assert spatial.shape == (1, 2, h * w, 128) and spatial.dtype == torch.bfloat16  # P_patches == h * w (Qwen grid)
    err = (out[-1].float() - ref[-1]).abs().max() / ref[-1].abs().max()
    assert torch.isfinite(out[-1]).all() and err < 0.1


# ------------------------------------------------------------------------------------------------ README recipes


def readme_recipes() -> list[tuple[int, str]]:
    """The README's ``python`` blocks tagged ``<!-- test: vggt-recipe -->`` (line of the fence, code)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- test: vggt-recipe -->\n```python\n(.*?)\n```", re.S)
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in pattern.finditer(text)]


def test_readme_has_the_four_vggt_recipes():
    recipes = [code for _, code in readme_recipes()]
    assert len(recipes) == 4
    assert "from_vggt(checkpoint" in recipes[0] and "output_layers=[4, 11, 17, 23]" in recipes[1]
    assert "adapt_vggt_heads" in recipes[2] and 'patch_embed="dinov3_vitl14"' in recipes[3]


@pytest.mark.parametrize("line,code", readme_recipes(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_vggt_recipe_runs(line, code):
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})  # the recipes assert their results


# ------------------------------------------------------------------------------------------------ fast paths


@pytest.mark.parametrize("backbone", ["conv", "dinov2", "dinov3"])
def test_inference_fast_paths_are_bit_identical_to_the_reference_path(backbone, monkeypatch):
    from dinov3_integration.layers import fastpath

    taken = {"n": 0}
    add_residual_ = fastpath.add_residual_

    def counting(*args, **kwargs):
        taken["n"] += 1
        return add_residual_(*args, **kwargs)

    monkeypatch.setattr(fastpath, "add_residual_", counting)

    if backbone == "dinov3":
        agg = Aggregator(
            img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, patch_embed="dinov3_vits16",
            patch_embed_config={"depth": 1, "embed_dim": 64, "num_heads": 4},
        ).eval()  # fmt: skip
        x = images(S=3, H=32, W=48)
    else:
        agg = small_dinov2() if backbone == "dinov2" else tiny(depth=4)
        x = images(S=3)
    with torch.inference_mode():
        fast, _ = agg(x)
        fastpath.set_fast_paths(False)
        try:
            reference, _ = agg(x)
        finally:
            fastpath.set_fast_paths(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16, _ = agg(x)
            fastpath.set_fast_paths(False)
            try:
                reference_bf16, _ = agg(x)
            finally:
                fastpath.set_fast_paths(True)
    assert taken["n"] >= 2 * 2 * len(agg.frame_blocks) * 2  # the VGGT blocks took the fast path (fp32 and bf16)
    assert all(torch.equal(a, b) for a, b in zip(fast, reference))
    assert all(torch.equal(a, b) for a, b in zip(fast_bf16, reference_bf16))
