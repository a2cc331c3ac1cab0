"""VGGT's ``vggt.layers.layer_scale``: ``LayerScale(dim, init_values=1e-5, inplace=False)`` (key ``gamma``).

``forward(x)`` returns ``x * gamma`` for ``x`` of shape ``[..., dim]``; it is the shared
:class:`dinov3_integration.layers.LayerScale`.
"""

from __future__ import annotations

from ...layers.layer_scale import LayerScale

__all__ = ["LayerScale"]
