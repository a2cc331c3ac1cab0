"""Where extraction results go: the :class:`Sink` interface, and :class:`FileSink` (one safetensors file per input,
the default of ``dinov3 extract``).

The engine (:mod:`.engine`) talks to its sink only through these methods, in this order:

1. ``prepare()``: before any work, create the destination and prove it is writable (:class:`ExtractionError`
   otherwise). ``root`` is the folder written into; input discovery skips it.
2. ``find(item) -> Stored``: for resume, what the sink holds now for ``item`` (a
   :class:`~dinov3_integration.data.inputs.InputItem`): ``missing``, ``damaged`` (unreadable, or its data does not
   match its checksum) or ``present`` with its raw metadata (strings, as written) and tensor names. The engine
   compares that metadata with the request (``config_digest`` or ``request_digest``, ``source``,
   ``source_signature``, tensor names) and decides: cached, redo, or refuse (another input's output). ``find``
   must not import torch: a complete rerun is decided before torch is imported.
3. ``write(item, tensors, metadata)``: store one input's tensors (CPU, contiguous; names as in
   :mod:`dinov3_integration.features`) and metadata (values not yet encoded). Called from writer threads,
   concurrently for different items. Atomic for the unit the sink commits: a killed run leaves only complete
   units (nothing half-written, nothing duplicated on resume).
4. ``output_name(item)``: the record's ``output`` (relative to ``root``), e.g. ``a/b.jpg.safetensors``.
5. ``finish(records, ctx)``: after the last write of this process, finalise (flush, index), write the manifest
   (per rank, then merged by rank 0 after a barrier under torchrun) and return the job's records sorted by input
   (rank 0) or None (other ranks).

A sink for another layout (e.g. shards) subclasses :class:`Sink`, implements ``find``/``write``/``output_name`` and
overrides ``finish`` to flush before calling ``super().finish``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..features import FeatureFileError, read_verified_header, write_features
from ..utils.atomic import atomic_write_text
from .errors import ExtractionError
from .options import check_output_folder

__all__ = ["MANIFEST", "FileSink", "Sink", "Stored", "read_jsonl", "write_jsonl"]

MANIFEST = "manifest.jsonl"


def write_jsonl(dst: str | os.PathLike[str], records: list[Mapping[str, Any]]) -> None:
    """One JSON object per line, sorted keys, written atomically."""
    atomic_write_text(dst, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class Stored:
    """What a sink holds for one input: ``state`` is ``missing``, ``damaged`` (``error`` says why) or ``present``
    (``meta``: the raw metadata as written, strings; ``keys``: the tensor names). ``where`` names it in messages."""

    state: Literal["missing", "damaged", "present"]
    where: str
    meta: dict[str, str] | None = None
    keys: frozenset[str] = field(default_factory=frozenset)
    error: str | None = None


class Sink(ABC):
    """Where one extraction job's outputs and manifest go (see the module docstring for the protocol)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._given = os.fspath(root)

    def prepare(self) -> None:
        """Create ``root`` and prove it is writable (before any work)."""
        check_output_folder(self._given)

    @abstractmethod
    def find(self, item: Any) -> Stored:
        """What is stored for ``item`` now (verified against its checksum; no torch import)."""

    @abstractmethod
    def write(self, item: Any, tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        """Store one input (thread-safe for different items; atomic)."""

    @abstractmethod
    def output_name(self, item: Any) -> str:
        """The record's ``output`` for ``item`` (relative to ``root``)."""

    # ------------------------------------------------------------------------------------------------- manifest
    def _rank_manifest(self, rank: int, world: int) -> Path:
        return self.root / f"manifest.rank{rank}-of-{world}.jsonl"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def _write_manifest(self, path: Path, records: list[dict[str, Any]]) -> None:
        try:
            write_jsonl(path, records)
        except OSError as exc:
            raise ExtractionError(
                f"cannot write the manifest {path} ({exc.strerror or exc}); the feature files written so far are "
                "complete: free space (or fix permissions) and run the same command again to finish"
            ) from exc

    def finish(self, records: list[dict[str, Any]], ctx: Any) -> list[dict[str, Any]] | None:
        """Write this rank's manifest; rank 0 merges all of them into ``manifest.jsonl`` and returns the job's
        records (None on the other ranks)."""
        records = sorted(records, key=lambda r: r["input"])
        if ctx.world_size <= 1:
            self._write_manifest(self.manifest, records)
            return records
        self._write_manifest(self._rank_manifest(ctx.rank, ctx.world_size), records)
        ctx.barrier()
        failed_total = ctx.all_sum(sum(r["status"] == "failed" for r in records))
        if not ctx.is_main:
            return None
        merged: list[dict[str, Any]] = []
        for r in range(ctx.world_size):
            merged.extend(read_jsonl(self._rank_manifest(r, ctx.world_size)))
        merged.sort(key=lambda rec: rec["input"])
        self._write_manifest(self.manifest, merged)
        for r in range(ctx.world_size):
            self._rank_manifest(r, ctx.world_size).unlink(missing_ok=True)
        assert failed_total == sum(r["status"] == "failed" for r in merged)
        return merged


class FileSink(Sink):
    """One feature file per input: ``<root>/<item.key>.safetensors`` (:mod:`dinov3_integration.features`)."""

    def path(self, item: Any) -> Path:
        return self.root / f"{item.key}.safetensors"

    def output_name(self, item: Any) -> str:
        return f"{item.key}.safetensors"

    def find(self, item: Any) -> Stored:
        path = self.path(item)
        if not path.is_file():
            return Stored("missing", str(path))
        try:
            meta, keys = read_verified_header(path)  # one header read: checked, then its metadata and names
        except FeatureFileError as exc:
            return Stored("damaged", str(path), error=str(exc))
        return Stored("present", str(path), meta=meta, keys=frozenset(keys))

    def write(self, item: Any, tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        write_features(self.path(item), tensors, metadata)
