"""What decides an output's content: the :class:`Settings` of a job (hashed into ``config_digest``) and each
source's signature (size and modification time)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..features import FORMAT

__all__ = ["DEFAULT_VIDEO_FRAMES", "Settings", "source_signature"]

DEFAULT_VIDEO_FRAMES = 16


def source_signature(path: str, frames: tuple[str, ...] | list[str] = ()) -> str | None:
    """Size and modification time of the source file(s); None when missing. Changes force re-extraction."""
    try:
        files = list(frames) or [path]
        parts = []
        for f in files:
            st = os.stat(f)
            parts.append(f"{os.path.basename(f) if frames else ''}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return None
    text = "|".join(parts)
    return text if not frames else "sha1:" + hashlib.sha1(text.encode()).hexdigest()


@dataclass
class Settings:
    """Everything that determines an output file's content (hashed into ``config_digest``).

    ``weights`` is only the (redacted) label the user gave; the weights are identified by ``weights_digest`` (so
    ``w.pth`` and ``./w.pth``, or a refreshed signed link to the same file, are the same weights).
    """

    model: str
    model_kwargs: dict[str, Any]
    weights: str
    weights_digest: str
    resolution: str
    interpolation: str
    normalization: dict[str, Any]
    layers: list[int]
    save: list[str]
    save_dtype: str
    compute_dtype: str
    frames: int | None
    fps: float | None
    aggregate: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        content = {k: v for k, v in self.__dict__.items() if k != "weights"}
        blob = json.dumps({"format": FORMAT, **content}, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()
