"""The feature-file format written by ``dinov3 extract`` (and :func:`dinov3_integration.extract`), and its reader.

One safetensors file per input. Tensors, for each saved block ``L``:

- ``cls.L`` ``[D]``, ``patch.L`` ``[h, w, D]`` (row-major patch grid), ``storage.L`` ``[R, D]`` for an image;
- the same with a leading frame axis ``[T, ...]`` for a video or a clip, plus ``frame_indices`` ``[T]`` (int64)
  and ``frame_times`` ``[T]`` (float64, seconds) for a video;
- ``aggregated.L`` ``[S, P, 2C]`` for each kept Aggregator layer ``L`` (``extract --aggregate``).

Metadata values are strings (safetensors' rule); anything that is not a string is stored as JSON and decoded by
:func:`read_features`. ``format`` is :data:`FORMAT`; ``data_digest`` is a SHA-256 over the tensors (names, dtypes,
shapes, bytes) so a file whose data section was damaged behind an intact header is detected
(:func:`verify_features`). Files are written atomically (:mod:`dinov3_integration.utils.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .feature_codec import FeatureFileError, encode_metadata, tensors_digest
from .feature_codec import decode_metadata as _decode
from .feature_codec import raw_tensors_digest as _raw_digest
from .feature_codec import read_safetensors_header as _read_header
from .feature_shard_reader import FeatureShards
from .feature_shards import INDEX_NAME, SHARD_FORMAT
from .utils.atomic import atomic_path, remove_stale_temps

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "FeatureFileError",
    "FeatureShards",
    "encode_metadata",
    "read_features",
    "read_metadata",
    "read_verified_header",
    "tensors_digest",
    "verify_features",
    "write_features",
]

FORMAT = "dinov3_integration.features/1"


def write_features(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> None:
    """Write one feature file atomically: ``tensors`` plus ``metadata`` (encoded), ``format`` and ``data_digest``.

    Temporaries a killed earlier writer left beside ``path`` are removed first (matched literally).
    """
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, **dict(metadata), "data_digest": tensors_digest(contiguous)}
    remove_stale_temps(path)
    with atomic_path(path) as tmp:
        save_file(contiguous, os.fspath(tmp), metadata=encode_metadata(meta))


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, str], set[str]]:
    """The raw (undecoded) metadata and the tensor names of a feature file, without reading the tensors (nor
    importing torch).

    Raises:
        FeatureFileError: the file is not a readable safetensors file.
    """
    meta, entries, _ = _read_header(path)
    return dict(meta), set(entries)


def verify_features(path: str | os.PathLike[str], expected_keys: Iterable[str] = ()) -> dict[str, str]:
    """Check that ``path`` is a complete feature file; return its raw metadata.

    Complete means: readable, ``format`` is :data:`FORMAT`, every name of ``expected_keys`` is present, and the
    tensors hash to the stored ``data_digest`` (the whole data section is read). Torch is not imported: the
    checksum is computed over the raw bytes with hashlib (equal to :func:`tensors_digest` of the tensors).

    Raises:
        FeatureFileError: naming what is wrong.
    """
    return read_verified_header(path, expected_keys)[0]


def read_verified_header(
    path: str | os.PathLike[str], expected_keys: Iterable[str] = ()
) -> tuple[dict[str, str], set[str]]:
    """:func:`verify_features` that also returns the tensor names: ``(raw metadata, tensor names)``, from one read
    of the header (what :func:`read_metadata` would return, for a file that passed the checks). No torch.

    Raises:
        FeatureFileError: naming what is wrong (as :func:`verify_features`).
    """
    meta, entries, start = _read_header(path)
    if meta.get("format") != FORMAT:
        raise FeatureFileError(f"{os.fspath(path)} is not a {FORMAT} file (format {meta.get('format')!r})")
    missing = sorted(set(expected_keys) - set(entries))
    if missing:
        raise FeatureFileError(f"{os.fspath(path)} lacks the tensors {missing}")
    stored = meta.get("data_digest")
    if not stored:
        raise FeatureFileError(f"{os.fspath(path)} has no data_digest (written by an older version)")
    try:
        digest = _raw_digest(path, entries, start)
    except (OSError, ValueError) as exc:
        raise FeatureFileError(f"{os.fspath(path)}: the data section is unreadable: {exc}") from exc
    if digest != stored:
        raise FeatureFileError(f"{os.fspath(path)}: the data section does not match its data_digest (damaged)")
    return dict(meta), set(entries)


def read_features(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | FeatureShards:
    """Load ``dinov3 extract``'s output: a feature file -> ``(tensors, metadata)`` (JSON metadata values decoded);
    a shard folder (``--format shards``), its ``index.json`` or one shard -> a :class:`FeatureShards`.

    Example: ``tensors, meta = read_features("feats/photos/a.jpg.safetensors")``; ``tensors["patch.11"]`` is
    ``[h, w, D]`` for an image, ``[T, h, w, D]`` for a video; ``meta["grid"] == [h, w]``. With shards:
    ``shards = read_features("feats")``; ``tensors, meta = shards["photos/a.jpg"]`` (the same tensors and
    metadata), ``shards.stack("cls.11")`` is the ``[N, D]`` CLS matrix of N images.
    """
    from safetensors import safe_open

    if Path(path).is_dir() or Path(path).name == INDEX_NAME:
        return FeatureShards(path)
    with safe_open(os.fspath(path), framework="pt") as fh:
        raw = fh.metadata() or {}
        if raw.get("format") == SHARD_FORMAT:
            return FeatureShards(path)
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    return tensors, _decode(raw)
