"""Adapting a VGGT-style model's heads to its backbone's patch size, without importing VGGT.

VGGT builds its depth and point heads (and the track head's feature extractor) with their default
``patch_size=14`` whatever the model's patch size (upstream PR #389). With a 16-pixel DINOv3 patch embedding they
then reshape the tokens on a 14-pixel grid: a crash, or maps of the wrong size (84x84 for 96x96 images).
:func:`adapt_vggt_heads` sets ``patch_size`` on those heads, duck-typed: any module reachable from
``model.depth_head``, ``model.point_head`` or ``model.track_head`` that has an int ``patch_size`` attribute.
"""

from __future__ import annotations

from torch import nn

__all__ = ["VGGT_HEAD_NAMES", "adapt_vggt_heads"]

VGGT_HEAD_NAMES = ("depth_head", "point_head", "track_head")
"""The attributes of ``vggt.models.vggt.VGGT`` whose modules read the patch grid."""


def adapt_vggt_heads(
    model: nn.Module, patch_size: int | None = None, head_names: tuple[str, ...] = VGGT_HEAD_NAMES
) -> dict[str, tuple[int, int]]:
    """Set ``patch_size`` on every head module of ``model`` that has one; return ``{name: (old, new)}`` changed.

    Args:
        model: a VGGT-style model (``vggt.models.vggt.VGGT`` or anything with the same attributes).
        patch_size: the size to set; default ``model.aggregator.patch_size`` (16 for a DINOv3 /16 backbone).
        head_names: attributes of ``model`` to adapt (missing or ``None`` ones are skipped, e.g. ``enable_track=False``).

    Raises:
        ValueError: no head with a ``patch_size`` attribute was found, or ``patch_size`` cannot be determined.
    """
    if patch_size is None:
        aggregator = getattr(model, "aggregator", None)
        patch_size = getattr(aggregator, "patch_size", None)
        if patch_size is None:
            raise ValueError(
                "adapt_vggt_heads: pass patch_size= (the model has no aggregator.patch_size to take it from)"
            )
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    found: dict[str, int] = {}
    changed: dict[str, tuple[int, int]] = {}
    for head_name in head_names:
        head = getattr(model, head_name, None)
        if not isinstance(head, nn.Module):
            continue
        for sub_name, module in head.named_modules():
            old = getattr(module, "patch_size", None)
            if isinstance(old, bool) or not isinstance(old, int):
                continue
            name = f"{head_name}.{sub_name}" if sub_name else head_name
            found[name] = old
            if old != patch_size:
                module.patch_size = patch_size
                changed[name] = (old, patch_size)
    if not found:
        raise ValueError(
            f"adapt_vggt_heads: none of model.{', model.'.join(head_names)} has a module with an int patch_size "
            "attribute; pass head_names= with the attributes that hold your heads"
        )
    return changed
