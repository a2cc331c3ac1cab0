"""The weights cache folder, cache file names, hashing and atomic file writes.

The cache is ``$DINOV3_CACHE`` when set, otherwise ``<torch hub dir>/checkpoints`` (``torch.hub.get_dir()``, which
honours ``$TORCH_HOME``, ``$XDG_CACHE_HOME`` and ``torch.hub.set_dir``), so official ``.pth`` files that users
already downloaded with ``torch.hub`` are found without a second download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.errors import WeightsError

log = get_logger("hub")

CACHE_ENV = "DINOV3_CACHE"
"""Environment variable overriding the cache folder."""

_HASH_IN_NAME = re.compile(r"-([0-9a-fA-F]{8,64})((?:\.[A-Za-z0-9]+)+)$")
_CHUNK = 1 << 20


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
    """Return the cache file name for ``url``: the last path component, without query string or fragment.

    Signed links keep their signature in the query string, so
    ``https://x/dinov3_vits16_pretrain_lvd1689m-08c60483.pth?Policy=...&Signature=...`` becomes
    ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` (the name ``torch.hub`` uses too).
    """
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in {".", ".."}:
        raise WeightsError(
            f"Cannot derive a file name from the URL {redact_url(url)!r}. Pass an explicit destination file (dst=...)."
        )
    return name


def redact_url(url: str) -> str:
    """Return ``url`` without its query string and fragment, which may hold a signature, for logs and errors."""
    parts = urlsplit(url)
    if not parts.query and not parts.fragment:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + "?<query removed>"


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


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table to disk so a rename survives a crash (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path_beside(dst: Path) -> Path:
    """Create and return an empty, uniquely named ``.<dst name>.<random>.part`` file in ``dst``'s folder."""
    for _ in range(100):
        candidate = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.part"
        try:
            # 0o666 filtered by the umask, like any normally created file (mkstemp would force 0o600).
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise WeightsError(f"Could not create a temporary file in {dst.parent}; remove stale '.part' files there.")


def commit_file(tmp: Path, dst: Path) -> None:
    """fsync ``tmp`` and atomically rename it to ``dst``."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def atomic_write(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it is fsynced and renamed onto ``dst``.

    On any exception the temporary file is deleted and ``dst`` is left as it was, so no half-written file ever
    appears under the final name.
    """
    target = Path(dst)
    ensure_dir(target.parent)
    tmp = temp_path_beside(target)
    try:
        yield tmp
        commit_file(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
