"""VGGT's ``vggt.layers.mlp``: the GELU MLP (keys ``fc1``, ``fc2``).

``Mlp(in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, bias=True)`` computes
``fc1 -> act -> dropout -> fc2 -> dropout`` on ``[..., in_features] -> [..., out_features]``. It is the shared
:class:`dinov3_integration.layers.Mlp`; the signature and the key names are VGGT's.
"""

from __future__ import annotations

from ...layers.ffn import Mlp

__all__ = ["Mlp"]
