"""Hugging Face ``config.json`` (``DINOv3ViTConfig``) <-> :class:`DinoVisionTransformer` arguments, checked
against the tensors.

A config that contradicts its tensors (width, depth, FFN width, heads that do not divide the width) is refused by
:func:`check_hf_config_fits`; the settings that leave no trace in the tensors (heads, ``rope_theta``) are honoured
when converting. :data:`HF_EXTRA_FILE` holds, beside ``model.safetensors``, the official tensors the Hugging Face
layout cannot hold (``local_cls_norm`` of ViT-L SAT and the 7B); transformers ignores it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..layers.ffn import swiglu_hidden_features
from ..models.specs import HUB_DEFAULTS, SWIGLU_ALIGN
from .errors import CheckpointFormatError

__all__ = ["HF_EXTRA_FILE", "check_hf_config_fits", "ffn_args", "hf_config_from_kwargs", "kwargs_from_hf_config"]

HF_EXTRA_FILE = "dinov3_extra.safetensors"


def hf_config_from_kwargs(kwargs: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
    """A ``DINOv3ViTConfig`` dict for a model built with these :class:`DinoVisionTransformer` arguments."""
    dim, ffn = kwargs["embed_dim"], kwargs.get("ffn_layer", "mlp")
    hidden = int(dim * kwargs.get("ffn_ratio", 4.0))
    gated = ffn != "mlp"
    if gated:
        hidden = swiglu_hidden_features(hidden, SWIGLU_ALIGN[ffn])
    has_bias = bool(kwargs.get("qkv_bias", True))
    key_bias = bool(state_dict and any(k.endswith("attention.k_proj.bias") for k in state_dict))
    eps = {"layernorm": 1e-6, "layernormbf16": 1e-5}.get(kwargs.get("norm_layer", "layernorm"), 1e-5)
    return {
        "model_type": "dinov3_vit",
        "architectures": ["DINOv3ViTModel"],
        "hidden_size": dim,
        "num_hidden_layers": kwargs["depth"],
        "num_attention_heads": kwargs["num_heads"],
        "intermediate_size": hidden,
        "hidden_act": "silu" if gated else "gelu",
        "use_gated_mlp": gated,
        "patch_size": kwargs.get("patch_size", 16),
        "image_size": kwargs.get("img_size", 224),
        "num_channels": kwargs.get("in_chans", 3),
        "num_register_tokens": kwargs.get("n_storage_tokens", 0),
        "layer_norm_eps": float(eps),
        "rope_theta": float(kwargs.get("pos_embed_rope_base") or 100.0),
        "query_bias": has_bias,
        "key_bias": key_bias,
        "value_bias": has_bias,
        "proj_bias": kwargs.get("proj_bias", True),
        "mlp_bias": kwargs.get("ffn_bias", True),
        "layerscale_value": 1.0,
        "pos_embed_rescale": float(kwargs.get("pos_embed_rope_rescale_coords") or 2.0),
    }


def kwargs_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`DinoVisionTransformer` arguments for a ``DINOv3ViTConfig`` dict (inverse of the above)."""
    dim = config["hidden_size"]
    hidden = config["intermediate_size"]
    gated = bool(config.get("use_gated_mlp", False))
    kw = dict(HUB_DEFAULTS)
    kw.update(
        embed_dim=dim,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        patch_size=config.get("patch_size", 16),
        in_chans=config.get("num_channels", 3),
        n_storage_tokens=config.get("num_register_tokens", 0),
        pos_embed_rope_base=config.get("rope_theta", 100.0),
        qkv_bias=bool(config.get("query_bias", True) or config.get("value_bias", True) or config.get("key_bias")),
        proj_bias=config.get("proj_bias", True),
        ffn_bias=config.get("mlp_bias", True),
        norm_layer="layernorm" if abs(config.get("layer_norm_eps", 1e-5) - 1e-6) < 1e-9 else "layernormbf16",
    )
    kw.update(ffn_args(dim, hidden, gated))
    return kw


def ffn_args(dim: int, hidden: int, gated: bool, prefer_align: int | None = None) -> dict[str, Any]:
    if not gated:
        return {"ffn_layer": "mlp", "ffn_ratio": hidden / dim}
    ratio = hidden * 1.5 / dim
    aligns = [prefer_align] if prefer_align else []
    for align in [*aligns, 8, 32, 64, 128]:
        for r in (ratio, round(ratio * 4) / 4, round(ratio, 3)):
            if swiglu_hidden_features(int(dim * r), align) == hidden:
                name = "swiglu" if align == 8 else f"swiglu{align}"
                return {"ffn_layer": name, "ffn_ratio": r}
    raise CheckpointFormatError(f"cannot find a SwiGLU setting giving hidden width {hidden} for width {dim}")


def check_hf_config_fits(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> None:
    """Refuse a ``config.json`` that contradicts the Hugging Face-layout ``state_dict`` it came with.

    Checks ``hidden_size``, ``num_hidden_layers``, ``intermediate_size`` against the tensors and that
    ``num_attention_heads`` splits the width into heads of a multiple of 4 (RoPE needs it).
    """
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in state_dict.items()}
    problems = []
    cls = sd.get("embeddings.cls_token")
    dim = int(cls.shape[-1]) if cls is not None else None
    if dim is not None and config.get("hidden_size", dim) != dim:
        problems.append(f"hidden_size={config['hidden_size']} but the tensors are {dim} wide")
    depth = len({m.group(1) for k in sd if (m := re.match(r"^layer\.(\d+)\.", k))})
    if depth and config.get("num_hidden_layers", depth) != depth:
        problems.append(f"num_hidden_layers={config['num_hidden_layers']} but the tensors hold {depth} blocks")
    up = sd.get("layer.0.mlp.up_proj.weight")
    if up is not None and config.get("intermediate_size", up.shape[0]) != up.shape[0]:
        problems.append(f"intermediate_size={config['intermediate_size']} but the FFN is {up.shape[0]} wide")
    heads = config.get("num_attention_heads")
    if dim is not None and heads is not None and (not isinstance(heads, int) or heads <= 0 or dim % (4 * heads)):
        problems.append(f"num_attention_heads={heads} does not split width {dim} into heads of a multiple of 4")
    theta = config.get("rope_theta")
    if theta is not None and not (isinstance(theta, (int, float)) and theta > 0):
        problems.append(f"rope_theta={theta!r} is not a positive number")
    if problems:
        raise CheckpointFormatError(
            "config.json contradicts its weights: " + "; ".join(problems) + ". Fix config.json."
        )
