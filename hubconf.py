"""``torch.hub`` entry points: ``torch.hub.load(<this repo>, "dinov3_vitl16", source="local", pretrained=False)``.

The same functions as Meta's ``hubconf.py`` (``pretrained=True`` by default, ``weights`` a tag, path or URL,
``check_hash``), built by :mod:`dinov3_integration.factory`. Works from a checkout without installing the package
(its ``src/`` folder is put on ``sys.path`` when the package is not importable).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

dependencies = ["torch", "safetensors", "huggingface_hub"]

if importlib.util.find_spec("dinov3_integration") is None:  # a plain checkout: use its sources
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from dinov3_integration.factory import (  # noqa: E402
    dinov3_vit7b16,
    dinov3_vitb16,
    dinov3_vitg16,
    dinov3_vith16plus,
    dinov3_vitl14,
    dinov3_vitl16,
    dinov3_vitl16plus,
    dinov3_vits16,
    dinov3_vits16plus,
)

__all__ = [
    "dinov3_vit7b16",
    "dinov3_vitb16",
    "dinov3_vitg16",
    "dinov3_vith16plus",
    "dinov3_vitl14",
    "dinov3_vitl16",
    "dinov3_vitl16plus",
    "dinov3_vits16",
    "dinov3_vits16plus",
]
