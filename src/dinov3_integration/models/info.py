"""Model information computed from the architecture alone (no model built): parameter counts and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..layers.ffn import swiglu_hidden_features
from .specs import SWIGLU_ALIGN, get_model_spec

__all__ = ["ModelInfo", "count_flops", "count_parameters", "ffn_hidden_features", "model_info"]


def ffn_hidden_features(kw: dict[str, Any]) -> int:
    """The FFN hidden width of a model built with constructor arguments ``kw`` (SwiGLU widths aligned)."""
    hidden = int(kw["embed_dim"] * kw["ffn_ratio"])
    ffn = kw["ffn_layer"]
    if ffn == "mlp":
        return hidden
    return swiglu_hidden_features(hidden, SWIGLU_ALIGN[ffn])


def count_parameters(kw: dict[str, Any]) -> int:
    """Parameter count of a :class:`DinoVisionTransformer` from its constructor arguments (no model built)."""
    D, L, p, C = kw["embed_dim"], kw["depth"], kw["patch_size"], kw.get("in_chans", 3)
    F = ffn_hidden_features(kw)
    norm = D if kw.get("norm_layer") == "rmsnorm" else 2 * D
    ls = 2 * D if kw.get("layerscale_init") else 0
    ffn_bias = kw.get("ffn_bias", True)
    if kw["ffn_layer"] == "mlp":
        ffn = 2 * D * F + (F + D if ffn_bias else 0)
    else:
        ffn = 3 * D * F + (2 * F + D if ffn_bias else 0)
    attn = 3 * D * D + (3 * D if kw.get("qkv_bias", True) else 0) + D * D + (D if kw.get("proj_bias", True) else 0)
    block = 2 * norm + attn + ffn + ls
    total = D * C * p * p + D  # patch embedding
    total += D + kw.get("n_storage_tokens", 0) * D + D  # cls, storage, mask tokens
    total += L * block + norm
    total += norm if kw.get("untie_cls_and_patch_norms") else 0
    total += norm if kw.get("untie_global_and_local_cls_norm") else 0
    return total


def count_flops(kw: dict[str, Any], height: int = 224, width: int | None = None) -> int:
    """Forward FLOPs (2 x multiply-accumulates) for one ``height x width`` image.

    Counts the patch embedding, QKV/out projections, ``QK^T`` and ``AV`` and the FFN matrices; norms, softmax,
    activations and RoPE (about 1-2 %) are ignored, like timm's profiler-based counts.
    """
    width = height if width is None else width
    D, L, p = kw["embed_dim"], kw["depth"], kw["patch_size"]
    n_patch = (height // p) * (width // p)
    N = 1 + kw.get("n_storage_tokens", 0) + n_patch
    k = 2 if kw["ffn_layer"] == "mlp" else 3
    F = ffn_hidden_features(kw)
    macs = L * (N * 4 * D * D + k * N * D * F + 2 * N * N * D) + n_patch * kw.get("in_chans", 3) * p * p * D
    return 2 * macs


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`model_info` reports."""

    name: str
    params: int
    flops: int
    resolution: tuple[int, int]
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    weights: tuple[str, ...]
    description: str

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def model_info(name: str, resolution: int | tuple[int, int] = 224, weights: str | None = None) -> ModelInfo:
    """Parameter count and FLOPs at ``resolution`` (an int side or ``(H, W)``), computed from the architecture."""
    spec = get_model_spec(name)
    kw = spec.kwargs(weights)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return ModelInfo(
        name=spec.name,
        params=count_parameters(kw),
        flops=count_flops(kw, h, w),
        resolution=(h, w),
        patch_size=kw["patch_size"],
        embed_dim=kw["embed_dim"],
        depth=kw["depth"],
        num_heads=kw["num_heads"],
        weights=tuple(spec.weights),
        description=spec.description,
    )
