"""The weights cache folder, cache file names (safe, keyed on the URL), hashing and atomic file writes.

The cache is ``$DINOV3_CACHE`` when set, otherwise ``<torch hub dir>/checkpoints`` (``torch.hub.get_dir()``, which
honours ``$TORCH_HOME``, ``$XDG_CACHE_HOME`` and ``torch.hub.set_dir``), so official ``.pth`` files that users
already downloaded with ``torch.hub`` are found without a second download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.errors import DownloadError, WeightsError
from dinov3_integration.utils.atomic import atomic_path, commit_temp, fsync_dir, new_temp_path
from dinov3_integration.utils.redact import redact_url, strip_query

__all__ = [
    "CACHE_ENV",
    "atomic_write",
    "cache_path_for_url",
    "cache_relpath",
    "check_digest",
    "commit_file",
    "ensure_dir",
    "find_cached",
    "fsync_dir",
    "get_cache_dir",
    "hash_prefix_from_filename",
    "redact_url",
    "sha256_file",
    "temp_path_beside",
    "url_to_filename",
]

log = get_logger("hub")

CACHE_ENV = "DINOV3_CACHE"
"""Environment variable overriding the cache folder."""

_HASH_IN_NAME = re.compile(r"-([0-9a-fA-F]{8,64})((?:\.[A-Za-z0-9]+)+)$")
_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 200
"""Longest cache file name kept as is (file systems allow 255 bytes; temporaries and locks add a little)."""


def get_cache_dir() -> Path:
    """Return the weights cache folder (not created): ``$DINOV3_CACHE`` or ``<torch hub dir>/checkpoints``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import torch.hub  # imported lazily: only needed when no override is set

    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and parents) if needed; raise a :class:`WeightsError` that says what to do if we cannot."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"Cannot create the weights folder {path}: {exc.strerror or exc}. "
            f"Set ${CACHE_ENV} to a writable folder, or pass an explicit destination."
        ) from exc
    if not os.access(path, os.W_OK):
        raise WeightsError(f"The weights folder {path} is not writable. Set ${CACHE_ENV} to a writable folder.")
    return path


def url_to_filename(url: str) -> str:
    """Return a safe file name for ``url``: its last path component, without query string or fragment.

    Signed links keep their signature in the query string, so
    ``https://x/dinov3_vits16_pretrain_lvd1689m-08c60483.pth?Policy=...&Signature=...`` becomes
    ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` (the name ``torch.hub`` uses too). The name is
    percent-decoded, then only what follows the last ``/`` or ``\\`` is kept (``..%2F..%2Fx.pth`` -> ``x.pth``,
    ``%2Fabs%2Fpath`` -> ``path``), control characters become ``_``, leading dots and spaces are dropped and the
    length is capped, so the name never leaves the folder it is put in.
    """
    try:
        raw = urlsplit(url).path
    except ValueError as exc:
        shown = redact_url(url)
        raise DownloadError(
            f"Malformed URL {shown!r} ({exc}). Check it, or pass a local file path.", url=shown
        ) from None
    name = unquote(raw.rstrip("/").rsplit("/", 1)[-1])
    name = _CONTROL.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(". ").rstrip(" ")
    if not name:
        shown = redact_url(url)
        raise DownloadError(
            f"Cannot derive a file name from the URL {shown!r}. Pass an explicit destination file (dst=...).", url=shown
        )
    return _cap_length(name)


def _cap_length(name: str) -> str:
    """``name`` shortened when longer than :data:`MAX_NAME_BYTES`: a hash of the whole name replaces the middle,
    the end (suffixes, and the ``-<hex>`` hash prefix if any) is kept."""
    if len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES:
        return name
    found = _HASH_IN_NAME.search(name)
    tail = found.group(0) if found else name[name.rfind(".") :] if "." in name else ""
    tail = tail if len(tail.encode("utf-8", "surrogateescape")) <= 96 else ""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    room = MAX_NAME_BYTES - len(tail.encode("utf-8", "surrogateescape")) - len(digest) - 1
    head = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f"{head}_{digest}{tail}"


def cache_relpath(url: str) -> str:
    """Where ``url`` lives inside the cache folder, keyed on the URL without its query (no two URLs share a file).

    A name that carries a hash prefix (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``) identifies its content, so
    it stays at the top of the cache under its official name (where ``torch.hub`` puts it too). Any other name goes
    into a sub-folder named after a hash of the URL without query, fragment or credentials, so
    ``https://host/v1/model.pth`` and ``https://host/v2/model.pth`` are two files: ``<16 hex>/model.pth``.
    """
    name = url_to_filename(url)
    if hash_prefix_from_filename(name):
        return name
    key = hashlib.sha256(strip_query(url).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{key}/{name}"


def cache_path_for_url(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file for ``url`` (see :func:`cache_relpath`), always inside the cache folder."""
    root = Path(cache_dir) if cache_dir is not None else get_cache_dir()
    parts = cache_relpath(url).split("/")
    if any(p in {"", ".", ".."} or os.sep in p or (os.altsep and os.altsep in p) for p in parts):  # a guard only
        shown = redact_url(url)
        raise DownloadError(f"Refusing the cache name of {shown!r}: it would leave the cache folder.", url=shown)
    return root.joinpath(*parts)


def hash_prefix_from_filename(name: str | os.PathLike[str]) -> str | None:
    """Return the lower-case SHA-256 prefix a file name carries, or ``None``.

    The torch.hub convention puts 8 or more hex digits after the last ``-`` and before the extension:
    ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` -> ``"08c60483"``.
    """
    match = _HASH_IN_NAME.search(Path(name).name)
    return match.group(1).lower() if match else None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(actual: str, *, expected_sha256: str | None = None, hash_prefix: str | None = None) -> str | None:
    """Compare a hex digest with a full expected digest and/or a prefix; return the expected value that failed."""
    actual = actual.lower()
    if expected_sha256 and actual != expected_sha256.strip().lower():
        return expected_sha256.strip().lower()
    if hash_prefix and not actual.startswith(hash_prefix.strip().lower()):
        return hash_prefix.strip().lower()
    return None


def find_cached(filename: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the path of ``filename`` in the cache folder if it is there, else ``None``."""
    path = Path(cache_dir) if cache_dir is not None else get_cache_dir()
    candidate = path / filename
    return candidate if candidate.is_file() else None


@contextlib.contextmanager
def atomic_write(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it is fsynced and renamed onto ``dst``.

    A thin wrapper of :func:`dinov3_integration.utils.atomic.atomic_path` (the one owner of atomic writes) that
    creates the folder with a :class:`WeightsError` saying what to do if it cannot. On any exception the temporary
    file is deleted and ``dst`` is left as it was; the file gets the permissions a plain ``open`` would give.
    """
    target = Path(dst)
    ensure_dir(target.parent)
    with atomic_path(target) as tmp:
        yield tmp


def temp_path_beside(dst: Path) -> Path:
    """Deprecated thin wrapper: :func:`dinov3_integration.utils.atomic.new_temp_path` (or use :func:`atomic_write`)."""
    return new_temp_path(dst)


def commit_file(tmp: Path, dst: Path) -> None:
    """Deprecated thin wrapper: :func:`dinov3_integration.utils.atomic.commit_temp` (fsync, rename, fsync folder)."""
    commit_temp(tmp, dst)
