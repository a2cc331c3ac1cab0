"""Finding weights for a model and loading them into it.

:func:`resolve_weights` turns a ``weights`` argument into tensors plus a description of where they came from:

* ``None`` or a tag (``"lvd1689m"``, ``"sat493m"``): the documented search order for the model's official file
  (``dinov3_<arch>_pretrain_<tag>-<hash>.pth``): the folder named by ``$DINOV3_WEIGHTS_DIR``, then the weights cache
  (:func:`~dinov3_integration.hub.cache.get_cache_dir`, where ``torch.hub`` keeps its downloads), then the model's
  Hugging Face repository ``facebook/dinov3-<arch>-pretrain-<tag>``. If nothing is found, one error lists every
  place searched.
* a local file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``) or a Hugging Face model folder (``config.json`` +
  weights); a folder of official files is searched for the model's file name;
* an ``http(s)://`` or ``file://`` URL (downloaded into the cache, or read in place for ``file://``);
* ``hf-hub:org/repo[@revision]``;
* a timm name: ``timm/vit_large_patch16_dinov3.lvd1689m`` or ``vit_large_patch16_dinov3.lvd1689m``.

:func:`load_pretrained` converts the tensors to the official layout (:mod:`dinov3_integration.hub.formats`) and
loads them strictly, with an explanation when they do not fit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from dinov3_integration._logging import get_logger
from dinov3_integration.hub import formats
from dinov3_integration.hub.cache import cache_path_for_url, get_cache_dir, redact_url, url_to_filename
from dinov3_integration.hub.checkpoint_io import (
    hf_weight_files,
    is_hf_model_folder,
    load_hf_model_folder,
    load_state_dict_file,
    read_shard_index,
)
from dinov3_integration.hub.download import download_url, hf_download, hf_offline
from dinov3_integration.hub.errors import (
    CheckpointFormatError,
    RepoNotFoundError,
    WeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from dinov3_integration.hub.hf_config import HF_EXTRA_FILE, check_hf_config_fits
from dinov3_integration.hub.loading import load_pretrained
from dinov3_integration.hub.resolved import LoadResult, ResolvedWeights
from dinov3_integration.models import specs
from dinov3_integration.utils.redact import redact_text

log = get_logger("hub")

WEIGHTS_DIR_ENV = "DINOV3_WEIGHTS_DIR"
"""Environment variable naming a folder of official ``.pth`` files (searched first)."""

WEIGHT_TAGS = specs.WEIGHT_TAGS
HF_ORG = specs.HF_ORG
HF_WEIGHT_FILES = specs.HF_WEIGHT_FILES
"""Files tried, in order, in a Hugging Face repository (the one list, in :mod:`dinov3_integration.models.specs`)."""

_TIMM_NAME = re.compile(r"^(?:timm/)?(?P<arch>vit_[a-z0-9_]+?_patch16_dinov3)(?P<qkvb>_qkvb)?\.(?P<tag>[a-z0-9_]+)$")
_OFFICIAL_NAME = re.compile(r"^dinov3_(?P<arch>vit[a-z0-9]+?)_pretrain_(?P<tag>lvd1689m|sat493m)(?:-[0-9a-f]{8,})?\.")
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

__all__ = [
    "WEIGHTS_DIR_ENV",
    "LoadResult",
    "ResolvedWeights",
    "hf_repo_id",
    "load_pretrained",
    "official_filename",
    "parse_hf_hub",
    "resolve_weights",
]


# --------------------------------------------------------------------------------------------------- names


def official_filename(model_name: str, tag: str) -> str:
    """The official file name, e.g. ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``."""
    name = specs.official_filename(model_name, tag)
    if name is None:
        raise _no_such_tag(model_name, tag)
    return name


def hf_repo_id(model_name: str, tag: str) -> str | None:
    """The Hugging Face repository Meta publishes these weights in (``None`` if there is none)."""
    return specs.hf_repo_id(model_name, tag)


def parse_hf_hub(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` (prefix optional) -> ``("org/repo", "rev")``."""
    text = spec.removeprefix("hf-hub:").strip()
    repo, _, revision = text.partition("@")
    if not _HF_REPO.match(repo):
        raise WeightsError(
            f"{spec!r} is not a Hugging Face repository: use 'hf-hub:org/name' or 'hf-hub:org/name@rev'."
        )
    return repo, revision or None


def _weights_spec(model_name: str) -> specs.ModelSpec:
    """The registered model whose released weights ``model_name`` uses (``dinov3_vitl14``: ViT-L/16's)."""
    return specs.weights_spec(model_name)


def _no_such_tag(model_name: str, tag: str) -> WeightsError:
    spec = _weights_spec(model_name)
    if not spec.weights:
        return WeightsNotFoundError(
            f"{model_name} has no released weights. Pass weights=<file, folder, URL or hf-hub:org/repo> with "
            "weights of your own, or use pretrained=False."
        )
    return WeightsNotFoundError(
        f"{model_name} has no {tag!r} weights; released tags: {', '.join(spec.weights)}. Pick one of these, or pass "
        "a file, folder, URL or hf-hub: repository."
    )


def _tag_in(text: str) -> str | None:
    return specs.tag_in_name(text)


# --------------------------------------------------------------------------------------------------- resolving


def resolve_weights(
    model_name: str,
    weights: Any = None,
    *,
    offline: bool | None = None,
    progress: bool = True,
    check_hash: bool = True,
) -> ResolvedWeights:
    """Find and read the weights for ``model_name`` (see the module docstring for what ``weights`` may be).

    Args:
        model_name: a registered model (``dinov3_vitl16``); used for the default search and sanity checks.
        weights: ``None``, a tag, a path, a URL, ``hf-hub:org/repo[@rev]`` or a timm name (an enum's ``.value`` is
            used).
        offline: never touch the network; default: Hugging Face offline mode (``HF_HUB_OFFLINE=1``).
        progress: show download progress bars.
        check_hash: verify the SHA-256 prefix that official file names carry.

    Raises:
        WeightsNotFoundError: nothing found (``searched`` lists every place looked at).
        WeightsError: any other problem (download, access, unreadable file), with what to do about it.
    """
    offline = hf_offline() if offline is None else offline
    value = getattr(weights, "value", weights)
    if value is None or (isinstance(value, str) and value.strip().lower() in WEIGHT_TAGS):
        tag = value.strip().lower() if isinstance(value, str) else None
        resolved = _resolve_default(model_name, tag, offline=offline, progress=progress, check_hash=check_hash)
    else:
        resolved = _resolve_explicit(model_name, value, offline=offline, progress=progress, check_hash=check_hash)
    log.debug("weights for %s: %s (%s layout, tag %s)", model_name, resolved.source, resolved.format, resolved.tag)
    return resolved


def _resolve_explicit(
    model_name: str, weights: str | os.PathLike[str], *, offline: bool, progress: bool, check_hash: bool
) -> ResolvedWeights:
    text = os.fspath(weights).strip()
    if text.startswith("hf-hub:"):
        repo, revision = parse_hf_hub(text)
        return _from_hf_repo(repo, revision, tag=_tag_in(repo), offline=offline)
    if text.startswith("local-dir:"):
        text = text.removeprefix("local-dir:")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in {"http", "https", "file"}:
        return _from_url(model_name, text, offline=offline, progress=progress, check_hash=check_hash)
    path = Path(text).expanduser()
    if path.exists():
        return _from_path(model_name, path)
    timm = _TIMM_NAME.match(text)
    if timm:
        return _from_timm(model_name, timm, offline=offline)
    raise _unrecognised(text)


def _unrecognised(text: str) -> WeightsNotFoundError:
    text = redact_text(text)  # e.g. 's3://bucket/x.pth?X-Amz-Signature=...': no secret in the message
    hint = f" If {text!r} is a Hugging Face repository, write 'hf-hub:{text}'." if _HF_REPO.match(text) else ""
    return WeightsNotFoundError(
        f"Cannot find weights {text!r}: it is not an existing file or folder (current directory {Path.cwd()}), an "
        f"http(s):// or file:// URL, an 'hf-hub:org/repo' id, a timm name (e.g. 'timm/vit_large_patch16_dinov3."
        f"lvd1689m') or a tag ({', '.join(WEIGHT_TAGS)}).{hint}",
        searched=[str(Path(text).expanduser().absolute())],
    )


# ----------------------------------------------------------------------------- default search order


def _resolve_default(
    model_name: str, tag: str | None, *, offline: bool, progress: bool, check_hash: bool
) -> ResolvedWeights:
    spec = _weights_spec(model_name)
    tag = tag or next(iter(spec.weights), None)
    if tag is None or tag not in spec.weights:
        raise _no_such_tag(model_name, tag or "default")
    filename = official_filename(spec.name, tag)
    searched: list[str] = []
    found = _search_weights_dir(filename, searched) or _search_cache(filename, searched)
    if found is not None:
        path, where = found
        return _from_file(path, source=f"{path} ({where})", tag=tag)
    repo = hf_repo_id(spec.name, tag)
    if repo is None:
        searched.append(f"Hugging Face: Meta publishes no repository for {spec.name} {tag} weights")
    else:
        try:
            return _from_hf_repo(repo, None, tag=tag, offline=offline)
        except WeightsNotFoundError as exc:
            searched.extend(exc.searched)
        except WeightsError as exc:  # gated, network: keep the error, add where else we looked
            exc.args = (f"{exc}\nAlso searched (nothing found): {'; '.join(searched)}.",)
            raise
    raise _nothing_found(model_name, filename, searched, offline)


def _search_weights_dir(filename: str, searched: list[str]) -> tuple[Path, str] | None:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        searched.append(f"${WEIGHTS_DIR_ENV} (not set)")
        return None
    root = Path(folder).expanduser()
    arch_dir = filename.split("_pretrain_", 1)[0]  # official URLs keep each file in a dinov3_<arch>/ folder
    stem = Path(filename).stem
    for candidate in (root / filename, root / arch_dir / filename, root / f"{stem}.safetensors"):
        searched.append(f"{candidate} (${WEIGHTS_DIR_ENV})")
        if candidate.is_file():
            return candidate, f"${WEIGHTS_DIR_ENV}"
    return None


def _search_cache(filename: str, searched: list[str]) -> tuple[Path, str] | None:
    candidate = get_cache_dir() / filename
    searched.append(f"{candidate} (weights cache)")
    return (candidate, "weights cache") if candidate.is_file() else None


def _nothing_found(model_name: str, filename: str, searched: list[str], offline: bool) -> WeightsNotFoundError:
    lines = "\n".join(f"  - {place}" for place in searched)
    mode = " (offline mode: the network was not used)" if offline else ""
    return WeightsNotFoundError(
        f"No weights found for {model_name}{mode}. Searched:\n{lines}\n"
        f"To fix: put the official file {filename} (from Meta's download form) in a folder and set "
        f"${WEIGHTS_DIR_ENV} to it; or pass weights=<path, URL or hf-hub:org/repo>; or go online with access to "
        "the Hugging Face repository above (accept its licence and `hf auth login`).",
        searched=searched,
    )


# ----------------------------------------------------------------------------- explicit sources


def _from_file(path: Path, *, source: str, tag: str | None = None, sha256: str | None = None) -> ResolvedWeights:
    state_dict = load_state_dict_file(path)
    return ResolvedWeights(
        state_dict=state_dict,
        source=source,
        format=_detect(state_dict, source),
        tag=tag or _tag_in(path.name),
        path=path,
        _sha256=sha256,
    )


def _from_path(model_name: str, path: Path) -> ResolvedWeights:
    if path.is_file():
        _check_official_name(model_name, path.name)
        return _from_file(path, source=f"file {path}")
    if is_hf_model_folder(path):
        state_dict, config = load_hf_model_folder(path)
        source = f"Hugging Face folder {path}"
        files = hf_weight_files(path)
        single = files[0] if len(files) == 1 else None
        fmt = _detect(state_dict, source)
        if fmt == "hf" and config:
            _check_config(config, state_dict, source)
        extra = path / HF_EXTRA_FILE
        extras = load_state_dict_file(extra) if extra.is_file() else {}
        return ResolvedWeights(
            state_dict, source, fmt, tag=_tag_in(str(path)), path=single, config=config, extras=extras
        )
    return _from_official_folder(model_name, path)


def _from_official_folder(model_name: str, folder: Path) -> ResolvedWeights:
    """A folder that is not a Hugging Face model folder: look for the model's official file in it."""
    spec = _weights_spec(model_name)
    searched: list[str] = []
    for tag in spec.weights:
        name = official_filename(spec.name, tag)
        for candidate in (folder / name, folder / f"{Path(name).stem}.safetensors"):
            searched.append(str(candidate))
            if candidate.is_file():
                return _from_file(candidate, source=f"file {candidate}", tag=tag)
    raise WeightsNotFoundError(
        f"{folder} is neither a Hugging Face model folder (config.json + model.safetensors) nor a folder holding the "
        f"official file of {model_name}. Looked for: {', '.join(searched) or 'nothing (no released weights)'}. "
        "Pass the weights file itself.",
        searched=searched,
    )


def _from_url(model_name: str, url: str, *, offline: bool, progress: bool, check_hash: bool) -> ResolvedWeights:
    filename = url_to_filename(url)
    _check_official_name(model_name, filename)
    is_file_url = url.lower().startswith("file://")
    cached = None if is_file_url else cache_path_for_url(url)
    if offline and cached is not None and not cached.is_file():
        raise WeightsNotFoundError(
            f"Offline mode: {filename} is not in the weights cache ({cached}) and {redact_url(url)} was not "
            f"downloaded. Go online (unset HF_HUB_OFFLINE) or copy the file to {cached}.",
            searched=[str(cached)],
        )
    path = download_url(url, progress=progress, check_hash=check_hash)
    source = str(path) if is_file_url else f"{redact_url(url)} (cached at {path})"
    return _from_file(path, source=source)


def _from_hf_repo(repo: str, revision: str | None, *, tag: str | None, offline: bool) -> ResolvedWeights:
    """Read the weights of a Hugging Face repository: ``model.safetensors``, sharded safetensors, or ``.bin``."""
    searched: list[str] = []
    for filename in HF_WEIGHT_FILES:
        try:
            path = hf_download(repo, filename, revision, local_files_only=offline)
        except RepoNotFoundError:
            raise
        except WeightsNotFoundError as exc:
            searched.extend(exc.searched)
            continue
        return _read_hf_files(repo, revision, path, tag=tag, offline=offline)
    raise WeightsNotFoundError(
        f"No weights file ({', '.join(HF_WEIGHT_FILES)}) found for the Hugging Face repository {repo}"
        f"{' in the local cache (offline mode)' if offline else ''}. Searched: {'; '.join(searched)}.",
        searched=searched,
    )


def _read_hf_files(repo: str, revision: str | None, path: Path, *, tag: str | None, offline: bool) -> ResolvedWeights:
    source = f"hf-hub:{repo}@{revision or 'main'} ({path.name})"
    if path.name.endswith(".index.json"):
        state_dict: dict[str, Tensor] = {}
        for shard in read_shard_index(path):
            state_dict.update(load_state_dict_file(hf_download(repo, shard, revision, local_files_only=offline)))
        single = None
    else:
        state_dict, single = load_state_dict_file(path), path
    fmt, config = _detect(state_dict, source), _hf_config(repo, revision, offline)
    if fmt == "hf" and config:
        _check_config(config, state_dict, source)
    return ResolvedWeights(state_dict=state_dict, source=source, format=fmt, tag=tag, path=single, config=config)


def _hf_config(repo: str, revision: str | None, offline: bool) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(hf_download(repo, "config.json", revision, local_files_only=offline).read_text())
    except (WeightsError, OSError, ValueError) as exc:  # informational only
        log.debug("no config.json for %s: %s", repo, exc)
        return None


def _from_timm(model_name: str, match: re.Match[str], *, offline: bool) -> ResolvedWeights:
    arch, tag = match.group("arch"), match.group("tag")
    expected = specs.TIMM_ARCHS.get(arch)
    ours = _weights_spec(model_name).name
    if expected is not None and expected != ours:
        raise WeightsMismatchError(
            f"timm weights {match.group(0)!r} are for {expected}, not {model_name}. Use "
            f"create_model({expected!r}, ...) or pick the timm name of {model_name}."
        )
    repo = f"timm/{match.group(0).removeprefix('timm/')}"
    return _from_hf_repo(repo, None, tag=_tag_in(tag), offline=offline)


def _check_official_name(model_name: str, filename: str) -> None:
    """Refuse, before reading it, an official file that belongs to another model size."""
    match = _OFFICIAL_NAME.match(filename)
    if match is None:
        return
    ours = _weights_spec(model_name).name
    theirs = f"dinov3_{match.group('arch')}"
    if theirs != ours:
        raise WeightsMismatchError(
            f"{filename} holds {theirs} weights, but the model is {model_name}. Use create_model({theirs!r}, ...) "
            f"or pass the {ours} file."
        )


def _check_config(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> None:
    try:
        check_hf_config_fits(config, state_dict)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{source}: {exc}") from exc


def _detect(state_dict: dict[str, Tensor], source: str) -> str:
    try:
        return formats.detect_format(state_dict)
    except formats.CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{source}: {exc}") from exc
