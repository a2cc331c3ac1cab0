"""``DINOv3IntegratedModel``: a DINOv3 backbone with an optional VGGT-style Aggregator behind one forward.

Input convention (every path): RGB images with values in **[0, 1]**, like VGGT's Aggregator. The model
normalises them with the backbone's statistics (ImageNet mean/std; the satellite ones for ``weights="sat493m"``).
Pass ``normalize=False`` if the images are already normalised.

Forward, by input shape (``D`` backbone width, ``C`` aggregator width, ``R`` storage tokens, ``p`` patch size):

* ``[B, 3, H, W]``: one backbone pass -> ``cls_token [B, D]``, ``patch_tokens [B, N, D]``,
  ``storage_tokens [B, R, D]``, ``patch_grid (h, w)``, ``intermediate`` (list of ``[B, N, D]``, one per
  requested backbone block, final-normed). ``N = h * w``, ``h = H // p``, ``w = W // p``. This path is used
  for 4-D input even when the model has an aggregator.
* ``[B, S, 3, H, W]`` without the aggregator: the same keys with a frame axis (``cls_token [B, S, D]``, ...).
* ``[B, S, 3, H, W]`` with the aggregator: ``features [B, S, P, 2C]`` (the deepest kept aggregator layer),
  ``output_list`` (one entry per aggregator layer, ``None`` for layers not kept), ``patch_start_idx`` and the
  backbone's per-frame ``cls_token [B, S, D]``, ``storage_tokens [B, S, R, D]``, ``patch_tokens [B, S, N, D]``
  and ``patch_grid``; ``P = patch_start_idx + N``. The backbone runs once per frame: it is the Aggregator's
  patch embedding (state-dict keys ``aggregator.patch_embed.*``, VGGT's layout; ``backbone.*`` without it).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._logging import get_logger
from ..config.loader import load_config
from ..config.schema import DINOv3Config, Origins, ResolvedArchitecture, config_from_dict, validate_config
from ..factory import create_model
from ..hub.loading import buffer_device
from ..models import DinoVisionTransformer
from ..utils.indices import resolve_layer_indices
from ..utils.normalization import normalize
from ..vggt_compat import Aggregator
from .arguments import config_from_arguments, kwargs_from_config
from .assembly import backbone_normalization, build_aggregator
from .hub import IntegratedHubMixin

log = get_logger("integrated")

__all__ = ["DINOv3IntegratedModel", "build_model"]


class DINOv3IntegratedModel(IntegratedHubMixin, nn.Module):
    """A DINOv3 ViT backbone, optionally followed by a VGGT-style alternating-attention Aggregator.

    Args:
        dinov3_model: backbone name (``dinov3_integration.list_models()``).
        use_aggregator: build the Aggregator for ``[B, S, 3, H, W]`` clips.
        pretrained: load the backbone's released weights.
        weights: weight tag, file, URL or hub id (see :func:`~dinov3_integration.create_model`).
        aa_order: order of the aggregator's attention types per step (``["frame", "global"]``).
        img_size: nominal input side (a multiple of the patch size).
        intermediate_layers: backbone block indices whose final-normed patch tokens are returned as
            ``intermediate`` (negative indices count from the end).
        normalize: inputs are [0, 1] images normalised inside (True) or already normalised (False).
        backbone_overrides: ``DinoVisionTransformer`` arguments replacing the registered ones (e.g. ``depth=2,
            embed_dim=64, num_heads=4`` for tiny test models; random init only).
        aggregator_embed_dim, aggregator_num_heads: None takes the backbone's (the width must match it).
        aggregator_depth: frame blocks (and as many global blocks).
        aggregator_mlp_ratio, aggregator_num_register_tokens, aa_block_size, qk_norm, rope_freq, init_values,
            aggregator_qkv_bias, aggregator_proj_bias, aggregator_ffn_bias: VGGT Aggregator settings.
        output_layers: aggregator layers to keep (``"all"`` or indices; others are ``None`` placeholders).
        frames_chunk_size: run the backbone over at most this many frames at a time (None: all at once).
        freeze_backbone: call :meth:`freeze_backbone` after building.
        gradient_checkpointing: ``None`` (default) checkpoints while training, as VGGT; ``True`` whenever
            gradients are recorded; ``False`` never (see :meth:`set_gradient_checkpointing`).
        device: build on this device (``"meta"`` allocates nothing).

    Raises:
        ConfigError: an impossible combination, naming the argument and the value.
    """

    def __init__(
        self,
        dinov3_model: str = "dinov3_vitb16",
        use_aggregator: bool = False,
        pretrained: bool = False,
        weights: str | None = None,
        aa_order: Sequence[str] = ("frame", "global"),
        *,
        img_size: int = 224,
        intermediate_layers: Sequence[int] = (),
        normalize: bool = True,
        backbone_overrides: Mapping[str, Any] | None = None,
        aggregator_embed_dim: int | None = None,
        aggregator_depth: int = 24,
        aggregator_num_heads: int | None = None,
        aggregator_mlp_ratio: float = 4.0,
        aggregator_num_register_tokens: int = 4,
        aa_block_size: int = 1,
        qk_norm: bool = True,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
        aggregator_qkv_bias: bool = True,
        aggregator_proj_bias: bool = True,
        aggregator_ffn_bias: bool = True,
        output_layers: Sequence[int] | str = "all",
        frames_chunk_size: int | None = None,
        freeze_backbone: bool = False,
        gradient_checkpointing: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "device", "__class__")}
        config, resolved = config_from_arguments(args)
        self._config = config
        self._arch = resolved
        self._build(config, resolved, device)

    # ------------------------------------------------------------------------------------------------ build
    def _build(self, config: DINOv3Config, arch: ResolvedArchitecture, device: torch.device | str | None) -> None:
        bb, agg = config.model.backbone, config.model.aggregator
        self.model_name = bb.dinov3_model
        self.img_size = bb.img_size
        self.patch_size = arch.patch_size
        self.embed_dim = arch.embed_dim
        self.n_storage_tokens = arch.n_storage_tokens
        self.use_aggregator = agg.enabled
        self.normalize = bb.normalize
        self.frames_chunk_size = agg.frames_chunk_size
        self.intermediate_layers = (
            resolve_layer_indices(
                bb.intermediate_layers, arch.depth, what="intermediate_layers", sort=False, unique=False
            )
            if bb.intermediate_layers
            else []
        )
        backbone = create_model(
            bb.dinov3_model,
            pretrained=bb.pretrained,
            weights=bb.weights,
            device=device,
            img_size=bb.img_size,
            **bb.overrides,
        )
        if bb.weights is not None and not arch.loads_weights:
            log.warning(
                "%s: weights=%r with pretrained=False only selects the architecture; the weights are RANDOM "
                "(pass pretrained=True to load them)",
                bb.dinov3_model,
                bb.weights,
            )
        mean, std = backbone_normalization(backbone)
        real = buffer_device(device)  # in no state dict: real even for a meta build (from_pretrained)
        self.register_buffer("mean", torch.tensor(mean, device=real).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, device=real).view(3, 1, 1), persistent=False)
        self.aggregator: Aggregator | None = None
        if agg.enabled:
            self.aggregator = build_aggregator(
                backbone,
                normalization="auto" if bb.normalize else None,
                device=device,
                img_size=bb.img_size,
                embed_dim=arch.aggregator_embed_dim,
                depth=agg.depth,
                num_heads=arch.aggregator_num_heads,
                mlp_ratio=agg.mlp_ratio,
                num_register_tokens=agg.num_register_tokens,
                qkv_bias=agg.qkv_bias,
                proj_bias=agg.proj_bias,
                ffn_bias=agg.ffn_bias,
                aa_order=list(agg.aa_order),
                aa_block_size=agg.aa_block_size,
                qk_norm=agg.qk_norm,
                rope_freq=agg.rope_freq,
                init_values=agg.init_values,
                output_layers=agg.output_layers,
                pad_output_list=True,  # output_list[i] is always layer i (None when not kept), as VGGT's heads index
                frames_chunk_size=agg.frames_chunk_size,
                check_input_range=bb.normalize,
            )
        else:
            self.add_module("backbone", backbone)  # read through the `backbone` property
        self.freeze_backbone(config.model.freeze_backbone)
        self.set_gradient_checkpointing(config.model.gradient_checkpointing)
        log.debug(
            "built DINOv3IntegratedModel(%s, aggregator=%s, patch=%d, dim=%d)",
            bb.dinov3_model,
            agg.enabled,
            self.patch_size,
            self.embed_dim,
        )

    @property
    def backbone(self) -> DinoVisionTransformer:
        """The DINOv3 ViT: the submodule ``backbone``, or with the aggregator its ``patch_embed`` (one copy)."""
        aggregator = self._modules.get("aggregator")
        module = aggregator.patch_embed if aggregator is not None else self._modules.get("backbone")
        if module is None:
            raise AttributeError("the backbone is not built yet")
        return module

    # ------------------------------------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, config: DINOv3Config | Mapping[str, Any], *, device: torch.device | str | None = None):
        """Build from a :class:`~dinov3_integration.config.DINOv3Config` or a nested mapping (validated first)."""
        if not isinstance(config, DINOv3Config):
            config = config_from_dict(config, Origins("<mapping>"))
        validate_config(config, Origins(config.source or "<config>"))
        return cls(**kwargs_from_config(config), device=device)

    def to_config(self) -> DINOv3Config:
        """The configuration of this model, with every architecture value explicit.

        ``build_model(model.to_config())`` (or a ``save_config``/``load_config`` round trip) gives the same
        architecture; ``freeze_backbone`` and ``gradient_checkpointing`` reflect the current state.
        """
        cfg = copy.deepcopy(self._config)
        bb, agg = cfg.model.backbone, cfg.model.aggregator
        bb.patch_size, bb.embed_dim, bb.depth = self._arch.patch_size, self._arch.embed_dim, self._arch.depth
        bb.num_heads, bb.n_storage_tokens = self._arch.num_heads, self._arch.n_storage_tokens
        if agg.enabled:
            agg.embed_dim, agg.num_heads = self._arch.aggregator_embed_dim, self._arch.aggregator_num_heads
        cfg.model.freeze_backbone = self._backbone_frozen
        cfg.model.gradient_checkpointing = self._gradient_checkpointing
        cfg.source = None
        return cfg

    # ------------------------------------------------------------------------------------------------ training
    def freeze_backbone(self, frozen: bool = True) -> DINOv3IntegratedModel:
        """Stop (``frozen=True``) or restart gradient updates of the backbone's parameters; returns ``self``.

        The backbone's ``mask_token`` stays frozen either way: this model never masks patches.
        """
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(not frozen and name != "mask_token")
        self._backbone_frozen = frozen
        return self

    def set_gradient_checkpointing(self, enabled: bool | None = True) -> None:
        """Recompute block activations in the backward pass (backbone blocks and aggregator blocks).

        ``True``: whenever gradients are recorded; ``False``: never; ``None`` (the default of a new model): while
        the model is in training mode, as VGGT does (``train()`` switches it on, ``eval()`` off). Results never
        change, only the memory kept for the backward pass.
        """
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"gradient checkpointing must be True, False or None, got {enabled!r}")
        self._gradient_checkpointing = enabled
        self._apply_checkpointing(self.training if enabled is None else enabled)

    def _apply_checkpointing(self, active: bool) -> None:
        self.backbone.set_gradient_checkpointing(active)
        if self.aggregator is not None:
            self.aggregator.set_gradient_checkpointing(active)

    def train(self, mode: bool = True) -> DINOv3IntegratedModel:
        """``nn.Module.train``; with gradient checkpointing ``None`` it also follows ``mode`` (VGGT's behaviour)."""
        super().train(mode)
        if getattr(self, "_gradient_checkpointing", False) is None:
            self._apply_checkpointing(mode)
        return self

    # ------------------------------------------------------------------------------------------------ forward
    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"expected a torch.Tensor of images, got {type(images).__name__}")
        if images.ndim not in (4, 5):
            hint = " (add a batch dim with x[None])" if images.ndim == 3 else ""
            raise ValueError(
                f"expected images [B, 3, H, W] or clips [B, S, 3, H, W], got shape {tuple(images.shape)}{hint}"
            )
        if images.shape[-3] != 3:
            raise ValueError(f"expected 3 RGB channels at dim -3, got shape {tuple(images.shape)}")

    def normalize_images(self, images: Tensor) -> Tensor:
        """``[..., 3, H, W]`` in [0, 1] -> backbone input (identity with ``normalize=False``)."""
        if not self.normalize:
            return images
        return normalize(images, self.mean, self.std)

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Run on ``[B, 3, H, W]`` images or ``[B, S, 3, H, W]`` clips (values in [0, 1]:
        ``dinov3_integration.transforms.make_transform(model)``); see the module docs."""
        self._check_images(images)
        if images.ndim == 4:
            return self.forward_backbone(images)
        if self.aggregator is not None:
            return self.forward_aggregator(images)
        B, S = images.shape[:2]
        out = self.forward_backbone(images.flatten(0, 1))
        return _unflatten_frames(out, B, S)

    def forward_backbone(self, images: Tensor) -> dict[str, Any]:
        """Backbone features of ``[B, 3, H, W]`` images (in frame chunks of ``frames_chunk_size`` if set).

        Returns:
            ``cls_token [B, C]``, ``storage_tokens [B, R, C]``, ``patch_tokens [B, N, C]``, ``patch_grid (h, w)``,
            ``intermediate`` (list of ``[B, N, C]``, one per ``intermediate_layers`` entry).
        """
        chunk = self.frames_chunk_size
        if chunk is not None and images.shape[0] > chunk:
            parts = [self._backbone_features(x) for x in images.split(chunk)]
            return {
                "cls_token": torch.cat([p["cls_token"] for p in parts]),
                "storage_tokens": torch.cat([p["storage_tokens"] for p in parts]),
                "patch_tokens": torch.cat([p["patch_tokens"] for p in parts]),
                "patch_grid": parts[0]["patch_grid"],
                "intermediate": [torch.cat(t) for t in zip(*(p["intermediate"] for p in parts))],
            }
        return self._backbone_features(images)

    def _backbone_features(self, images: Tensor) -> dict[str, Any]:
        """One backbone pass; intermediate layers and the final output come from the same block loop."""
        backbone = self.backbone
        last = len(backbone.blocks) - 1
        wanted = sorted(set(self.intermediate_layers) | {last})
        layers = backbone.get_intermediate_layers(
            self.normalize_images(images), n=wanted, return_class_token=True, return_extra_tokens=True, norm=True
        )
        by_index = dict(zip(wanted, layers))
        patches, cls, storage = by_index[last]
        p = self.patch_size
        return {
            "cls_token": cls,
            "storage_tokens": storage,
            "patch_tokens": patches,
            "patch_grid": (images.shape[-2] // p, images.shape[-1] // p),
            "intermediate": [by_index[i][0] for i in self.intermediate_layers],
        }

    def forward_aggregator(self, clips: Tensor) -> dict[str, Any]:
        """Aggregator features of ``[B, S, 3, H, W]`` clips (values in [0, 1]; H, W multiples of the patch size).

        The backbone runs once per frame, inside the Aggregator (its patch embedding); its per-frame CLS, storage
        and patch tokens are collected on the way.

        Returns:
            ``features [B, S, P, 2C]`` (the deepest kept layer), ``output_list`` (``depth`` entries of
            ``[B, S, P, 2C]``, ``None`` for layers not in ``output_layers``), ``patch_start_idx`` (``1 + R``),
            ``cls_token [B, S, D]``, ``storage_tokens [B, S, R, D]``, ``patch_tokens [B, S, N, D]`` (backbone, final
            norm) and ``patch_grid (h, w)``; ``P = patch_start_idx + h * w``, ``C`` the aggregator width and ``D``
            the backbone's.
        """
        if self.aggregator is None:
            raise RuntimeError("this model has no aggregator; build it with use_aggregator=True")
        B, S = clips.shape[:2]
        backbone_outputs: list[dict[str, Any]] = []
        output_list, patch_start_idx = self.aggregator(clips, patch_embed_outputs=backbone_outputs)
        kept = [t for t in output_list if t is not None]
        p = self.patch_size

        def frames(key: str) -> Tensor:
            return torch.cat([o[key] for o in backbone_outputs]).unflatten(0, (B, S))

        return {
            "features": kept[-1],
            "output_list": output_list,
            "patch_start_idx": patch_start_idx,
            "cls_token": frames("x_norm_clstoken"),
            "storage_tokens": frames("x_storage_tokens"),
            "patch_tokens": frames("x_norm_patchtokens"),
            "patch_grid": (clips.shape[-2] // p, clips.shape[-1] // p),
        }

    def extra_repr(self) -> str:
        return (
            f"dinov3_model={self.model_name!r}, use_aggregator={self.use_aggregator}, patch_size={self.patch_size}, "
            f"embed_dim={self.embed_dim}, normalize={self.normalize}"
        )


def _unflatten_frames(out: dict[str, Any], B: int, S: int) -> dict[str, Any]:
    """Give every ``[B * S, ...]`` tensor of a backbone output a frame axis: ``[B, S, ...]``."""

    def unflat(t: Tensor) -> Tensor:
        return t.unflatten(0, (B, S))

    return {
        "cls_token": unflat(out["cls_token"]),
        "storage_tokens": unflat(out["storage_tokens"]),
        "patch_tokens": unflat(out["patch_tokens"]),
        "patch_grid": out["patch_grid"],
        "intermediate": [unflat(t) for t in out["intermediate"]],
    }


def build_model(
    config: DINOv3Config | Mapping[str, Any] | str | Path | None = None,
    *,
    device: torch.device | str | None = None,
) -> DINOv3IntegratedModel:
    """Build a :class:`DINOv3IntegratedModel` from a configuration.

    ``config`` may be a :class:`~dinov3_integration.config.DINOv3Config`, a nested mapping, a YAML path or a
    packaged variant name (as :func:`~dinov3_integration.config.load_config` takes), or None (the packaged
    default). The model comes back in training mode, like any ``nn.Module``: call ``.eval()`` for inference.
    """
    if config is None or isinstance(config, (str, Path)):
        config = load_config(config)
    return DINOv3IntegratedModel.from_config(config, device=device)
