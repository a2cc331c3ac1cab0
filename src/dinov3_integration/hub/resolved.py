"""What the hub hands over: :class:`ResolvedWeights` (tensors found for a model, before conversion) and
:class:`LoadResult` (what :func:`~dinov3_integration.hub.loading.load_pretrained` left out)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from ..models.specs import normalization_for
from .cache import sha256_file

__all__ = ["LoadResult", "ResolvedWeights"]


@dataclass
class ResolvedWeights:
    """Weights found for a model, before conversion.

    Attributes:
        state_dict: tensors as stored (official, Hugging Face or timm layout).
        source: where they came from, for logs and errors (signed URL queries removed).
        format: ``"official"``, ``"hf"`` or ``"timm"`` (detected from the keys).
        tag: ``"lvd1689m"`` / ``"sat493m"`` when known (selects the input normalisation).
        path: the file read, when there is one file (``None`` for sharded folders).
        config: the Hugging Face ``config.json`` next to the weights, when there is one.
        extras: official-layout tensors the source's layout cannot hold (``local_cls_norm`` from a Hugging Face
            folder's ``dinov3_extra.safetensors``), added after conversion.
    """

    state_dict: dict[str, Tensor]
    source: str
    format: str
    tag: str | None = None
    path: Path | None = None
    config: dict[str, Any] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str | None:
        """SHA-256 of the weights file (computed on first access; free for Hugging Face cache blobs)."""
        if self._sha256 is None and self.path is not None and self.path.is_file():
            self._sha256 = blob_sha256(self.path) or sha256_file(self.path)
        return self._sha256

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input ``(mean, std)`` these weights expect (satellite statistics for ``sat493m``, else ImageNet)."""
        return normalization_for(self.tag)


class LoadResult(NamedTuple):
    """What :func:`~dinov3_integration.hub.loading.load_pretrained` left out (empty lists after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def blob_sha256(path: Path) -> str | None:
    """Hugging Face cache blobs of LFS files are named by their SHA-256: read it instead of hashing."""
    target = path.resolve()
    name = target.name
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", name):
        return name
    return None
