"""Reading ``dinov3 extract`` outputs (:mod:`dinov3_integration.features`) without torch, for the PCA pictures.

``safetensors`` with ``framework="np"``; bfloat16 tensors (which numpy has no type for) are widened to float32
exactly (a bfloat16 is the top half of a float32), as ``torch``'s ``.float()`` does.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np


class FeatureFile:
    """One feature file, open for reading: ``keys``, ``metadata`` (JSON values decoded, as
    :func:`dinov3_integration.features.read_features`) and :meth:`get` (one tensor as a numpy array)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        with safe_open(self.path, framework="np") as fh:
            raw = fh.metadata() or {}
            self.keys = sorted(fh.keys())
            self._dtypes = {k: fh.get_slice(k).get_dtype() for k in self.keys}
        self.metadata = {k: _decode(v) for k, v in raw.items()}

    def get(self, key: str) -> np.ndarray:
        """The tensor ``key``; bfloat16 comes back as float32 (exact), every other dtype as stored."""
        if self._dtypes[key] == "BF16":
            return _read_bf16(self.path, key)
        from safetensors import safe_open

        with safe_open(self.path, framework="np") as fh:
            return fh.get_tensor(key)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _read_bf16(path: str, key: str) -> np.ndarray:
    """A bfloat16 tensor of a safetensors file as float32: the header's offsets, the raw 16-bit words shifted up."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        info = json.loads(fh.read(n))[key]
        start, end = info["data_offsets"]
        fh.seek(8 + n + start)
        words = np.frombuffer(fh.read(end - start), dtype="<u2")
    return (words.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
