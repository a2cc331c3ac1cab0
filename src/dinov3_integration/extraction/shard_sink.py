"""``--format shards``: the :class:`~.sinks.Sink` that writes :mod:`dinov3_integration.feature_shards` (a few
safetensors shards of bounded size plus ``index.json``) instead of one file per input.

Each rank writes its own shards (``shard-r{rank:03d}-*``) through one :class:`~dinov3_integration.feature_shards.
ShardWriter` (behind a lock: the engine's writer threads call :meth:`write` concurrently). Resume reads the shards'
headers once and verifies each shard that holds a row of this rank's inputs (once); a shard whose data fails its
checksum is renamed ``<name>.damaged`` (kept, no longer used) and its inputs are extracted again. A row is
committed with its shard: rows still buffered when a run is killed are simply extracted again. Rank 0 rebuilds
``index.json`` from the shards' headers after every rank finished.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..feature_codec import encode_metadata
from ..feature_shard_index import ShardScan, scan_shards, write_index
from ..feature_shards import DEFAULT_SHARD_SIZE, ShardWriter, parse_size, remove_stale_shard_temps
from .errors import ExtractionError
from .sinks import Sink, Stored

__all__ = ["ShardSink"]

log = get_logger("extract")


class ShardSink(Sink):
    """Shards of at most ``shard_size`` (``"1GB"``, bytes...) under ``root``, written by rank ``rank``."""

    def __init__(self, root: str | os.PathLike[str], *, shard_size: int | str = DEFAULT_SHARD_SIZE, rank: int = 0):
        super().__init__(root)
        try:
            self.max_bytes = parse_size(shard_size)
        except ValueError as exc:
            raise ExtractionError(f"--shard-size: {exc}") from exc
        self.rank = rank
        self._lock = threading.Lock()
        self._scan: ShardScan | None = None
        self._writer: ShardWriter | None = None
        self._where: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------ resume
    def _shards(self) -> ShardScan:
        if self._scan is None:
            self._scan = scan_shards(self.root)  # headers only; data verified per shard in find()
        return self._scan

    def find(self, item: Any) -> Stored:
        scan = self._shards()
        before = set(scan.excluded)
        where = scan.lookup(item.path)
        for name in sorted(set(scan.excluded) - before):
            self._quarantine(name)
        if where is None:
            if item.path in scan.lost:
                return Stored("damaged", str(self.root), error=scan.lost[item.path])
            return Stored("missing", str(self.root))
        file, row = where
        self._where[item.path] = file
        meta = encode_metadata(scan.metadata(item.path))
        keys = frozenset(scan.record(item.path)["tensors"])
        return Stored("present", f"{self.root / file} (row {row})", meta=meta, keys=keys)

    def _quarantine(self, name: str) -> None:
        """Rename a damaged shard out of the layout (kept for inspection, never used again)."""
        src = self.root / name
        dst = src.with_name(name + ".damaged")
        n = 1
        while dst.exists():
            dst, n = src.with_name(f"{name}.{n}.damaged"), n + 1
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return  # another rank moved it first
        log.warning("%s is damaged: renamed %s; its inputs in this run are extracted again", src, dst.name)

    # ------------------------------------------------------------------------------------------------ writing
    def write(self, item: Any, tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = ShardWriter(self.root, rank=self.rank, max_bytes=self.max_bytes)
            self._writer.add(item.path, tensors, metadata, key=item.key)
            self._where[item.path] = self._writer.shard_of(item.path) or ""

    def output_name(self, item: Any) -> str:
        """The shard file holding (or about to hold) ``item``'s row."""
        return self._where.get(item.path, "")

    def finish(self, records: list[dict[str, Any]], ctx: Any) -> list[dict[str, Any]] | None:
        """Commit the last shard, write the manifest (rank 0 merges after the barrier), then rank 0 rebuilds
        ``index.json`` from every shard's header."""
        with self._lock:
            if self._writer is not None:
                try:
                    self._writer.close()
                except OSError as exc:
                    raise ExtractionError(
                        f"cannot write a shard in {self.root} ({exc.strerror or exc}); the shards committed so far "
                        "are complete: free space (or fix permissions) and run the same command again to finish"
                    ) from exc
        merged = super().finish(records, ctx)
        if ctx.world_size <= 1 or ctx.is_main:
            remove_stale_shard_temps(self.root)
            try:
                write_index(self.root)
            except OSError as exc:
                raise ExtractionError(
                    f"cannot write {self.index} ({exc.strerror or exc}); the shards are complete: free space (or "
                    "fix permissions) and run the same command again to write it"
                ) from exc
        return merged

    @property
    def index(self) -> Path:
        return self.root / "index.json"
