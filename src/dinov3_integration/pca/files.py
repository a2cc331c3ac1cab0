"""Reading ``dinov3 extract`` outputs (:mod:`dinov3_integration.features`) without torch, for the PCA pictures.

``safetensors`` with ``framework="np"``; bfloat16 tensors (which numpy has no type for) are widened to float32
exactly (a bfloat16 is the top half of a float32), as ``torch``'s ``.float()`` does. Per-file outputs are read by
:class:`FeatureFile`; the inputs of a shard folder (``extract --format shards``) by :class:`ShardInput`, one
input's rows of each tensor (``get_slice``), in the per-file shapes; :func:`open_features` tells them apart.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..feature_codec import read_safetensors_header
from ..feature_shard_reader import FeatureShards
from ..feature_shards import INDEX_NAME, SHARD_FORMAT


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
            _, entries, start = read_safetensors_header(self.path)
            info = entries[key]
            return _read_bf16(self.path, start + info["data_offsets"][0], info["shape"])
        from safetensors import safe_open

        with safe_open(self.path, framework="np") as fh:
            return fh.get_tensor(key)


class ShardInput:
    """One input of a shard folder, read like a :class:`FeatureFile`: ``keys``, ``metadata`` (as
    :meth:`FeatureShards.metadata`) and :meth:`get` (its rows of one tensor, in the per-file shape, numpy)."""

    def __init__(self, shards: FeatureShards, name: str) -> None:
        rec = shards.row(name)
        self.input = rec["input"]
        self.path = os.fspath(shards.folder / rec["shard"])
        self.keys = sorted(rec["tensors"])
        self.metadata = shards.metadata(name)
        self._slots = rec["tensors"]
        self._header = shards.header(rec["shard"])

    def get(self, key: str) -> np.ndarray:
        """The input's tensor ``key`` (``patch.L`` ``[h, w, D]`` or ``[T, h, w, D]``...); bfloat16 as float32."""
        slot = self._slots[key]
        begin, length = slot["offset"], slot["length"]
        entry = self._header.entries[key]
        if entry["dtype"] == "BF16":
            row = math.prod(entry["shape"][1:])  # elements per row of the shard's tensor
            offset = self._header.data_start + entry["data_offsets"][0] + 2 * begin * row
            return _read_bf16(self.path, offset, slot["shape"])
        from safetensors import safe_open

        with safe_open(self.path, framework="np") as fh:
            return fh.get_slice(key)[begin : begin + length].reshape(slot["shape"])


def open_features(
    path: str | os.PathLike[str], excluded: dict[str, str] | None = None
) -> list[tuple[str, FeatureFile | ShardInput]]:
    """``(name, reader)`` of every input an output holds: a per-file ``.safetensors`` -> itself; a shard folder,
    its ``index.json`` or one shard -> each input (``folder[input]``), sorted as :class:`FeatureShards` iterates.
    The shards the folder's index leaves out (an unreadable header) are added to ``excluded`` (shard path -> why).

    Raises:
        FeatureFileError: (or OSError) the file, the index or a shard header is unreadable.
    """
    p = os.fspath(path)
    if os.path.isfile(p) and os.path.basename(p) != INDEX_NAME:
        fh = FeatureFile(p)
        if fh.metadata.get("format") != SHARD_FORMAT:
            return [(p, fh)]
    shards = FeatureShards(p)
    if excluded is not None:
        excluded.update({os.fspath(shards.folder / e["file"]): e["error"] for e in shards.index.get("excluded", [])})
    return [(f"{shards.folder}[{name}]", ShardInput(shards, name)) for name in shards]


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _read_bf16(path: str, offset: int, shape: list[int]) -> np.ndarray:
    """The bfloat16 block of ``shape`` at byte ``offset`` of ``path`` as float32: the raw 16-bit words shifted up."""
    count = math.prod(shape)
    with open(path, "rb") as fh:
        fh.seek(offset)
        words = np.frombuffer(fh.read(2 * count), dtype="<u2")
    if words.size != count:
        raise ValueError(f"{path}: the data is cut short ({words.size} of {count} values)")
    return (words.astype(np.uint32) << 16).view(np.float32).reshape(shape)
