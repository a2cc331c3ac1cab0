"""VGGT's ``vggt.layers.rope`` path: re-exports :mod:`dinov3_integration.vggt_compat.rope`."""

from __future__ import annotations

from ..rope import PositionGetter, RotaryPositionEmbedding2D

__all__ = ["PositionGetter", "RotaryPositionEmbedding2D"]
