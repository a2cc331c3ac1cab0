"""Backbone + Aggregator assembly: the one place a DINOv3 ViT becomes a VGGT-style Aggregator's patch embedding.

:func:`build_aggregator` is used by :class:`~dinov3_integration.integrated.DINOv3IntegratedModel` and by
``dinov3 extract --aggregate`` / ``dinov3 export --aggregate`` (with :func:`load_aggregator_checkpoint` for a
VGGT-format checkpoint, loaded on ``meta``); anything else that puts an Aggregator behind a DINOv3 backbone should call it too,
so the defaults (the backbone's patch size, width and heads), the input normalisation and the key layout
(``patch_embed.*``, VGGT's) are decided once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from ..models import normalization_for
from ..utils.normalization import NORMALIZATIONS
from ..vggt_compat import Aggregator

__all__ = [
    "Normalization",
    "backbone_normalization",
    "build_aggregator",
    "load_aggregator_checkpoint",
    "resolve_normalization",
]

# "auto" (the backbone's weights family), a name of utils.normalization.NORMALIZATIONS ("imagenet", "sat"), an
# explicit (mean, std) pair, or None (inputs are already normalised: identity).
Normalization = Union[str, tuple[Sequence[float], Sequence[float]], None]

_IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def backbone_normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for ``[0, 1]`` inputs to ``backbone``: its weights family's (satellite for ``sat493m``)."""
    return normalization_for(getattr(backbone, "weights_tag", None))


def resolve_normalization(
    normalization: Normalization, backbone: nn.Module
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` (3 values each) that a :data:`Normalization` value means for ``backbone``.

    Raises:
        ValueError: an unknown name or a pair without 3 values each, naming the valid choices.
    """
    if normalization is None:
        return _IDENTITY
    if isinstance(normalization, str):
        if normalization == "auto":
            return backbone_normalization(backbone)
        if normalization not in NORMALIZATIONS:
            valid = ", ".join(["auto", *NORMALIZATIONS])
            raise ValueError(f"unknown normalization {normalization!r}; use one of {valid} or a (mean, std) pair")
        return NORMALIZATIONS[normalization]
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalization)
    except (TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"normalization must be a (mean, std) pair of 3 values each, got {normalization!r}")
    return mean, std


def build_aggregator(
    backbone: nn.Module,
    *,
    normalization: Normalization = "auto",
    device: torch.device | str | None = None,
    **aggregator_kwargs: Any,
) -> Aggregator:
    """A VGGT-style :class:`~dinov3_integration.vggt_compat.Aggregator` with ``backbone`` as its patch embedding.

    The backbone is not copied: it becomes ``aggregator.patch_embed`` (VGGT's state-dict layout). The Aggregator
    takes ``[B, S, 3, H, W]`` clips in ``[0, 1]`` and returns VGGT's ``(output_list, patch_start_idx)``, each
    kept entry ``[B, S, P, 2C]``.

    Args:
        backbone: a DINOv3 ViT (anything with ``patch_size``, ``embed_dim`` and ``num_heads`` works the same way).
        normalization: ``"auto"`` (the backbone's weights family: ImageNet, or the satellite statistics for
            ``sat493m``), ``"imagenet"``/``"sat"``, an explicit ``(mean, std)`` pair, or ``None`` when the inputs
            are already normalised.
        device: build the Aggregator's own blocks on this device (``"meta"`` allocates nothing).
        **aggregator_kwargs: any other :class:`Aggregator` argument; ``patch_size``, ``embed_dim`` and
            ``num_heads`` default to the backbone's (another ``embed_dim`` adds a ``patch_proj`` Linear).

    Raises:
        ValueError: an unknown normalisation, or Aggregator arguments that do not fit together.
    """
    if "patch_embed" in aggregator_kwargs:
        raise TypeError("build_aggregator() takes the backbone as its first argument, not patch_embed=")
    mean, std = resolve_normalization(normalization, backbone)
    patch = getattr(backbone, "patch_size", 16)
    kwargs: dict[str, Any] = {
        "patch_size": int(patch[0] if isinstance(patch, tuple) else patch),
        "embed_dim": int(backbone.embed_dim),
        "num_heads": int(getattr(backbone, "num_heads", max(1, int(backbone.embed_dim) // 64))),
    }
    kwargs.update(aggregator_kwargs)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        aggregator = Aggregator(patch_embed=backbone, **kwargs)
    aggregator.set_normalization(mean, std)
    return aggregator


def load_aggregator_checkpoint(
    aggregator: Aggregator, state_dict: Mapping[str, Any], *, seed: int = 0, device: torch.device | str | None = None
) -> None:
    """Load a VGGT-format ``state_dict`` (full VGGT or Aggregator-only keys) into an Aggregator from
    :func:`build_aggregator`, strictly; its ``patch_embed.*`` entries are ignored (the backbone keeps its weights).

    Build the Aggregator with ``device="meta"`` (under ``torch.manual_seed(seed)``) and nothing random is ever
    materialised: its tensors take the checkpoint's with ``assign=True`` and go to ``device`` (default CPU). A
    ``patch_proj`` the checkpoint lacks is initialised under ``seed``: the draws a CPU build seeded with ``seed``
    gives it (it is the first layer the Aggregator initialises).

    Raises:
        StateDictMismatchError: missing, unexpected or wrong-shape keys, all listed.
        BackboneFamilyError: the checkpoint's patch embedding is of another family.
    """
    from ..vggt_compat.checkpoint import load_aggregator_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        load_aggregator_weights(
            aggregator,
            state_dict,
            patch_embed_kind=aggregator.patch_embed_kind,
            strict=True,
            skip_patch_embed=True,
            device=device,
        )
