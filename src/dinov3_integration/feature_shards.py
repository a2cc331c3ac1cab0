"""Sharded feature outputs (``dinov3 extract --format shards``): a few large safetensors files plus ``index.json``.

Layout of a shard folder::

    shard-r000-00000.safetensors   # rank 0's first shard, then -00001, ...; rank r writes shard-r{r:03d}-*
    shard-r001-00000.safetensors
    index.json                     # every input -> shard, row, tensor offsets; rebuilt from the shards' headers

Inside a shard, each tensor name of the per-file format (:mod:`dinov3_integration.features`: ``cls.L``,
``patch.L``, ``storage.L``, ``aggregated.L``, ``frame_indices``, ``frame_times``) is **one** tensor holding the
rows of every input of the shard, concatenated along axis 0:

- a name with a dot (a feature: ``cls.11``...) keeps its last axis, the feature width ``D``: an image's ``cls.L``
  ``[D]`` is one row, its ``patch.L`` ``[h, w, D]`` is ``h*w`` rows, a video's ``patch.L`` ``[T, h, w, D]`` is
  ``T*h*w`` rows. So ``cls.L`` of a shard of images is the ``[n, D]`` CLS matrix;
- any other name (``frame_indices`` ``[T]``...) is flattened to one axis.

Where each input's rows are is written twice: in the shard's own safetensors metadata (``rows``: a JSON list of
``{"input", "key", "tensors": {name: {"offset", "length", "shape"}}, "metadata"}``; the metadata every row shares
is stored once, in ``common``) and in ``index.json``. ``x[offset:offset + length].reshape(shape)`` is the input's
tensor, exactly as the per-file format stores it. Any safetensors reader works (``safetensors.numpy.load_file``,
``safe_open(..., framework="np")``; ``bfloat16`` needs ``framework="pt"``: numpy has no bfloat16).

Guarantees: a shard is written under a temporary name and renamed when complete (:mod:`utils.atomic`), so a
killed run leaves complete shards only (the rows it had not committed are simply extracted again); ranks write
disjoint names; ``index.json`` is always rebuilt from the shards' headers (:func:`write_index`), never edited, so it
cannot disagree with them. An input found in several shards (extracted again after its source or the settings
changed) is the row of the newest shard (``created_ns``); the older rows are *superseded*. Headers, scans and the
index: :mod:`dinov3_integration.feature_shard_index`; the reader: :mod:`dinov3_integration.feature_shard_reader`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._logging import get_logger
from .feature_codec import FeatureFileError, tensors_digest
from .utils.atomic import TEMP_SUFFIX, atomic_path, remove_stale_temps, temp_prefix

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "SHARD_FORMAT",
    "ShardFormatError",
    "ShardWriter",
    "is_shard_folder",
    "parse_size",
    "remove_stale_shard_temps",
    "shard_files",
    "shard_name",
]

log = get_logger("shards")

SHARD_FORMAT = "dinov3_integration.feature_shards/1"
INDEX_FORMAT = "dinov3_integration.feature_shards.index/1"
INDEX_NAME = "index.json"
DEFAULT_SHARD_SIZE = "1GB"
SHARD_RE = re.compile(r"^shard-r(\d{3,})-(\d{5,})\.safetensors$")
MAX_HEADER_BYTES = 64 * 10**6  # a shard's header (its row records) stays below safetensors' 100 MB limit
MAX_RANKS = 1000  # rank numbers stale temporaries are looked for (the name allows more; this is for cleaning)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9})


class ShardFormatError(FeatureFileError):
    """A shard or a shard index is unreadable, damaged, or not in :data:`SHARD_FORMAT`."""


def parse_size(text: str | int) -> int:
    """``"1GB"`` -> ``10**9`` bytes; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024; a bare number is bytes.

    Raises:
        ValueError: naming the text and the accepted forms.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value: float = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"shard size {text!r} is not a size: give a number of bytes or a number with a unit, e.g. 500MB, "
                "1GB, 2GiB (KB/MB/GB/TB = 1000^n bytes, KiB/MiB/GiB/TiB = 1024^n)"
            )
        value = float(match.group(1)) * _UNITS[unit]
    if not value >= 1:
        raise ValueError(f"shard size {text!r} must be at least 1 byte (e.g. 1GB)")
    return int(value)


def shard_name(rank: int, seq: int) -> str:
    """``shard-r{rank:03d}-{seq:05d}.safetensors``: disjoint names per rank, in commit order within a rank."""
    return f"shard-r{rank:03d}-{seq:05d}.safetensors"


def shard_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Committed shard names in ``folder`` -> (rank, seq)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    found = {}
    for name in names:
        m = SHARD_RE.match(name)
        if m:
            found[name] = (int(m.group(1)), int(m.group(2)))
    return found


def _next_seq(folder: Path) -> dict[int, int]:
    nxt: dict[int, int] = {}
    for rank, seq in shard_files(folder).values():
        nxt[rank] = max(nxt.get(rank, 0), seq + 1)
    return nxt


def is_shard_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``index.json`` or at least one shard."""
    folder = Path(path)
    return folder.is_dir() and ((folder / INDEX_NAME).is_file() or bool(shard_files(folder)))


def remove_stale_shard_temps(folder: str | os.PathLike[str]) -> int:
    """Remove the temporaries killed writers left in ``folder`` (the next shard of each rank, the index).

    A killed writer's temporary belongs to a shard that was never committed, so it is named after the next
    sequence number of its rank; those names (ranks below :data:`MAX_RANKS`) and ``index.json`` are matched
    literally. Only call this while no writer is running in ``folder``. Returns how many were removed.
    """
    root = Path(folder)
    nxt = _next_seq(root)
    prefixes = {temp_prefix(root / shard_name(r, nxt.get(r, 0))) for r in range(MAX_RANKS)}
    prefixes |= {temp_prefix(root / shard_name(r, s)) for r, s in nxt.items() if r >= MAX_RANKS}
    prefixes.add(temp_prefix(root / INDEX_NAME))
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            name = entry.name
            if name.endswith(TEMP_SUFFIX) and name[:14] in prefixes:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _units(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A row's tensor as stored in a shard: ``[-1, D]`` for a feature (a dotted name), ``[-1]`` otherwise."""
    t = tensor.detach().to("cpu").contiguous()
    if "." in name:
        if t.dim() == 0:
            raise ValueError(f"feature tensor {name!r} has no feature axis (shape {tuple(t.shape)})")
        return t.reshape(-1, t.shape[-1])
    return t.reshape(-1)


def _escaped_len(text: str) -> int:
    """Length of ``text`` inside the safetensors header, a JSON string (``text`` is ASCII: ``json.dumps`` output)."""
    return len(json.dumps(text)) - 2


@dataclass
class _RowCost:
    """What one row adds to its shard file: tensor bytes, its record (escaped), each metadata item (escaped)."""

    data: int
    fixed: int
    items: dict[str, int]

    @classmethod
    def of(cls, record: Mapping[str, Any], units: Mapping[str, torch.Tensor], meta_json: Mapping[str, str]) -> _RowCost:
        placeholder = {n: {"offset": 10**12, "length": 10**12, "shape": s} for n, s in record["shapes"].items()}
        bare = {"input": record["input"], "key": record["key"], "tensors": placeholder, "metadata": {}}
        items = {k: _escaped_len(f"{json.dumps(k)}: {v}, ") for k, v in meta_json.items()}
        data = sum(u.numel() * u.element_size() for u in units.values())
        return cls(data, _escaped_len(json.dumps(bare) + ", "), items)


@dataclass
class _Buffer:
    """The rows of the shard being filled, and a bound on the size of its file (:meth:`estimate`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    units: list[dict[str, torch.Tensor]] = field(default_factory=list)
    meta_json: list[dict[str, str]] = field(default_factory=list)
    names: dict[str, tuple[Any, tuple[int, ...]]] = field(default_factory=dict)  # name -> (dtype, trailing)
    common: dict[str, str] | None = None  # key -> JSON value equal in every row so far
    common_cost: dict[str, int] = field(default_factory=dict)  # key -> cost of storing it once
    item_cost: dict[str, int] = field(default_factory=dict)  # key -> its cost summed over the rows
    fixed: int = 0
    data: int = 0

    def estimate(self, extra: int, row: tuple[_RowCost, Mapping[str, str], Iterable[str]] | None = None) -> int:
        """The file size (bound) of the buffered rows, plus ``row`` (cost, metadata JSON, tensor names) if given.

        Data bytes + the escaped row records + the metadata (items every row shares once, the others per row) +
        a tensor table entry per name + ``extra`` (the shard's own metadata) + slack for the fixed keys.
        """
        common, item_cost, fixed, data, names = self.common, self.item_cost, self.fixed, self.data, set(self.names)
        if row is not None:
            cost, meta_json, row_names = row
            common = dict(meta_json) if common is None else {k: v for k, v in common.items() if meta_json.get(k) == v}
            item_cost = {k: item_cost.get(k, 0) + cost.items.get(k, 0) for k in set(item_cost) | set(cost.items)}
            fixed, data, names = fixed + cost.fixed, data + cost.data, names | set(row_names)
            common_cost = {**cost.items, **self.common_cost}
        else:
            common_cost = self.common_cost
        common = common or {}
        meta = sum(common_cost[k] for k in common) + sum(c for k, c in item_cost.items() if k not in common)
        return data + fixed + meta + sum(160 + len(n) for n in names) + extra + 1024


class ShardWriter:
    """Accumulate feature rows and commit them as shards of at most ``max_bytes`` (one rank's writer).

    A shard is committed when the next row would not fit (a row larger than ``max_bytes`` gets a shard of its
    own) and by :meth:`flush`/:meth:`close`. Rows are held in memory until their shard is committed: a killed
    writer loses only those, and its shard never appears. Use one writer per rank and folder at a time.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        rank: int = 0,
        max_bytes: int | str = DEFAULT_SHARD_SIZE,
        metadata: Mapping[str, Any] | None = None,
        fsync: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = int(rank)
        self.max_bytes = parse_size(max_bytes)
        self.extra = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        self._extra_cost = _escaped_len(json.dumps(self.extra))
        self.fsync = fsync
        self.seq = _next_seq(self.folder).get(self.rank, 0)
        self.committed: list[str] = []
        self._buf = _Buffer()
        self._placed: dict[str, str] = {}  # input -> the shard it was committed in (by this writer)
        self._placed_pending: set[str] = set()
        remove_stale_temps(self.folder / shard_name(self.rank, self.seq))

    @property
    def pending(self) -> int:
        """Rows added but not committed yet."""
        return len(self._buf.rows)

    def add(
        self,
        input: str,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        *,
        key: str | None = None,
    ) -> list[str]:
        """Add one input's tensors (per-file shapes) and metadata (JSON values); return the shards committed.

        Raises:
            ValueError: the input is already buffered, or a tensor has no feature axis.
        """
        if input in self._placed_pending:
            raise ValueError(f"{input!r} is already in the shard being written")
        units = {name: _units(name, t) for name, t in sorted(tensors.items())}
        meta_json = {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()}
        record = {"input": input, "key": key, "shapes": {n: [int(d) for d in tensors[n].shape] for n in units}}
        cost = _RowCost.of(record, units, meta_json)
        committed = []
        buf = self._buf
        if buf.rows and not self._compatible(units):
            committed.append(self.flush())
        elif buf.rows and (
            buf.estimate(self._extra_cost, (cost, meta_json, units)) > self.max_bytes
            or buf.estimate(self._extra_cost, (cost, meta_json, units)) - buf.data - cost.data > MAX_HEADER_BYTES
        ):
            committed.append(self.flush())  # the next row would not fit (in the size, or in safetensors' header)
        self._append(record, units, meta_json, cost)
        if len(self._buf.rows) == 1 and self._buf.estimate(self._extra_cost) > self.max_bytes:
            committed.append(self.flush())  # one row larger than a shard: a shard of its own
        return [c for c in committed if c]

    def _compatible(self, units: Mapping[str, torch.Tensor]) -> bool:
        names = self._buf.names
        return all(n not in names or names[n] == (u.dtype, tuple(u.shape[1:])) for n, u in units.items())

    def _append(
        self, record: dict[str, Any], units: dict[str, torch.Tensor], meta_json: dict[str, str], cost: _RowCost
    ) -> None:
        buf = self._buf
        self._placed_pending.add(record["input"])
        buf.rows.append(record)
        buf.units.append(units)
        buf.meta_json.append(meta_json)
        for name, u in units.items():
            buf.names.setdefault(name, (u.dtype, tuple(u.shape[1:])))
        if buf.common is None:
            buf.common = dict(meta_json)
        else:
            buf.common = {k: v for k, v in buf.common.items() if meta_json.get(k) == v}
        for k, c in cost.items.items():
            buf.item_cost[k] = buf.item_cost.get(k, 0) + c
            buf.common_cost.setdefault(k, c)
        buf.fixed += cost.fixed
        buf.data += cost.data

    def flush(self) -> str | None:
        """Commit the buffered rows as the next shard (atomically); return its file name, None when empty."""
        import torch
        from safetensors.torch import save_file

        buf = self._buf
        if not buf.rows:
            return None
        common = buf.common or {}
        offsets = {name: 0 for name in buf.names}
        records = []
        for row, units, meta_json in zip(buf.rows, buf.units, buf.meta_json):
            slots = {}
            for name, u in units.items():
                slots[name] = {"offset": offsets[name], "length": int(u.shape[0]), "shape": row["shapes"][name]}
                offsets[name] += int(u.shape[0])
            residual = {k: json.loads(v) for k, v in meta_json.items() if k not in common}
            records.append({"input": row["input"], "key": row["key"], "tensors": slots, "metadata": residual})
        stacked = {name: torch.cat([u[name] for u in buf.units if name in u]) for name in sorted(buf.names)}
        name = shard_name(self.rank, self.seq)
        header = {
            **self.extra,
            "format": SHARD_FORMAT,
            "rank": str(self.rank),
            "seq": str(self.seq),
            "created_ns": str(time.time_ns()),
            "common": json.dumps({k: json.loads(v) for k, v in common.items()}, sort_keys=True),
            "rows": json.dumps(records),
            "data_digest": tensors_digest(stacked),
        }
        with atomic_path(self.folder / name, fsync=self.fsync) as tmp:
            save_file(stacked, os.fspath(tmp), metadata=header)
        self.committed.append(name)
        self._placed.update({row["input"]: name for row in buf.rows})
        self._placed_pending = set()
        self.seq += 1
        self._buf = _Buffer()
        remove_stale_temps(self.folder / shard_name(self.rank, self.seq))
        return name

    def shard_of(self, input: str) -> str | None:
        """The shard file ``input``'s row is (or, while buffered, will be) committed in; None if never added."""
        if input in self._placed_pending:
            return shard_name(self.rank, self.seq)
        return self._placed.get(input)

    def close(self) -> list[str]:
        """Commit what is buffered; return every shard this writer committed."""
        self.flush()
        return list(self.committed)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
