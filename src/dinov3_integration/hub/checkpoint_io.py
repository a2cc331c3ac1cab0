"""Reading and writing checkpoint files safely.

* ``.safetensors`` files are read with safetensors (no code execution).
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files are read with ``torch.load(..., weights_only=True)``; a file that
  needs arbitrary code to unpickle is refused with :class:`~dinov3_integration.hub.errors.UnsafeCheckpointError`
  (there is deliberately no fallback to ``weights_only=False``).
* Training checkpoints are unwrapped (``{"model": ...}``, ``{"teacher": ...}``, ``module.``/``backbone.`` prefixes).
* Files are written atomically: temporary file in the same folder, fsync, then rename.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.cache import atomic_write
from dinov3_integration.hub.errors import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from dinov3_integration.models.specs import HF_WEIGHT_FILES

log = get_logger("hub")

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt"})
WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_state_dict", "student")
"""Keys that hold a nested state dict, in order of preference (the EMA ``teacher`` before the ``student``)."""
STRIPPED_PREFIXES = ("module.", "_orig_mod.", "backbone.")
"""Key prefixes removed by :func:`unwrap_state_dict` (DDP, ``torch.compile``, DINOv3 training wrappers)."""

HF_CONFIG = "config.json"

_ZIP_MAGIC = b"PK\x03\x04"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


# --------------------------------------------------------------------------------------------------- loading


def load_state_dict_file(path: str | os.PathLike[str], *, unwrap: bool = True) -> dict[str, Tensor]:
    """Load a checkpoint file as a flat ``{name: tensor}`` dict on the CPU.

    ``.safetensors`` is read with safetensors; pickled files (``.pth``, ``.pt``, ``.bin``, ``.ckpt``) with
    ``torch.load(weights_only=True)``. Files with other suffixes are recognised by their first bytes. With
    ``unwrap`` (default), nested training checkpoints and ``module.``/``backbone.`` prefixes are unwrapped with
    :func:`unwrap_state_dict`. Non-tensor entries are dropped (logged at DEBUG level).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(
            f"Checkpoint file not found: {file}. Check the path (and the current directory, {Path.cwd()}).",
            searched=[str(file)],
        )
    kind = _file_kind(file)
    obj = _load_safetensors(file) if kind == "safetensors" else _load_pickle(file)
    state_dict = unwrap_state_dict(obj) if unwrap else obj
    return _only_tensors(state_dict, file)


def _file_kind(file: Path) -> str:
    """``"safetensors"`` or ``"pickle"``, from the suffix or else the first bytes; refuse HTML error pages."""
    with open(file, "rb") as fh:
        head = fh.read(16)
    if head.lstrip()[:1] == b"<":
        raise CheckpointFormatError(
            f"{file} is an HTML/XML page, not a checkpoint: most likely an error page (for example an expired "
            "signed link, or a page saved from a browser). Delete it and download the file again with a fresh "
            "link, using wget/curl or this library rather than a browser."
        )
    suffix = file.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES or head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte little-endian header size, then JSON
        return "safetensors"
    raise CheckpointFormatError(
        f"Unsupported checkpoint file {file}: expected .safetensors, .pth, .pt, .bin or .ckpt. Convert it to one of "
        "these (preferably .safetensors) and try again."
    )


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:  # SafetensorError has no stable import location
        raise CheckpointFormatError(
            f"Cannot read {file} as safetensors ({exc}). The file is damaged or truncated: delete it and download "
            "it again."
        ) from exc


def _load_pickle(file: Path) -> Any:
    with open(file, "rb") as fh:
        is_zip = fh.read(4) == _ZIP_MAGIC
    try:
        # mmap avoids reading multi-GB files into memory up front; only the zip format supports it.
        return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if _refused_by_safe_loader(message):
            raise _unsafe_error(file, message) from None
        raise _damaged_error(file, exc) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise _damaged_error(file, exc) from exc


def _refused_by_safe_loader(message: str) -> bool:
    """True when ``torch.load(weights_only=True)`` refused the pickle's content (not a damaged/truncated file)."""
    if "GLOBAL" in message or "Unsupported global" in message or "Unsupported operand" in message:
        return True
    damaged = ("truncated", "EOF", "invalid load key", "magic number")
    return "Weights only load failed" in message and not any(word in message for word in damaged)


def _unsafe_error(file: Path, message: str) -> UnsafeCheckpointError:
    found = _UNSAFE_GLOBAL.search(message)
    if found:
        what = f"the Python object {found.group(1)!r}"
    elif "Unsupported operand" in message:
        what = "pickle instructions that only a full unpickler runs (a raw pickle, not a torch.save file)"
    else:
        what = "Python objects other than tensors"
    return UnsafeCheckpointError(
        f"Refusing to load {file} as unsafe: it contains {what}, and unpickling it could run arbitrary code, so it "
        "is not loaded (torch.load weights_only=True; the file is not damaged). If you trust the file, load it yourself with "
        "torch.load(path, weights_only=False), keep only the tensors (the model's state_dict) and save them with "
        "save_state_dict_file(state_dict, 'weights.safetensors'); or allowlist the class with "
        "torch.serialization.add_safe_globals([...]) before loading."
    )


def _damaged_error(file: Path, exc: BaseException) -> CheckpointFormatError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointFormatError(
        f"Cannot read {file} as a PyTorch checkpoint ({first_line}). The file is damaged or truncated (e.g. an "
        "interrupted download): delete it and download it again."
    )


def _only_tensors(obj: Any, file: Path | None = None) -> dict[str, Tensor]:
    where = f" in {file}" if file else ""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"Expected a dict of tensors{where}, got {type(obj).__name__}. Save the model's state_dict() instead "
            "of the model object."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    dropped = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if not tensors:
        raise CheckpointFormatError(
            f"No tensors found{where}; top-level keys: {dropped[:20]}. Pass a file that holds a model state dict."
        )
    if dropped:
        log.debug("dropped %d non-tensor entries%s: %s", len(dropped), where, dropped[:20])
    return tensors


# --------------------------------------------------------------------------------------------------- unwrapping


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """Return the model state dict inside a (possibly nested) checkpoint.

    Descends into ``teacher`` (preferred), ``model``, ``state_dict``, ``model_state_dict`` or ``student`` entries
    that hold a dict, then strips ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``backbone.`` (DINOv3
    training) prefixes from the keys that carry them. Other keys are left untouched. What was unwrapped is logged
    at DEBUG level.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"Expected a checkpoint dict, got {type(obj).__name__}. Save the model's state_dict() instead of the "
            "model object."
        )
    path: list[str] = []
    for _ in range(len(WRAPPER_KEYS) * 2):  # bounded descent
        key = _wrapper_key(obj)
        if key is None:
            break
        if key == "student":
            log.warning("checkpoint has a 'student' but no 'teacher' entry; using the student weights")
        path.append(key)
        obj = obj[key]
    if path:
        log.debug("unwrapped checkpoint entries: %s", " -> ".join(path))
    return _strip_prefixes(dict(obj))


def _wrapper_key(obj: Mapping[str, Any]) -> str | None:
    for key in WRAPPER_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and value:
            return key
    return None


def _strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    changed = True
    while changed:  # repeated so that "module.backbone." and similar combinations are all removed
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if not any(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
                continue
            state_dict = _strip_prefix(state_dict, prefix)
            changed = True
    return state_dict


def _strip_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    count = 0
    for key, value in state_dict.items():
        new = key[len(prefix) :] if isinstance(key, str) and key.startswith(prefix) else key
        if new in out:
            raise CheckpointFormatError(
                f"Cannot strip the prefix {prefix!r}: both {key!r} and {new!r} exist in the checkpoint. Remove the "
                "duplicate entries (keep only the model you want) and save the state dict again."
            )
        count += new != key
        out[new] = value
    log.debug("stripped prefix %r from %d keys", prefix, count)
    return out


# --------------------------------------------------------------------------------------------------- saving


def save_state_dict_file(
    state_dict: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``state_dict`` to ``path`` and return the path.

    ``.safetensors`` files are written with safetensors (tensors made contiguous, shared storage copied apart,
    ``metadata`` stored as strings, ``"format": "pt"`` added). Any other suffix is written with ``torch.save`` as
    a plain state dict (loadable by the official code); ``metadata`` cannot be stored there and is ignored with a
    warning.
    """
    file = Path(path).expanduser()
    if file.suffix.lower() in SAFETENSORS_SUFFIXES:
        _save_safetensors(state_dict, file, metadata)
    else:
        if metadata:
            log.warning("metadata is only stored in .safetensors files; not saved in %s", file)
        tensors = {k: _compact(_as_tensor(k, v)) for k, v in state_dict.items()}
        with atomic_write(file) as tmp:
            torch.save(tensors, tmp)
    log.debug("saved %d tensors to %s", len(state_dict), file)
    return file


def _save_safetensors(state_dict: Mapping[str, Tensor], file: Path, metadata: Mapping[str, Any] | None) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = _separate_storages(state_dict)
    with atomic_write(file) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _as_tensor(key: Any, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise CheckpointFormatError(
            f"Entry {key!r} is a {type(value).__name__}, not a tensor. Save a state dict of tensors only."
        )
    return value.detach()


def _compact(tensor: Tensor) -> Tensor:
    """A contiguous CPU tensor whose storage holds nothing but its own data (views would save the whole base)."""
    tensor = tensor.cpu().contiguous()
    if tensor.numel() and tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _separate_storages(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Make every tensor own its storage: safetensors refuses tensors that share memory (tied weights, views)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        tensor = _compact(_as_tensor(key, value))
        if tensor.numel():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:
                tensor = tensor.clone()
                ptr = tensor.untyped_storage().data_ptr()
            seen.add(ptr)
        out[str(key)] = tensor
    return out


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the string metadata stored in a ``.safetensors`` header (without reading the tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise CheckpointFormatError(f"Cannot read the safetensors header of {path} ({exc}). Re-download it.") from exc


# --------------------------------------------------------------------------------------------------- HF folders


def is_hf_model_folder(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder holding a Hugging Face model (``config.json`` plus weights)."""
    folder = Path(path)
    return (folder / HF_CONFIG).is_file() and any((folder / name).is_file() for name in HF_WEIGHT_FILES)


def hf_weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weight files of a Hugging Face model folder (safetensors preferred, sharded indexes resolved)."""
    root = Path(folder)
    for name in HF_WEIGHT_FILES:
        file = root / name
        if not file.is_file():
            continue
        return _index_shards(file) if name.endswith(".index.json") else [file]
    raise WeightsNotFoundError(
        f"No weights in the Hugging Face model folder {root}: expected one of {', '.join(HF_WEIGHT_FILES)}. "
        "Download the full repository (e.g. `hf download <repo> --local-dir <folder>`) or pass a weights file.",
        searched=[str(root / name) for name in HF_WEIGHT_FILES],
    )


def read_shard_index(index_file: str | os.PathLike[str]) -> list[str]:
    """The shard file names listed in a ``*.index.json`` file (``weight_map`` values), sorted and unique."""
    try:
        weight_map = json.loads(Path(index_file).read_text())["weight_map"]
        return sorted({str(name) for name in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointFormatError(
            f"Cannot read the shard index {index_file} ({exc}). Re-download the model folder."
        ) from exc


def _index_shards(index_file: Path) -> list[Path]:
    shards = [index_file.parent / name for name in read_shard_index(index_file)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"The shard index {index_file} lists files that are missing: {missing}. Re-download the model folder.",
            searched=[str(index_file.parent / name) for name in missing],
        )
    return shards


def load_hf_model_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a Hugging Face model folder: returns ``(state_dict, config)`` with keys as stored (no renaming)."""
    root = Path(folder).expanduser()
    config_file = root / HF_CONFIG
    if not config_file.is_file():
        raise WeightsNotFoundError(
            f"{root} is not a Hugging Face model folder: {HF_CONFIG} is missing. Pass the folder that holds "
            f"{HF_CONFIG} and the weights, or pass a weights file directly.",
            searched=[str(config_file)],
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"Cannot read {config_file} ({exc}). Re-download the model folder.") from exc
    state_dict: dict[str, Tensor] = {}
    for file in hf_weight_files(root):
        part = load_state_dict_file(file, unwrap=False)
        duplicate = state_dict.keys() & part.keys()
        if duplicate:
            raise CheckpointFormatError(
                f"Tensor(s) {sorted(duplicate)[:5]} appear in more than one shard of {root}. Re-download the folder."
            )
        state_dict.update(part)
    log.debug("loaded Hugging Face folder %s: %d tensors", root, len(state_dict))
    return state_dict, config
