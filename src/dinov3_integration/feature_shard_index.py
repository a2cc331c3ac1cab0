"""Shard headers, the choice of each input's newest row, and ``index.json`` (:mod:`feature_shards`' layout).

:func:`scan_shards` reads every committed shard's header (optionally verifying its data against its
``data_digest``); :func:`build_index`/:func:`write_index` turn a scan into ``index.json``, so the index is always
derived from the shards and never disagrees with them; :func:`load_index` returns it only while it still matches
the shard files present.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._logging import get_logger
from .feature_codec import FeatureFileError, raw_tensors_digest, read_safetensors_header
from .feature_shards import INDEX_FORMAT, INDEX_NAME, SHARD_FORMAT, ShardFormatError, shard_files
from .utils.atomic import atomic_write_text

__all__ = [
    "INDEX_FIELDS",
    "ShardInfo",
    "ShardScan",
    "build_index",
    "load_index",
    "newest_rows",
    "read_shard",
    "scan_shards",
    "write_index",
]

log = get_logger("shards")


@dataclass
class ShardInfo:
    """One committed shard, from its header: ``rows`` are the records of its safetensors metadata."""

    file: str
    path: Path
    rank: int
    seq: int
    created_ns: int
    nbytes: int
    data_digest: str
    common: dict[str, Any]
    rows: list[dict[str, Any]]
    shapes: dict[str, list[int]]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    data_start: int = 0

    def verify(self) -> None:
        """Read the whole data section and compare it with ``data_digest`` (hashlib over the raw bytes: no torch).

        Raises:
            ShardFormatError: the data is unreadable or does not match.
        """
        try:
            entries = self.entries or read_safetensors_header(self.path)[1]
            digest = raw_tensors_digest(self.path, entries, self.data_start or read_safetensors_header(self.path)[2])
        except (OSError, ValueError) as exc:
            raise ShardFormatError(f"{self.path}: the data section is unreadable: {exc}") from exc
        if digest != self.data_digest:
            raise ShardFormatError(f"{self.path}: the data section does not match its data_digest (damaged)")


def read_shard(path: str | os.PathLike[str]) -> ShardInfo:
    """A shard's header (not its tensors; no torch), checked: format, row records and offsets within the tensors.

    Raises:
        ShardFormatError: naming the file and what is wrong.
    """
    p = Path(path)
    try:
        raw, entries, start = read_safetensors_header(p)
        nbytes = p.stat().st_size
    except (OSError, FeatureFileError) as exc:
        raise ShardFormatError(f"{p} is not a readable safetensors file: {exc}") from exc
    shapes = {k: list(e["shape"]) for k, e in entries.items()}
    if raw.get("format") != SHARD_FORMAT:
        raise ShardFormatError(f"{p} is not a {SHARD_FORMAT} shard (format {raw.get('format')!r})")
    try:
        rows = json.loads(raw["rows"])
        common = json.loads(raw["common"])
        info = ShardInfo(
            p.name, p, int(raw["rank"]), int(raw["seq"]), int(raw["created_ns"]), nbytes,
            raw["data_digest"], common, rows, shapes, entries, start,
        )  # fmt: skip
        for rec in rows:
            for name, slot in rec["tensors"].items():
                if slot["offset"] < 0 or slot["offset"] + slot["length"] > shapes[name][0]:
                    raise ValueError(f"row {rec['input']!r}: {name} rows out of range")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ShardFormatError(f"{p}: damaged shard header ({type(exc).__name__}: {exc})") from exc
    return info


@dataclass
class ShardScan:
    """The committed shards of a folder: ``rows`` maps each input to ``(shard file, row)`` of its newest row.

    ``excluded``: shard file -> why it is not used (an unreadable header, or data that failed :meth:`lookup`'s
    verification); ``lost``: the inputs that had a row in an excluded shard (their data is not trusted).
    """

    folder: Path
    shards: dict[str, ShardInfo]
    rows: dict[str, tuple[str, int]]
    excluded: dict[str, str]
    superseded: int
    verified: set[str] = field(default_factory=set)
    lost: dict[str, str] = field(default_factory=dict)

    def record(self, input: str) -> dict[str, Any]:
        """The row record of ``input`` (``input``, ``key``, ``tensors`` slots, residual ``metadata``)."""
        file, row = self.rows[input]
        return self.shards[file].rows[row]

    def metadata(self, input: str) -> dict[str, Any]:
        """The full metadata of ``input``'s row: the shard's ``common`` metadata updated with the row's own."""
        file, row = self.rows[input]
        shard = self.shards[file]
        return {**shard.common, **shard.rows[row]["metadata"]}

    def lookup(self, input: str, *, verify: bool = True) -> tuple[str, int] | None:
        """``(shard file, row)`` of ``input``'s newest row, None when no shard holds it.

        With ``verify``, the shard's data is first checked against its ``data_digest`` (once per shard); a shard
        that fails is excluded (logged) and the newest row among the remaining shards is taken.
        """
        while True:
            where = self.rows.get(input)
            if where is None or not verify or where[0] in self.verified:
                return where
            try:
                self.shards[where[0]].verify()
                self.verified.add(where[0])
            except ShardFormatError as exc:
                log.warning("%s; its rows are not used", exc)
                self.exclude(where[0], str(exc))

    def exclude(self, file: str, error: str) -> None:
        """Stop using shard ``file`` (its rows' inputs are recorded in :attr:`lost`) and choose the rows again."""
        info = self.shards.pop(file)
        self.excluded[file] = error
        self.lost.update({rec["input"]: error for rec in info.rows})
        self.rows, self.superseded = newest_rows(self.shards)


def newest_rows(shards: Mapping[str, ShardInfo]) -> tuple[dict[str, tuple[str, int]], int]:
    """Each input's newest row (shards ordered by ``created_ns``, then name) and how many rows are superseded."""
    rows: dict[str, tuple[str, int]] = {}
    total = 0
    for info in sorted(shards.values(), key=lambda s: (s.created_ns, s.file)):
        for i, rec in enumerate(info.rows):
            rows[rec["input"]] = (info.file, i)
            total += 1
    return rows, total - len(rows)


def scan_shards(folder: str | os.PathLike[str], *, verify: bool | Iterable[str] = False) -> ShardScan:
    """Read every shard header of ``folder``; the newest row of each input wins.

    ``verify``: ``True`` checks every shard's data against its ``data_digest``; a collection of inputs checks
    the shards that hold those inputs' rows (what ``--resume`` relies on, see :meth:`ShardScan.lookup`). A shard
    that fails is excluded (logged) and the choice is made again without it.
    """
    root = Path(folder)
    shards: dict[str, ShardInfo] = {}
    excluded: dict[str, str] = {}
    for name in sorted(shard_files(root)):
        try:
            shards[name] = read_shard(root / name)
        except ShardFormatError as exc:
            excluded[name] = str(exc)
            log.warning("%s; its rows are not used", exc)
    rows, superseded = newest_rows(shards)
    scan = ShardScan(root, shards, rows, excluded, superseded)
    if verify is True:
        for name in sorted(shards):
            try:
                shards[name].verify()
                scan.verified.add(name)
            except ShardFormatError as exc:
                log.warning("%s; its rows are not used", exc)
                scan.exclude(name, str(exc))
    elif verify is not False:
        for input in verify:
            scan.lookup(input)
    return scan


# ---------------------------------------------------------------------------------------------------------- index
INDEX_FIELDS = ("kind", "grid", "num_frames", "source_signature", "config_digest")


def build_index(scan: ShardScan) -> dict[str, Any]:
    """The index of a scan (what ``index.json`` holds): the shards, the excluded ones, and one record per input.

    ``shards``: ``file``, ``rows``, ``live_rows`` (rows that are the newest of their input), ``bytes``, ``rank``,
    ``created_ns``, ``data_digest``; ``excluded``: ``file``, ``error``.

    ``rows`` (sorted by input): ``input``, ``key``, ``shard``, ``row``, ``tensors`` (name -> ``offset``,
    ``length``, ``shape``) and, from the row's metadata, ``kind``, ``grid``, ``num_frames``, ``source_signature``,
    ``config_digest``.
    """
    live: dict[str, int] = {}
    for file, _ in scan.rows.values():
        live[file] = live.get(file, 0) + 1
    rows = []
    for input in sorted(scan.rows):
        file, row = scan.rows[input]
        rec = scan.record(input)
        meta = scan.metadata(input)
        entry = {"input": input, "key": rec.get("key"), "shard": file, "row": row, "tensors": rec["tensors"]}
        entry.update({k: meta[k] for k in INDEX_FIELDS if k in meta})
        rows.append(entry)
    shards = [
        {
            "file": f,
            "rows": len(scan.shards[f].rows),
            "live_rows": live.get(f, 0),
            "bytes": scan.shards[f].nbytes,
            "rank": scan.shards[f].rank,
            "created_ns": scan.shards[f].created_ns,
            "data_digest": scan.shards[f].data_digest,
        }
        for f in sorted(scan.shards)
    ]
    excluded = [{"file": f, "error": e} for f, e in sorted(scan.excluded.items())]
    return {"format": INDEX_FORMAT, "shards": shards, "excluded": excluded, "rows": rows}


def write_index(folder: str | os.PathLike[str], *, prune: bool = True) -> dict[str, Any]:
    """Rebuild ``index.json`` from the shards' headers (atomically) and return it.

    With ``prune``, shards none of whose rows is the newest of its input are deleted first (every such row has a
    newer copy), except each rank's last shard (so a shard name is never used twice). Call it when no writer is
    running in ``folder`` (``dinov3 extract``: rank 0, after every rank finished).
    """
    root = Path(folder)
    scan = scan_shards(root)
    if prune:
        live = {file for file, _ in scan.rows.values()}
        last = {}
        for info in scan.shards.values():
            last[info.rank] = max(last.get(info.rank, -1), info.seq)
        for name, info in list(scan.shards.items()):
            if name not in live and info.seq != last[info.rank]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(info.path)
                del scan.shards[name]
    index = build_index(scan)
    atomic_write_text(root / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index


def load_index(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``folder/index.json`` when it exists and matches the shard files present; None otherwise.

    Raises:
        ShardFormatError: the file exists but is not a shard index.
    """
    root = Path(folder)
    path = root / INDEX_NAME
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        ok = index.get("format") == INDEX_FORMAT
        listed = {s["file"]: s["bytes"] for s in index["shards"]}
        excluded = {e["file"] for e in index["excluded"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ShardFormatError(f"{path} is not a readable shard index: {exc}") from exc
    if not ok:
        raise ShardFormatError(f"{path} is not a {INDEX_FORMAT} file (format {index.get('format')!r})")
    on_disk = set(shard_files(root))
    if on_disk != set(listed) | excluded:
        return None
    for name, nbytes in listed.items():
        try:
            if (root / name).stat().st_size != nbytes:
                return None
        except OSError:
            return None
    return index
