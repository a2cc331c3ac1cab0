"""Reading sharded feature outputs (:mod:`dinov3_integration.feature_shards`) back as per-input tensors.

``FeatureShards(folder)`` gives each input's tensors in the per-file shapes (``patch.L`` ``[h, w, D]`` for an
image, ``[T, h, w, D]`` for a video) and its metadata, decoded as :func:`dinov3_integration.read_features` decodes
a feature file's. It trusts ``index.json`` only while it matches the shard files present (same names and sizes);
otherwise (a run in progress or interrupted) the index is rebuilt in memory from the shards' headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._logging import get_logger
from .feature_codec import decode_metadata, encode_metadata
from .feature_shard_index import ShardInfo, ShardScan, build_index, load_index, newest_rows, read_shard, scan_shards
from .feature_shards import INDEX_NAME, SHARD_FORMAT, ShardFormatError

if TYPE_CHECKING:
    import torch

__all__ = ["FeatureShards"]

log = get_logger("shards")


class FeatureShards:
    """A shard folder (or its ``index.json``, or one shard file) opened for reading.

    ``len(shards)``, ``input in shards``, iteration over the inputs (sorted); ``shards[input]`` (an input path or
    its output key, e.g. ``"sub/a.jpg"``) -> ``(tensors, metadata)`` like ``read_features(file)``;
    :meth:`tensors`, :meth:`metadata`, :meth:`stack` (one tensor name over every input: ``[N, D]`` for the CLS
    tokens of N images), :meth:`header` and :meth:`verify`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self._headers: dict[str, ShardInfo] = {}
        if p.is_file() and p.name != INDEX_NAME:  # one shard
            info = read_shard(p)
            self.folder = p.parent
            self._headers[info.file] = info
            rows, superseded = newest_rows({info.file: info})
            self.index = build_index(ShardScan(self.folder, {info.file: info}, rows, {}, superseded))
        else:
            self.folder = p.parent if p.is_file() else p
            if not self.folder.is_dir():
                raise ShardFormatError(f"{p} is neither a shard folder, its {INDEX_NAME}, nor a shard file")
            index = load_index(self.folder)
            if index is None:
                log.info("%s: index.json is missing or out of date; rebuilt from the shards' headers", self.folder)
                index = build_index(scan_shards(self.folder))
            self.index = index
        self._rows = {r["input"]: r for r in self.index["rows"]}
        keys: dict[str, list[str]] = {}
        for r in self.index["rows"]:
            if r.get("key"):
                keys.setdefault(r["key"], []).append(r["input"])
        self._keys = {k: v[0] for k, v in keys.items() if len(v) == 1}

    # ------------------------------------------------------------------------------------------- lookups
    @property
    def inputs(self) -> list[str]:
        """The input paths, sorted."""
        return [r["input"] for r in self.index["rows"]]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self.inputs)

    def __contains__(self, name: object) -> bool:
        return name in self._rows or name in self._keys

    def row(self, name: str) -> dict[str, Any]:
        """The index record of an input (by its path or its output key)."""
        input = name if name in self._rows else self._keys.get(name)
        if input is None:
            raise KeyError(f"{name!r} is not an input of {self.folder} ({len(self)} inputs)")
        return self._rows[input]

    def header(self, file: str) -> ShardInfo:
        """The header of shard ``file`` (a name in :attr:`folder`), read once: its rows, tensor entries, offsets."""
        if file not in self._headers:
            self._headers[file] = read_shard(self.folder / file)
        return self._headers[file]

    # ------------------------------------------------------------------------------------------- data
    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """One input's tensors, in the per-file shapes (``cls.L`` ``[D]``, ``patch.L`` ``[h, w, D]``...)."""
        from safetensors import safe_open

        rec = self.row(name)
        out = {}
        with safe_open(os.fspath(self.folder / rec["shard"]), framework="pt") as fh:
            for key, slot in rec["tensors"].items():
                flat = fh.get_slice(key)[slot["offset"] : slot["offset"] + slot["length"]]
                out[key] = flat.reshape(slot["shape"])
        return out

    def metadata(self, name: str) -> dict[str, Any]:
        """One input's metadata, decoded like a feature file's, plus ``format`` (the shard's), ``shard``, ``row``."""
        rec = self.row(name)
        info = self.header(rec["shard"])
        row = info.rows[rec["row"]]
        if row["input"] != rec["input"]:
            raise ShardFormatError(f"{self.folder / INDEX_NAME} does not match {rec['shard']}; rebuild the index")
        meta = decode_metadata(encode_metadata({**info.common, **row["metadata"]}))
        meta.update({"format": SHARD_FORMAT, "shard": rec["shard"], "row": rec["row"]})
        return meta

    def __getitem__(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.tensors(name), self.metadata(name)

    def stack(self, tensor: str, inputs: Iterable[str] | None = None) -> torch.Tensor:
        """``tensor`` of every input (or of ``inputs``, paths or keys) stacked, in :attr:`inputs` order (or the
        given one): ``stack("cls.11")`` of N images is their ``[N, D]`` CLS matrix.

        Raises:
            ValueError: an input lacks it, or the shapes differ (videos of different lengths: use :meth:`tensors`).
        """
        import torch
        from safetensors import safe_open

        records = [self.row(name) for name in (self.inputs if inputs is None else inputs)]
        if not records:
            raise ValueError(f"{self.folder} holds no inputs")
        missing = [r["input"] for r in records if tensor not in r["tensors"]]
        if missing:
            raise ValueError(
                f"{missing[0]!r} has no tensor {tensor!r} (it has {sorted(self.row(missing[0])['tensors'])})"
            )
        shapes = {tuple(r["tensors"][tensor]["shape"]) for r in records}
        if len(shapes) > 1:
            raise ValueError(f"{tensor!r} has different shapes across inputs ({sorted(shapes)[:3]}...)")
        flat: dict[str, torch.Tensor] = {}
        for file in sorted({r["shard"] for r in records}):  # each shard read once
            with safe_open(os.fspath(self.folder / file), framework="pt") as fh:
                flat[file] = fh.get_tensor(tensor)
        parts = []
        for r in records:
            slot = r["tensors"][tensor]
            parts.append(flat[r["shard"]][slot["offset"] : slot["offset"] + slot["length"]].reshape(slot["shape"]))
        return torch.stack(parts)

    def verify(self) -> None:
        """Check every shard the index uses against its ``data_digest``.

        Raises:
            ShardFormatError: naming the damaged shard.
        """
        for shard in self.index["shards"]:
            self.header(shard["file"]).verify()
