"""The Aggregator's patch-embedding factory: a conv, VGGT's DINOv2-with-registers ViT, any DINOv3 ViT, or a module.

:func:`build_patch_embed` turns the Aggregator's ``patch_embed`` argument into a :class:`PatchEmbedSpec`: the module,
its family (``"conv"``, ``"dinov2"``, ``"dinov3"`` or ``"module"``), its token width, its patch size and the input
``(mean, std)`` it expects (ImageNet; satellite statistics for DINOv3 ``sat493m`` weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .._logging import get_logger
from ..factory import create_model
from ..models import DinoVisionTransformer as DinoV3VisionTransformer
from ..models import list_models, normalization_for
from ..utils.normalization import IMAGENET_MEAN, IMAGENET_STD
from .layers.patch_embed import PatchEmbed
from .layers.vision_transformer import vit_base, vit_giant2, vit_large, vit_small

__all__ = [
    "DINOV2_PATCH_EMBEDS",
    "PatchEmbedSpec",
    "build_patch_embed",
    "checkpointing_backbone",
    "is_dinov3_module",
    "new_patch_proj",
]

log = get_logger("vggt_compat")

DINOV2_PATCH_EMBEDS: dict[str, Callable[..., nn.Module]] = {
    "dinov2_vitl14_reg": vit_large,
    "dinov2_vitb14_reg": vit_base,
    "dinov2_vits14_reg": vit_small,
    "dinov2_vitg2_reg": vit_giant2,
}
"""VGGT's DINOv2-with-registers patch embeddings (name -> factory)."""

VGGT_DEFAULT_PATCH_SIZE = 14  # VGGT's default ``patch_size``: treated as "not chosen" for a DINOv3 backbone


class PatchEmbedSpec(NamedTuple):
    """A built patch embedding and what the Aggregator needs to know about it."""

    module: nn.Module
    kind: str  # "conv", "dinov2", "dinov3" or "module"
    width: int
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def is_dinov3_module(module: nn.Module) -> bool:
    """True for this library's DINOv3 ViT (whose ``forward_features`` feeds ``x_norm_patchtokens`` to the blocks)."""
    return isinstance(module, DinoV3VisionTransformer)


def build_patch_embed(
    patch_embed: str | nn.Module,
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    num_register_tokens: int,
    config: Mapping[str, Any] | None,
    weights: Any,
) -> PatchEmbedSpec:
    """Build (or describe) the Aggregator's patch embedding; see :class:`~.aggregator.Aggregator` for the arguments.

    ``config`` overrides the DINOv2 factory's arguments or ``create_model``'s (DINOv3); ``weights`` (DINOv3 only) is
    ``create_model``'s ``weights`` with ``pretrained=True`` (``True``: the default weights). Modules are built on
    the current default device; under ``torch.device("meta")`` nothing is allocated or initialised, except that DINOv3
    weights still load (on the CPU).
    """
    config = dict(config or {})
    if isinstance(patch_embed, nn.Module):
        return _describe_module(patch_embed, patch_size, embed_dim, config, weights)
    if not isinstance(patch_embed, str):
        raise TypeError(f"patch_embed must be a name or an nn.Module, got {type(patch_embed).__name__}")
    if weights is not None and not patch_embed.startswith("dinov3"):
        raise ValueError(
            f"patch_embed_weights applies to DINOv3 patch embeddings only, not {patch_embed!r}; VGGT's DINOv2 weights "
            "come from the VGGT checkpoint (Aggregator.from_vggt)"
        )
    if patch_embed == "conv" or (patch_embed not in DINOV2_PATCH_EMBEDS and "conv" in patch_embed):
        if config:
            raise ValueError(f"patch_embed_config is not used by the conv patch embedding (got {sorted(config)})")
        module = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        return PatchEmbedSpec(module, "conv", embed_dim, patch_size, IMAGENET_MEAN, IMAGENET_STD)
    if patch_embed in DINOV2_PATCH_EMBEDS:
        kwargs = {
            "img_size": img_size,
            "patch_size": patch_size,
            "num_register_tokens": num_register_tokens,
            "interpolate_antialias": True,
            "interpolate_offset": 0.0,
            "block_chunks": 0,
            "init_values": 1.0,
            **config,
        }
        module = DINOV2_PATCH_EMBEDS[patch_embed](**kwargs)
        return PatchEmbedSpec(module, "dinov2", module.embed_dim, module.patch_size, IMAGENET_MEAN, IMAGENET_STD)
    if patch_embed.startswith("dinov3"):
        return _build_dinov3(patch_embed, patch_size, config, weights)
    raise ValueError(
        f"unknown patch_embed {patch_embed!r}; use 'conv', a VGGT DINOv2 name ({', '.join(DINOV2_PATCH_EMBEDS)}), "
        f"a DINOv3 model name ({', '.join(n for n in list_models() if n.startswith('dinov3'))}; '_reg' suffix "
        "accepted) or an nn.Module"
    )


def _describe_module(
    module: nn.Module, patch_size: int, embed_dim: int, config: Mapping[str, Any], weights: Any
) -> PatchEmbedSpec:
    if config or weights is not None:
        raise ValueError("patch_embed_config and patch_embed_weights only apply to a patch_embed given by name")
    kind = "module"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if is_dinov3_module(module):
        kind = "dinov3"
        mean, std = normalization_for(getattr(module, "weights_tag", None))
    width = int(getattr(module, "embed_dim", embed_dim))
    p = getattr(module, "patch_size", patch_size)
    p = int(p[0] if isinstance(p, tuple) else p)
    return PatchEmbedSpec(module, kind, width, p, mean, std)


def _build_dinov3(name: str, patch_size: int, config: dict[str, Any], weights: Any) -> PatchEmbedSpec:
    kwargs = dict(config)
    meta_build = torch.get_default_device().type == "meta"
    if meta_build:  # create_model builds on meta itself (no init); weights, if any, load for real on the CPU
        kwargs.setdefault("device", "meta")
    if weights is not None:
        kwargs["pretrained"] = True
        if weights is not True:
            kwargs["weights"] = weights
    else:  # weights load through patch_embed_weights; a tag in the config only selects the architecture
        kwargs.setdefault("pretrained", False)
    with torch.device("cpu") if meta_build else contextlib.nullcontext():
        module = create_model(name, **kwargs)
    p = int(module.patch_size)
    if p != patch_size and patch_size != VGGT_DEFAULT_PATCH_SIZE:
        log.warning("patch_size=%d ignored: the DINOv3 backbone %s has %d-pixel patches", patch_size, name, p)
    mean, std = normalization_for(getattr(module, "weights_tag", None))
    return PatchEmbedSpec(module, "dinov3", int(module.embed_dim), p, mean, std)


def new_patch_proj(width: int, embed_dim: int) -> nn.Linear:
    """The ``patch_proj`` Linear (``width -> embed_dim``) the Aggregator adds when the widths differ: truncated normal
    weight (std 0.02), zero bias, on the current default device."""
    proj = nn.Linear(width, embed_dim)
    nn.init.trunc_normal_(proj.weight, std=0.02)
    nn.init.zeros_(proj.bias)
    return proj


@contextlib.contextmanager
def checkpointing_backbone(backbone: nn.Module, enabled: bool) -> Iterator[None]:
    """Checkpoint a DINOv3 backbone's blocks inside the block when ``enabled`` (VGGT's rule while training)."""
    if not enabled or backbone.gradient_checkpointing:
        yield
        return
    backbone.gradient_checkpointing = True
    try:
        yield
    finally:
        backbone.gradient_checkpointing = False
