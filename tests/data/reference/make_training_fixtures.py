"""Make ``vit_training.safetensors``: DINOv3 ViT outputs in training mode, with the reference's conventions.

Test-only generator (not part of the library, never imported by it). It is a plain, independent transcription of
the training-mode forward of Meta's DINOv3 reference code (``dinov3/models/vision_transformer.py``,
``dinov3/layers/block.py``, ``attention.py``, ``ffn_layers.py``, ``rope_position_encoding.py``), written as
functions on the state dict, so that it shares no code with ``dinov3_integration``. What it reproduces:

- RoPE tables recomputed for every block and every crop (in that order), each drawing its training-time
  augmentations (shift: 2 uniforms, jitter: 2, rescale: 1, in that order) in the tables' dtype;
- stochastic depth by batch subsetting at every rate > 0 (``SelfAttentionBlock._forward_list``): per block,
  ``randperm(B_i)[:max(int(B_i * (1 - rate)), 1)]`` for every crop i, the attention branch of every crop on its
  subset, ``index_add(..., alpha=B_i / subset_i)``, then a second permutation per crop for the FFN branch;
- the list path's concatenation of all crops' tokens for the norms, ``qkv``, ``proj`` and the FFN;
- ``local_cls_norm`` on the CLS/storage tokens of the second crop in training (untied global/local norms).

The weights are those of the eval fixtures (``vit_mlp_tiny``, ``vit_swiglu_untied``, read from this folder), so
``vit_training.safetensors`` stores only inputs, outputs, seeds and the RNG state after each call. Run from the
repository root: ``python tests/data/reference/make_training_fixtures.py`` (CPU, float32, a few seconds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).parent
NORM_EPS = {"layernorm": 1e-6, "layernormbf16": 1e-5}

# name -> weights fixture, constructor overrides, seed, call ("features" or "intermediate"), crops [(B, H, W)]
CASES: dict[str, dict] = {
    "mlp_list_dp0.2": {
        "weights": "vit_mlp_tiny",
        "overrides": {"drop_path_rate": 0.2, "pos_embed_rope_rescale_coords": 2.0},
        "seed": 11,
        "call": "features",
        "crops": [(4, 64, 48), (6, 32, 32)],
        "masked": [True, False],
    },
    "mlp_single_dp0.05": {
        "weights": "vit_mlp_tiny",
        "overrides": {
            "drop_path_rate": 0.05,
            "pos_embed_rope_shift_coords": 0.1,
            "pos_embed_rope_jitter_coords": 1.2,
            "pos_embed_rope_rescale_coords": 2.0,
        },
        "seed": 12,
        "call": "features",
        "crops": [(4, 48, 64)],
        "masked": [False],
    },
    "mlp_list_dp0": {
        "weights": "vit_mlp_tiny",
        "overrides": {"drop_path_rate": 0.0, "pos_embed_rope_rescale_coords": 2.0},
        "seed": 13,
        "call": "features",
        "crops": [(2, 64, 48), (3, 32, 32)],
        "masked": [False, False],
    },
    "swiglu_list_dp0.1": {
        "weights": "vit_swiglu_untied",
        "overrides": {"drop_path_rate": 0.1, "pos_embed_rope_rescale_coords": 2.0},
        "seed": 14,
        "call": "features",
        "crops": [(2, 48, 80), (5, 32, 32)],
        "masked": [False, True],
    },
    "mlp_intermediate_dp0.3": {
        "weights": "vit_mlp_tiny",
        "overrides": {"drop_path_rate": 0.3, "pos_embed_rope_rescale_coords": 2.0},
        "seed": 15,
        "call": "intermediate",
        "crops": [(5, 48, 48)],
        "masked": [False],
        "n": 2,
    },
}


# ------------------------------------------------------------------------------------------------ pieces
def cat_keep_shapes(xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Size], list[int]]:
    shapes = [x.shape for x in xs]
    num_tokens = [x.select(dim=-1, index=0).numel() for x in xs]
    return torch.cat([x.flatten(0, -2) for x in xs]), shapes, num_tokens


def uncat_with_shapes(flat: torch.Tensor, shapes: list[torch.Size], num_tokens: list[int]) -> list[torch.Tensor]:
    parts = torch.split_with_sizes(flat, num_tokens, dim=0)
    return [p.reshape(s[:-1] + torch.Size([flat.shape[-1]])) for p, s in zip(parts, shapes)]


def linear(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    bias = sd.get(f"{prefix}.bias")
    mask = sd.get(f"{prefix}.bias_mask")
    if bias is not None and mask is not None:
        bias = bias * mask.to(bias.dtype)
    return F.linear(x, sd[f"{prefix}.weight"], bias)


def norm(sd: dict, prefix: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def rope_tables(periods: torch.Tensor, H: int, W: int, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-mode RoPE ('separate' coordinates), fp32 tables."""
    dd = {"device": periods.device, "dtype": torch.float32}
    coords_h = torch.arange(0.5, H, **dd) / H
    coords_w = torch.arange(0.5, W, **dd) / W
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    shift, jitter, rescale = (cfg.get(f"pos_embed_rope_{k}_coords") for k in ("shift", "jitter", "rescale"))
    if shift is not None:
        coords += torch.empty(2, **dd).uniform_(-shift, shift)[None, :]
    if jitter is not None:
        coords *= torch.empty(2, **dd).uniform_(-math.log(jitter), math.log(jitter)).exp()[None, :]
    if rescale is not None:
        coords *= torch.empty(1, **dd).uniform_(-math.log(rescale), math.log(rescale)).exp()
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention_core(qkv: torch.Tensor, heads: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    B, N, three_c = qkv.shape
    C = three_c // 3
    q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv.reshape(B, N, 3, heads, C // heads), 2))
    sin, cos = rope
    q_dtype, k_dtype = q.dtype, k.dtype
    q, k = q.to(sin.dtype), k.to(sin.dtype)
    prefix = N - sin.shape[-2]
    q = torch.cat((q[:, :, :prefix], rotate(q[:, :, prefix:], sin, cos)), dim=-2).to(q_dtype)
    k = torch.cat((k[:, :, :prefix], rotate(k[:, :, prefix:], sin, cos)), dim=-2).to(k_dtype)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(B, N, C)


def attention(sd: dict, p: str, x: torch.Tensor, rope: tuple, heads: int) -> torch.Tensor:
    """``SelfAttention.forward`` (one tensor)."""
    return linear(sd, f"{p}.proj", attention_core(linear(sd, f"{p}.qkv", x), heads, rope))


def attention_list(sd: dict, p: str, xs: list[torch.Tensor], ropes: list, heads: int) -> list[torch.Tensor]:
    flat, shapes, num = cat_keep_shapes(xs)
    qkv_list = uncat_with_shapes(linear(sd, f"{p}.qkv", flat), shapes, num)
    outs = [attention_core(qkv, heads, rope) for qkv, rope in zip(qkv_list, ropes)]
    flat, shapes, num = cat_keep_shapes(outs)
    return uncat_with_shapes(linear(sd, f"{p}.proj", flat), shapes, num)


def ffn(sd: dict, p: str, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mlp":
        return linear(sd, f"{p}.fc2", F.gelu(linear(sd, f"{p}.fc1", x)))
    return linear(sd, f"{p}.w3", F.silu(linear(sd, f"{p}.w1", x)) * linear(sd, f"{p}.w2", x))


def ffn_list(sd: dict, p: str, xs: list[torch.Tensor], kind: str) -> list[torch.Tensor]:
    flat, shapes, num = cat_keep_shapes(xs)
    return uncat_with_shapes(ffn(sd, p, flat, kind), shapes, num)


def norm_list(sd: dict, p: str, xs: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    flat, shapes, num = cat_keep_shapes(xs)
    return uncat_with_shapes(norm(sd, p, flat, eps), shapes, num)


def block_list(sd: dict, i: int, xs: list[torch.Tensor], ropes: list, cfg: dict) -> list[torch.Tensor]:
    """``SelfAttentionBlock._forward_list`` in training mode (without stochastic depth: a plain loop)."""
    p, eps, rate = f"blocks.{i}", NORM_EPS[cfg.get("norm_layer", "layernorm")], cfg.get("drop_path_rate", 0.0)
    kind, heads = cfg.get("ffn_layer", "mlp"), cfg["num_heads"]
    g1, g2 = sd[f"{p}.ls1.gamma"], sd[f"{p}.ls2.gamma"]
    if rate <= 0.0:
        out = []
        for x, rope in zip(xs, ropes):
            x = x + attention(sd, f"{p}.attn", norm(sd, f"{p}.norm1", x, eps), rope, heads) * g1
            out.append(x + ffn(sd, f"{p}.mlp", norm(sd, f"{p}.norm2", x, eps), kind) * g2)
        return out
    bs = [x.shape[0] for x in xs]
    subsets = [max(int(b * (1 - rate)), 1) for b in bs]
    scales = [b / s for b, s in zip(bs, subsets)]
    idx1 = [torch.randperm(b, device=x.device)[:s] for x, b, s in zip(xs, bs, subsets)]
    normed = norm_list(sd, f"{p}.norm1", [x[i] for x, i in zip(xs, idx1)], eps)
    res1 = attention_list(sd, f"{p}.attn", normed, ropes, heads)
    xs = [torch.index_add(x, 0, i, (r * g1).to(x.dtype), alpha=a) for x, r, i, a in zip(xs, res1, idx1, scales)]
    idx2 = [torch.randperm(b, device=x.device)[:s] for x, b, s in zip(xs, bs, subsets)]
    normed = norm_list(sd, f"{p}.norm2", [x[i] for x, i in zip(xs, idx2)], eps)
    res2 = ffn_list(sd, f"{p}.mlp", normed, kind)
    return [torch.index_add(x, 0, i, (r * g2).to(x.dtype), alpha=a) for x, r, i, a in zip(xs, res2, idx2, scales)]


def prepare_tokens(sd: dict, x: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int]]:
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])  # [B, D, h, w]
    B, _, h, wd = x.shape
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), sd["mask_token"].to(x.dtype).unsqueeze(0), x)
        cls = sd["cls_token"]
    else:
        cls = sd["cls_token"] + 0 * sd["mask_token"]
    storage = sd.get("storage_tokens", cls.new_empty(1, 0, cls.shape[-1]))
    return torch.cat([cls.expand(B, -1, -1), storage.expand(B, -1, -1), x], dim=1), (h, wd)


def forward_features_list(sd: dict, cfg: dict, x_list: list, masks_list: list) -> list[dict[str, torch.Tensor]]:
    xs, grids = zip(*(prepare_tokens(sd, x, m) for x, m in zip(x_list, masks_list)))
    xs = list(xs)
    for i in range(cfg["depth"]):
        ropes = [rope_tables(sd["rope_embed.periods"], H, W, cfg) for H, W in grids]
        xs = block_list(sd, i, xs, ropes, cfg)
    eps, r1 = NORM_EPS[cfg.get("norm_layer", "layernorm")], cfg.get("n_storage_tokens", 0) + 1
    untie_cls, untie_local = cfg.get("untie_cls_and_patch_norms"), cfg.get("untie_global_and_local_cls_norm")
    out = []
    for idx, x in enumerate(xs):
        if untie_cls or untie_local:
            if untie_local and idx == 1:  # training: the second crop is the local one
                cls_reg = norm(sd, "local_cls_norm", x[:, :r1], eps)
            elif untie_cls:
                cls_reg = norm(sd, "cls_norm", x[:, :r1], eps)
            else:
                cls_reg = norm(sd, "norm", x[:, :r1], eps)
            patch = norm(sd, "norm", x[:, r1:], eps)
        else:
            x_norm = norm(sd, "norm", x, eps)
            cls_reg, patch = x_norm[:, :r1], x_norm[:, r1:]
        out.append(
            {
                "x_norm_clstoken": cls_reg[:, 0],
                "x_storage_tokens": cls_reg[:, 1:],
                "x_norm_patchtokens": patch,
                "x_prenorm": x,
            }
        )
    return out


def intermediate_layers(sd: dict, cfg: dict, x: torch.Tensor, n: int) -> list[dict[str, torch.Tensor]]:
    """``get_intermediate_layers(x, n=n, norm=True, return_class_token=True, return_extra_tokens=True)``."""
    tokens, (H, W) = prepare_tokens(sd, x, None)
    depth, taken = cfg["depth"], []
    for i in range(depth):
        rope = rope_tables(sd["rope_embed.periods"], H, W, cfg)
        tokens = block_list(sd, i, [tokens], [rope], cfg)[0]
        if i >= depth - n:
            taken.append(tokens)
    eps, r1 = NORM_EPS[cfg.get("norm_layer", "layernorm")], cfg.get("n_storage_tokens", 0) + 1
    out = []
    for t in taken:
        if cfg.get("untie_cls_and_patch_norms"):
            t = torch.cat((norm(sd, "cls_norm", t[:, :r1], eps), norm(sd, "norm", t[:, r1:], eps)), dim=1)
        else:
            t = norm(sd, "norm", t, eps)
        out.append({"patch": t[:, r1:], "cls": t[:, 0], "extra": t[:, 1:r1]})
    return out


# ------------------------------------------------------------------------------------------------ main
def check_against_eval_fixtures() -> float:
    """Run the transcription without randomness (rate 0, no RoPE augmentation) on the eval fixtures' inputs.

    The eval fixtures were made with Meta's code itself; returns the largest difference (must be below 1e-5).
    """
    worst = 0.0
    for weights in ("vit_mlp_tiny", "vit_swiglu_untied"):
        with safe_open(HERE / f"{weights}.safetensors", "pt") as fh:
            cfg = json.loads(fh.metadata()["config"])
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        sd = {k[len("state_dict.") :]: v for k, v in t.items() if k.startswith("state_dict.")}
        with torch.no_grad():
            out = forward_features_list(sd, cfg, [t["input"]], [None])[0]
        for key, value in out.items():
            worst = max(worst, (value - t[f"out.forward_features.{key}"]).abs().max().item())
    return worst


def main() -> None:
    worst = check_against_eval_fixtures()
    if worst > 1e-5:
        raise SystemExit(f"the transcription differs from the eval fixtures by {worst:.3g}: not writing")
    print(f"transcription vs eval fixtures (Meta's code): max abs difference {worst:.3g}")
    tensors: dict[str, torch.Tensor] = {}
    cases_meta: dict[str, dict] = {}
    for name, case in CASES.items():
        with safe_open(HERE / f"{case['weights']}.safetensors", "pt") as fh:
            cfg = json.loads(fh.metadata()["config"])
            sd = {k[len("state_dict.") :]: fh.get_tensor(k) for k in fh.keys() if k.startswith("state_dict.")}
        cfg = {**cfg, **case["overrides"]}
        gen = torch.Generator().manual_seed(1000 + case["seed"])
        inputs, masks = [], []
        for (B, H, W), masked in zip(case["crops"], case["masked"]):
            inputs.append(torch.randn(B, 3, H, W, generator=gen))
            n_patch = (H // 16) * (W // 16)
            masks.append(torch.rand(B, n_patch, generator=gen) < 0.3 if masked else None)
        torch.manual_seed(case["seed"])
        with torch.no_grad():
            if case["call"] == "features":
                outs = forward_features_list(sd, cfg, inputs, masks)
            else:
                outs = intermediate_layers(sd, cfg, inputs[0], case["n"])
        tensors[f"{name}.rng_after"] = torch.get_rng_state()
        for i, x in enumerate(inputs):
            tensors[f"{name}.input.{i}"] = x
            if masks[i] is not None:
                tensors[f"{name}.masks.{i}"] = masks[i]
        for i, out in enumerate(outs):
            for key, value in out.items():
                tensors[f"{name}.out.{i}.{key}"] = value.contiguous()
        cases_meta[name] = {k: case[k] for k in ("weights", "overrides", "seed", "call")}
        cases_meta[name]["n_inputs"] = len(inputs)
        cases_meta[name]["list_input"] = len(inputs) > 1  # else called with the plain tensor
        if "n" in case:
            cases_meta[name]["n"] = case["n"]
    metadata = {
        "source": "tests/data/reference/make_training_fixtures.py: independent transcription of Meta's DINOv3 "
        "reference training forward (batch-subset stochastic depth, reference random-number order)",
        "torch_version": torch.__version__,
        "cases": json.dumps(cases_meta, sort_keys=True),
    }
    save_file(tensors, HERE / "vit_training.safetensors", metadata=metadata)
    print(f"wrote {HERE / 'vit_training.safetensors'}: {len(CASES)} cases, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
