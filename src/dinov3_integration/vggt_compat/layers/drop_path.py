"""VGGT's ``vggt.layers.drop_path``: per-sample stochastic depth (``DropPath(drop_prob=None)`` and ``drop_path``).

Both are the shared implementations in :mod:`dinov3_integration.layers.drop_path`: whole samples of ``[B, ...]``
are zeroed with probability ``drop_prob`` in training and the rest rescaled by ``1 / (1 - drop_prob)``.
"""

from __future__ import annotations

from ...layers.drop_path import DropPath, drop_path

__all__ = ["DropPath", "drop_path"]
