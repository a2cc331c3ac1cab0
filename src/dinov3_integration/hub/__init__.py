"""Weights hub: sources (files, URLs, Hugging Face, timm), formats and the cache."""

from __future__ import annotations

from typing import Any

from torch import nn


def load_pretrained_weights(model: nn.Module, model_name: str, weights: Any = None) -> None:
    """Resolve ``weights`` for ``model_name`` and load them into ``model`` (strict)."""
    from .sources import load_pretrained, resolve_weights

    load_pretrained(model, resolve_weights(model_name, weights))
