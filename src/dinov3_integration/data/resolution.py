"""The ``--resolution`` request (a short side, or a fixed ``HxW``), parsed without importing torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Resolution", "parse_resolution"]


@dataclass(frozen=True)
class Resolution:
    """A resize request: ``short_side`` (keep the aspect ratio) or a fixed ``(height, width)``."""

    short_side: int | None = None
    size: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.short_side is not None:
            return str(self.short_side)
        assert self.size is not None
        return f"{self.size[0]}x{self.size[1]}"


def parse_resolution(text: str | int) -> Resolution:
    """``"256"`` -> short side 256; ``"480x640"`` -> fixed height 480, width 640.

    Raises:
        ValueError: with the accepted forms, for anything else.
    """
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip().lower()
        m = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", s)
        if m:
            h, w = int(m.group(1)), int(m.group(2))
            if h <= 0 or w <= 0:
                raise ValueError(f"resolution {text!r} must be positive")
            return Resolution(size=(h, w))
        if not s.isdigit():
            raise ValueError(f"resolution {text!r} is not understood: use a short side like 256 or HxW like 480x640")
        value = int(s)
    if value <= 0:
        raise ValueError(f"resolution {text!r} must be positive")
    return Resolution(short_side=value)
