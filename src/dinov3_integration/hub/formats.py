"""Checkpoint layouts: official (Meta ``.pth``), Hugging Face ``transformers`` and ``timm``; detection and conversion.

Every conversion goes through the official layout (the one :class:`~dinov3_integration.models.DinoVisionTransformer`
uses). Formats are recognised by their keys, never by file names:

- official: ``storage_tokens``, ``blocks.N.ls1.gamma``, ``blocks.N.attn.qkv.*``, ``rope_embed.periods``;
- Hugging Face: ``embeddings.*`` and ``layer.N.*`` (transformers 4.56-4.57 and the hub files) or ``model.layer.N.*``
  (transformers 5.x in memory), separate ``q_proj``/``k_proj``/``v_proj``;
- timm (``eva.py``): ``reg_token``, ``blocks.N.gamma_1``, ``attn.q_bias``/``attn.v_bias``, ``mlp.fc1_g``/``fc1_x``.

RoPE periods: official files store bfloat16-rounded periods (the reference trained with a bf16 RoPE buffer);
Hugging Face and timm recompute float32 periods. Converting *to* the official layout adds ``rope_embed.periods``
computed by :func:`rope_periods` (``periods="reference"`` gives the bf16-rounded values so outputs match the
reference model; ``periods="float32"`` the float32 values the peers use).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from .._logging import get_logger
from ..layers.rope import rope_periods as _rope_periods
from ..models.specs import HUB_DEFAULTS, SWIGLU_ALIGN, get_model_spec, head_dim_for, list_models
from .errors import CheckpointFormatError
from .hf_config import ffn_args, hf_config_from_kwargs, kwargs_from_hf_config

__all__ = [
    "detect_format",
    "from_official",
    "hf_config_from_kwargs",
    "hf_to_official",
    "infer_architecture",
    "kwargs_from_hf_config",
    "official_to_hf",
    "official_to_timm",
    "rope_periods",
    "timm_to_official",
    "to_official",
]

log = get_logger("hub")

StateDict = dict[str, Tensor]
Format = Literal["official", "hf", "timm"]
PeriodsMode = Literal["reference", "float32"]


# ------------------------------------------------------------------------------------------------ detection
def detect_format(state_dict: Mapping[str, Any]) -> Format:
    """Return ``"official"``, ``"hf"`` or ``"timm"`` from the keys of ``state_dict``."""
    keys = list(state_dict)
    if any(k.startswith(("embeddings.", "layer.", "model.layer.")) for k in keys):
        return "hf"
    if "reg_token" in state_dict or any(
        re.search(r"\.(gamma_1|gamma_2)$|\.attn\.(q_bias|v_bias)$|\.mlp\.fc1_[gx]\.", k) for k in keys
    ):
        return "timm"
    if "cls_token" in state_dict and any(k.startswith("blocks.") for k in keys):
        return "official"
    sample = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
    raise CheckpointFormatError(
        f"cannot recognise this checkpoint as a DINOv3 ViT in the official, Hugging Face or timm layout "
        f"({len(keys)} keys: {sample}). If it is a training checkpoint, unwrap it first (e.g. its 'model' or "
        f"'teacher' entry)."
    )


# ------------------------------------------------------------------------------------------------ RoPE periods
def rope_periods(head_dim: int, base: float = 100.0, mode: PeriodsMode = "reference") -> Tensor:
    """RoPE periods ``base ** (4 j / head_dim)`` for ``j < head_dim // 4`` as a float32 ``[head_dim // 4]`` tensor.

    ``mode="reference"`` rounds them to bfloat16 (what the official checkpoints hold); ``"float32"`` keeps the
    float32 values that Hugging Face and timm compute.
    """
    periods = _rope_periods(head_dim, base, dtype=torch.float32)
    if mode == "reference":
        return periods.to(torch.bfloat16).to(torch.float32)
    if mode == "float32":
        return periods
    raise ValueError(f"periods mode must be 'reference' or 'float32', got {mode!r}")


# ------------------------------------------------------------------------------------------------ helpers
def _block_ids(keys: list[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _qkv_bias_and_mask(q: Tensor | None, k: Tensor | None, v: Tensor | None, dim: int) -> tuple[Tensor, Tensor] | None:
    """Fused bias ``[3D]`` and ``bias_mask`` (1 where the source had a bias) from separate q/k/v biases."""
    if q is None and k is None and v is None:
        return None
    ref = next(t for t in (q, k, v) if t is not None)
    parts, mask = [], []
    for t in (q, k, v):
        parts.append(t if t is not None else torch.zeros(dim, dtype=ref.dtype))
        mask.append(torch.ones(dim, dtype=ref.dtype) if t is not None else torch.zeros(dim, dtype=ref.dtype))
    return torch.cat(parts), torch.cat(mask)


def _wants_qkv_bias(qkv_bias: bool | None, dim: int) -> bool:
    """Whether an official state dict of width ``dim`` holds ``qkv.bias``/``bias_mask`` (``None``: as the
    registered model of that width does: every released model but the 7B)."""
    if qkv_bias is not None:
        return qkv_bias
    return any(s.arch["embed_dim"] == dim and s.arch.get("qkv_bias", True) for s in map(get_model_spec, list_models()))


def _zero_qkv_bias(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The official layout's bias for a source without one: a zero ``[3D]`` bias and a zero ``bias_mask``."""
    rows = weight.shape[0]
    return torch.zeros(rows, dtype=weight.dtype), torch.zeros(rows, dtype=weight.dtype)


# ------------------------------------------------------------------------------------------------ Hugging Face
_HF_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_GATED = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
_HF_MLP = {"up_proj": "fc1", "down_proj": "fc2"}


def hf_to_official(
    state_dict: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    periods: PeriodsMode | Tensor = "reference",
    rope_base: float = 100.0,
    add_local_cls_norm: bool = False,
    qkv_bias: bool | None = None,
) -> StateDict:
    """Convert a ``transformers`` ``DINOv3ViTModel`` state dict (4.x ``layer.N`` or 5.x ``model.layer.N``).

    Args:
        state_dict: the Hugging Face state dict.
        num_heads: heads (from ``config.json``), used for the RoPE periods; default: head_dim 64 (128 at 4096 wide).
        periods: ``"reference"`` (bf16-rounded, matches the official model), ``"float32"`` (matches transformers)
            or an explicit ``[head_dim // 4]`` tensor.
        rope_base: RoPE base (``config.rope_theta``).
        add_local_cls_norm: add ``local_cls_norm.*`` (a copy of ``norm``; unused in eval) for models whose official
            checkpoints carry it (ViT-L SAT and 7B), so they load strictly.
        qkv_bias: add a zero qkv bias and ``bias_mask`` where the source has none (default: as the registered
            model of that width has them).

    Returns:
        The state dict in the official layout, with ``qkv.bias_mask`` set to 1 where the source had a bias.
    """
    sd = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in state_dict.items()}
    out: StateDict = {}
    dim = sd["embeddings.cls_token"].shape[-1]
    fill_bias = _wants_qkv_bias(qkv_bias, dim)
    out["cls_token"] = sd["embeddings.cls_token"]
    if "embeddings.mask_token" in sd:
        out["mask_token"] = sd["embeddings.mask_token"].reshape(1, dim)
    reg = sd.get("embeddings.register_tokens")
    if reg is not None and reg.shape[1] > 0:
        out["storage_tokens"] = reg
    out["patch_embed.proj.weight"] = sd["embeddings.patch_embeddings.weight"]
    if "embeddings.patch_embeddings.bias" in sd:
        out["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.bias"]
    for i in _block_ids(list(sd), r"^layer\.(\d+)\."):
        src, dst = f"layer.{i}.", f"blocks.{i}."
        for a, b in _HF_BLOCK_RENAMES.items():
            if src + a in sd:
                out[dst + b] = sd[src + a]
        att = src + "attention."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[f"{att}{p}_proj.weight"] for p in "qkv"])
        fused = _qkv_bias_and_mask(*(sd.get(f"{att}{p}_proj.bias") for p in "qkv"), dim=dim)
        if fused is not None:
            out[dst + "attn.qkv.bias"], out[dst + "attn.qkv.bias_mask"] = fused
        elif fill_bias:
            out[dst + "attn.qkv.bias"], out[dst + "attn.qkv.bias_mask"] = _zero_qkv_bias(out[dst + "attn.qkv.weight"])
        gated = f"{src}mlp.gate_proj.weight" in sd
        for a, b in (_HF_GATED if gated else _HF_MLP).items():
            for suffix in ("weight", "bias"):
                if f"{src}mlp.{a}.{suffix}" in sd:
                    out[f"{dst}mlp.{b}.{suffix}"] = sd[f"{src}mlp.{a}.{suffix}"]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if add_local_cls_norm:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = out["norm.weight"].clone(), out["norm.bias"].clone()
    head_dim = dim // num_heads if num_heads else head_dim_for(dim)
    out["rope_embed.periods"] = periods if isinstance(periods, Tensor) else rope_periods(head_dim, rope_base, periods)
    return out


def official_to_hf(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Convert an official state dict to the Hugging Face hub layout (``layer.N.*``, loaded by transformers 4.56+).

    The masked qkv bias is baked in (``bias * bias_mask``) and split into ``q_proj``/``v_proj`` biases; a non-zero
    key bias is kept as ``k_proj.bias`` (the config then needs ``key_bias=True``). ``rope_embed.periods``,
    ``local_cls_norm.*`` and ``cls_norm.*`` have no Hugging Face counterpart and are dropped.
    """
    sd = dict(state_dict)
    dim = sd["cls_token"].shape[-1]
    out: StateDict = {"embeddings.cls_token": sd["cls_token"]}
    out["embeddings.mask_token"] = sd.get("mask_token", torch.zeros(1, dim)).reshape(1, 1, dim)
    out["embeddings.register_tokens"] = sd.get("storage_tokens", torch.zeros(1, 0, dim))
    out["embeddings.patch_embeddings.weight"] = sd["patch_embed.proj.weight"]
    if "patch_embed.proj.bias" in sd:
        out["embeddings.patch_embeddings.bias"] = sd["patch_embed.proj.bias"]
    for i in _block_ids(list(sd), r"^blocks\.(\d+)\."):
        src, dst = f"blocks.{i}.", f"layer.{i}."
        for a, b in _HF_BLOCK_RENAMES.items():
            if src + b in sd:
                out[dst + a] = sd[src + b]
        for p, w in zip("qkv", sd[src + "attn.qkv.weight"].chunk(3)):
            out[f"{dst}attention.{p}_proj.weight"] = w
        if src + "attn.qkv.bias" in sd:
            bias = sd[src + "attn.qkv.bias"]
            mask = sd.get(src + "attn.qkv.bias_mask")
            effective = bias * mask.to(bias.dtype) if mask is not None else bias
            q, k, v = effective.chunk(3)
            out[f"{dst}attention.q_proj.bias"], out[f"{dst}attention.v_proj.bias"] = q, v
            if k.abs().max() > 0:
                out[f"{dst}attention.k_proj.bias"] = k
        gated = f"{src}mlp.w1.weight" in sd
        for a, b in (_HF_GATED if gated else _HF_MLP).items():
            for suffix in ("weight", "bias"):
                if f"{src}mlp.{b}.{suffix}" in sd:
                    out[f"{dst}mlp.{a}.{suffix}"] = sd[f"{src}mlp.{b}.{suffix}"]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    return out


# ------------------------------------------------------------------------------------------------ timm
def timm_to_official(
    state_dict: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    periods: PeriodsMode | Tensor = "reference",
    rope_base: float = 100.0,
    add_local_cls_norm: bool = False,
    qkv_bias: bool | None = None,
) -> StateDict:
    """Convert a timm ``vit_*_patch16_dinov3`` (Eva) state dict; see :func:`hf_to_official` for the arguments.

    timm keeps no ``mask_token`` (a zero one is added: it only matters for masked training) and no periods.
    timm's main models have no qkv bias (only the ``*_qkvb`` variants keep it): with ``qkv_bias`` (default: as the
    registered model of that width has it, i.e. all but the 7B) a zero bias and a zero ``bias_mask`` are added, as
    in the official files, so Meta's strict loader accepts the result.
    """
    sd = dict(state_dict)
    dim = sd["cls_token"].shape[-1]
    fill_bias = _wants_qkv_bias(qkv_bias, dim)
    out: StateDict = {"cls_token": sd["cls_token"], "mask_token": torch.zeros(1, dim, dtype=sd["cls_token"].dtype)}
    if "reg_token" in sd and sd["reg_token"].shape[1] > 0:
        out["storage_tokens"] = sd["reg_token"]
    for suffix in ("weight", "bias"):
        if f"patch_embed.proj.{suffix}" in sd:
            out[f"patch_embed.proj.{suffix}"] = sd[f"patch_embed.proj.{suffix}"]
    for i in _block_ids(list(sd), r"^blocks\.(\d+)\."):
        p = f"blocks.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight"):
            if p + name in sd:
                out[p + name] = sd[p + name]
        for name in ("attn.proj.weight", "attn.proj.bias"):
            if p + name in sd:
                out[p + name] = sd[p + name]
        if p + "gamma_1" in sd:
            out[p + "ls1.gamma"], out[p + "ls2.gamma"] = sd[p + "gamma_1"], sd[p + "gamma_2"]
        fused = _qkv_bias_and_mask(sd.get(p + "attn.q_bias"), sd.get(p + "attn.k_bias"), sd.get(p + "attn.v_bias"), dim)
        if p + "attn.qkv.bias" in sd:  # a plain fused bias (non-Eva export)
            out[p + "attn.qkv.bias"] = sd[p + "attn.qkv.bias"]
            out[p + "attn.qkv.bias_mask"] = torch.ones_like(sd[p + "attn.qkv.bias"])
        elif fused is not None:
            out[p + "attn.qkv.bias"], out[p + "attn.qkv.bias_mask"] = fused
        elif fill_bias and p + "attn.qkv.weight" in sd:
            out[p + "attn.qkv.bias"], out[p + "attn.qkv.bias_mask"] = _zero_qkv_bias(sd[p + "attn.qkv.weight"])
        mapping = (
            {"fc1_g": "w1", "fc1_x": "w2", "fc2": "w3"}
            if p + "mlp.fc1_g.weight" in sd
            else {"fc1": "fc1", "fc2": "fc2"}
        )
        for a, b in mapping.items():
            for suffix in ("weight", "bias"):
                if f"{p}mlp.{a}.{suffix}" in sd:
                    out[f"{p}mlp.{b}.{suffix}"] = sd[f"{p}mlp.{a}.{suffix}"]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if add_local_cls_norm:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = out["norm.weight"].clone(), out["norm.bias"].clone()
    head_dim = dim // num_heads if num_heads else head_dim_for(dim)
    out["rope_embed.periods"] = periods if isinstance(periods, Tensor) else rope_periods(head_dim, rope_base, periods)
    dropped = sorted(k for k in sd if k.startswith(("head.", "fc_norm.")))
    if dropped:
        log.debug("timm_to_official: dropped classifier keys %s", dropped)
    return out


def official_to_timm(state_dict: Mapping[str, Tensor], *, qkv_bias: bool | None = None) -> StateDict:
    """Convert an official state dict to timm's Eva layout.

    Args:
        qkv_bias: whether the timm model has ``q_bias``/``v_bias`` (the ``*_qkvb`` variants). Default: only if the
            effective (masked) bias is non-zero. A non-zero bias for a model without one raises.
    """
    sd = dict(state_dict)
    out: StateDict = {"cls_token": sd["cls_token"]}
    if "storage_tokens" in sd:
        out["reg_token"] = sd["storage_tokens"]
    for suffix in ("weight", "bias"):
        if f"patch_embed.proj.{suffix}" in sd:
            out[f"patch_embed.proj.{suffix}"] = sd[f"patch_embed.proj.{suffix}"]
    for i in _block_ids(list(sd), r"^blocks\.(\d+)\."):
        p = f"blocks.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight"):
            out[p + name] = sd[p + name]
        for name in ("attn.proj.weight", "attn.proj.bias"):
            if p + name in sd:
                out[p + name] = sd[p + name]
        if p + "ls1.gamma" in sd:
            out[p + "gamma_1"], out[p + "gamma_2"] = sd[p + "ls1.gamma"], sd[p + "ls2.gamma"]
        if p + "attn.qkv.bias" in sd:
            bias = sd[p + "attn.qkv.bias"]
            mask = sd.get(p + "attn.qkv.bias_mask")
            q, k, v = (bias * mask.to(bias.dtype) if mask is not None else bias).chunk(3)
            if k.abs().max() > 0:
                raise CheckpointFormatError(f"{p}attn.qkv has a non-zero key bias, which timm's Eva cannot hold")
            keep = qkv_bias if qkv_bias is not None else bool(q.abs().max() > 0 or v.abs().max() > 0)
            if keep:
                out[p + "attn.q_bias"], out[p + "attn.v_bias"] = q, v
            elif q.abs().max() > 0 or v.abs().max() > 0:
                raise CheckpointFormatError(
                    f"{p}attn.qkv has a non-zero q/v bias; convert with qkv_bias=True for a timm '*_qkvb' model"
                )
        mapping = (
            {"w1": "fc1_g", "w2": "fc1_x", "w3": "fc2"} if p + "mlp.w1.weight" in sd else {"fc1": "fc1", "fc2": "fc2"}
        )
        for a, b in mapping.items():
            for suffix in ("weight", "bias"):
                if f"{p}mlp.{a}.{suffix}" in sd:
                    out[f"{p}mlp.{b}.{suffix}"] = sd[f"{p}mlp.{a}.{suffix}"]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    return out


# ------------------------------------------------------------------------------------------------ dispatch
def to_official(
    state_dict: Mapping[str, Tensor],
    *,
    source_format: Format | None = None,
    num_heads: int | None = None,
    periods: PeriodsMode | Tensor = "reference",
    rope_base: float = 100.0,
    add_local_cls_norm: bool = False,
    qkv_bias: bool | None = None,
) -> StateDict:
    """Convert any supported layout to the official one (official state dicts are returned as a copy)."""
    fmt = source_format or detect_format(state_dict)
    if fmt == "official":
        return dict(state_dict)
    convert = hf_to_official if fmt == "hf" else timm_to_official
    return convert(
        state_dict,
        num_heads=num_heads,
        periods=periods,
        rope_base=rope_base,
        add_local_cls_norm=add_local_cls_norm,
        qkv_bias=qkv_bias,
    )


def from_official(state_dict: Mapping[str, Tensor], target: Format) -> StateDict:
    """Convert an official state dict to ``target`` (``"official"``, ``"hf"`` or ``"timm"``)."""
    if target == "official":
        return dict(state_dict)
    if target == "hf":
        return official_to_hf(state_dict)
    if target == "timm":
        return official_to_timm(state_dict)
    raise ValueError(f"unknown checkpoint format {target!r}; choose 'official', 'hf' or 'timm'")


# ------------------------------------------------------------------------------------------------ architecture
def infer_architecture(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """:class:`DinoVisionTransformer` arguments read from an official-layout state dict.

    Width, depth, patch size, storage tokens, FFN kind and width, biases, LayerScale and untied norms come from
    the keys and shapes; heads come from the RoPE periods (``head_dim = 4 * len(periods)``) or, without them,
    from a registered model of the same width and depth (else head_dim 64). Settings that leave no trace in a
    state dict (norm eps, RoPE base) take the released models' values.
    """
    sd = state_dict
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointFormatError("not an official-layout DINOv3 state dict (no cls_token / patch_embed.proj.weight)")
    dim = sd["cls_token"].shape[-1]
    depth = len(_block_ids(list(sd), r"^blocks\.(\d+)\."))
    known = [
        get_model_spec(n).kwargs()
        for n in list_models()
        if get_model_spec(n).arch["embed_dim"] == dim and get_model_spec(n).arch["depth"] == depth
    ]
    if "rope_embed.periods" in sd:
        num_heads = dim // (4 * sd["rope_embed.periods"].numel())
    elif known:
        num_heads = known[0]["num_heads"]
    else:
        num_heads = dim // head_dim_for(dim)
    kw = dict(HUB_DEFAULTS)
    w1 = sd.get("blocks.0.mlp.w1.weight")
    hidden = (w1 if w1 is not None else sd["blocks.0.mlp.fc1.weight"]).shape[0]
    prefer = None
    if known and known[0]["ffn_layer"].startswith("swiglu"):
        prefer = SWIGLU_ALIGN[known[0]["ffn_layer"]]
    kw.update(ffn_args(dim, hidden, gated=w1 is not None, prefer_align=prefer))
    kw.update(
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=sd["patch_embed.proj.weight"].shape[-1],
        in_chans=sd["patch_embed.proj.weight"].shape[1],
        n_storage_tokens=sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        mask_k_bias="blocks.0.attn.qkv.bias_mask" in sd or "blocks.0.attn.qkv.bias" not in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in sd),
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in sd else None,
        untie_cls_and_patch_norms="cls_norm.weight" in sd,
        untie_global_and_local_cls_norm="local_cls_norm.weight" in sd,
    )
    return kw
