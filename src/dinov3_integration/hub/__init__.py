"""Weights hub: sources (files, folders, URLs, Hugging Face, timm names, tags), formats, cache and downloads.

- :func:`resolve_weights` finds weights for a model and reads them (:mod:`.sources`); :func:`load_pretrained`
  converts them to the official layout and loads them strictly (:mod:`.loading`); ``create_model(name,
  weights=...)`` in :mod:`dinov3_integration.factory` does both.
- :func:`compare_state_dicts` (:mod:`.mismatch`) is the one state-dict mismatch reporter (missing, unexpected,
  mis-shaped and wrong-kind tensors), also used by ``vggt_compat``.
- :mod:`.formats` converts between the official, Hugging Face and timm layouts; :mod:`.convert` writes them.
- :mod:`.download` fetches URLs into the cache (:mod:`.cache`: safe names keyed on the URL), verified and
  atomically, under a per-file lock (:mod:`.lock`); :mod:`.transfer` does the HTTP attempts (retries, ``Range``)
  and :mod:`.huggingface` the Hugging Face files (clear errors, fast failure when the Hub is unreachable).
- :mod:`.checkpoint_io` reads and writes checkpoint files safely (``weights_only=True``, safetensors preferred).

Submodules are imported on first use, so ``import dinov3_integration.hub`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_EXPORTS = {
    "errors": [
        "WeightsError",
        "DownloadError",
        "HTTPStatusError",
        "LinkExpiredError",
        "IncompleteDownloadError",
        "HashMismatchError",
        "WeightsNotFoundError",
        "RepoNotFoundError",
        "URLNotFoundError",
        "GatedRepoAccessError",
        "UnsafeCheckpointError",
        "CheckpointFormatError",
        "WeightsMismatchError",
    ],
    "cache": ["get_cache_dir", "url_to_filename", "cache_path_for_url", "hash_prefix_from_filename"],
    "download": ["download_url", "hf_download"],
    "checkpoint_io": ["load_state_dict_file", "save_state_dict_file", "unwrap_state_dict", "load_hf_model_folder"],
    "sources": ["resolve_weights", "official_filename", "hf_repo_id"],
    "resolved": ["ResolvedWeights", "LoadResult"],
    "loading": ["load_pretrained"],
    "mismatch": ["StateDictMismatch", "compare_state_dicts", "fitting_models"],
    "formats": ["detect_format", "to_official", "from_official", "infer_architecture", "rope_periods"],
    "resample": ["resample_patch_embed"],
    "convert": ["convert_checkpoint"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["load_pretrained_weights", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def load_pretrained_weights(
    model: nn.Module, model_name: str, weights: Any = None, periods: str = "reference", *, check_hash: bool = True
) -> None:
    """Resolve ``weights`` for ``model_name`` (see :func:`resolve_weights`) and load them into ``model`` (strict).

    ``periods`` (``"reference"`` or ``"float32"``) picks the RoPE periods for sources that do not store them.
    """
    from .loading import load_pretrained
    from .sources import resolve_weights

    resolved = resolve_weights(model_name, weights, check_hash=check_hash)
    load_pretrained(model, resolved, periods=periods)  # type: ignore[arg-type]
