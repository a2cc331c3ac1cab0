"""Downloading weights: plain URLs (official signed links, mirrors, ``file://``) and Hugging Face files.

:func:`download_url` streams to a partial file beside the destination (``.<hash>.part``, see
:func:`~dinov3_integration.utils.atomic.partial_path`) while hashing, checks that every announced byte arrived,
that the body is not an HTML/XML page, and the SHA-256 digest, and only then renames the file into place, under a
per-file lock (:mod:`.lock`, removed afterwards) so concurrent processes never corrupt it. A partial file left
by a killed process is resumed with an HTTP ``Range`` request when the file's hash is known (so the result is
verified), and removed otherwise. Retries and resumption within one call: :mod:`.transfer`.

Cache names come from :func:`~dinov3_integration.hub.cache.cache_path_for_url`: safe (never outside the cache
folder) and keyed on the URL without its query. A signed link's query is never written to a file name, a log
line, a progress bar or an error message.

:func:`hf_download` (in :mod:`.huggingface`, re-exported here) goes through ``huggingface_hub``.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.cache import (
    cache_path_for_url,
    check_digest,
    ensure_dir,
    hash_prefix_from_filename,
    sha256_file,
    url_to_filename,
)
from dinov3_integration.hub.errors import (
    DownloadError,
    HashMismatchError,
    IncompleteDownloadError,
    WeightsNotFoundError,
)
from dinov3_integration.hub.huggingface import _hf_errors, hf_cache_dir, hf_download, hf_offline
from dinov3_integration.hub.lock import file_lock
from dinov3_integration.hub.transfer import Transfer, fetch, is_signed_url
from dinov3_integration.utils.atomic import commit_temp, partial_path, remove_stale_temps
from dinov3_integration.utils.redact import redact_url

log = get_logger("hub")

__all__ = ["download_url", "hf_cache_dir", "hf_download", "hf_offline", "is_signed_url"]
_ = _hf_errors  # re-exported for callers of the old location

_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/xml", "application/xml"})
_HTML_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--", b"<error")
_OLD_PART = re.compile(r"\.[0-9a-f]{8}\.part$")  # `.<name>.<8 hex>.part`, the partial files of earlier versions


# --------------------------------------------------------------------------------------------------- public API


def download_url(
    url: str,
    dst: str | os.PathLike[str] | None = None,
    *,
    expected_sha256: str | None = None,
    hash_prefix: str | None = None,
    check_hash: bool = True,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` (``http``, ``https`` or ``file``) and return the local path.

    Args:
        url: the URL; a signed link's query string is never used in file names, logs or error messages.
        dst: destination file, or a folder to put it in (under the URL's file name). Default: the cache folder
            (:func:`~dinov3_integration.hub.cache.get_cache_dir`), at
            :func:`~dinov3_integration.hub.cache.cache_path_for_url` (the official name for names carrying a hash
            prefix, else ``<hash of the URL>/<name>``). If the file already exists it is reused and nothing is
            downloaded. A ``file://`` URL with no ``dst`` is read in place.
        expected_sha256: full hex SHA-256 the file must have.
        hash_prefix: hex prefix the SHA-256 must start with. Default (``None``): the prefix carried by the file
            name (``...-08c60483.pth``, the torch.hub convention), when ``check_hash`` is true.
        check_hash: set to ``False`` to skip the file-name prefix check (for names whose ``-<hex>`` suffix is not
            a hash). A given ``expected_sha256`` or ``hash_prefix`` is always checked.
        progress: show a tqdm progress bar on stderr (only when it is a terminal), and say so on stderr when
            waiting for another process that downloads the same file.
        retries: extra attempts after a transient failure (dropped connection, timeout, HTTP 5xx/408/429).
        backoff: seconds before the first retry; doubled for each further retry.
        timeout: socket timeout in seconds for connecting and for each read.

    Raises:
        LinkExpiredError: HTTP 403 on a signed (official) link.
        URLNotFoundError: HTTP 404/410.
        HTTPStatusError: another HTTP error.
        HashMismatchError: the digest is wrong (the download is deleted).
        IncompleteDownloadError: the body kept arriving truncated.
        DownloadError: a malformed URL, an HTML page instead of the file, other network failures after all retries.
    """
    scheme = _check_url(url)
    if hash_prefix is None and check_hash:
        hash_prefix = hash_prefix_from_filename(url_to_filename(url))
    if scheme == "file" and dst is None:
        return _use_local_file(url, expected_sha256=expected_sha256, hash_prefix=hash_prefix)

    target = _resolve_dst(url, dst)
    if target.is_file():
        return _use_cached(target, expected_sha256=expected_sha256)
    ensure_dir(target.parent)
    with file_lock(target, announce=progress):
        if target.is_file():  # another process finished this download while we waited for the lock
            return _use_cached(target, expected_sha256=expected_sha256)
        _download_to(url, target, expected_sha256, hash_prefix, progress, retries, backoff, timeout)
    log.debug("downloaded %s -> %s", redact_url(url), target)
    return target


# --------------------------------------------------------------------------------------------------- URL helpers


def _check_url(url: str) -> str:
    """The URL's scheme (``http``, ``https`` or ``file``); a :class:`DownloadError` for anything unusable."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise DownloadError(
            f"Malformed URL {shown!r} ({exc}). Check it, or pass a local file path.", url=shown
        ) from None
    if scheme not in {"http", "https", "file"}:
        raise DownloadError(
            f"Unsupported URL {shown!r}: only http://, https:// and file:// URLs can be downloaded. "
            "For a local file, pass its path instead of a URL.",
            url=shown,
        )
    if _BAD_URL_CHARS.search(url):
        raise DownloadError(
            f"The URL {shown!r} contains a space or a control character. Write spaces as %20 (copy the link "
            "exactly as given, without line breaks), or pass a local file path.",
            url=shown,
        )
    if scheme != "file":
        _check_host(host, shown)
    return scheme


def _check_host(host: str | None, shown: str) -> None:
    try:
        if not host:
            raise ValueError("no host")
        host.encode("idna")
    except (UnicodeError, ValueError):
        raise DownloadError(
            f"The URL {shown!r} has no valid host name ({host!r}). If you copied an example URL (such as the README's "
            "placeholder), replace it with the download link Meta e-mailed you, or pass the path of a local "
            "weights file.",
            url=shown,
        ) from None


def _resolve_dst(url: str, dst: str | os.PathLike[str] | None) -> Path:
    if dst is None:
        return cache_path_for_url(url)
    path = Path(dst).expanduser()
    return path / url_to_filename(url) if path.is_dir() else path


def _local_path_from_file_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in {"", "localhost"}:
        raise DownloadError(
            f"Cannot read {redact_url(url)!r}: file:// URLs must point to this machine (file:///path/to/file).",
            url=redact_url(url),
        )
    return Path(urllib.request.url2pathname(parts.path))


def _use_local_file(url: str, *, expected_sha256: str | None, hash_prefix: str | None) -> Path:
    """Verify (when a hash is known) and return a ``file://`` URL's file, which is read in place, not copied."""
    path = _local_path_from_file_url(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"No such file: {path} (from {redact_url(url)!r}). Check the path, or pass the file's path directly.",
            searched=[str(path)],
        )
    if expected_sha256 or hash_prefix:
        _verify_existing(path, expected_sha256=expected_sha256, hash_prefix=hash_prefix)
    log.debug("using local file %s", path)
    return path


def _use_cached(path: Path, *, expected_sha256: str | None) -> Path:
    """Return an already present file; a full digest given by the caller is checked (file-name prefixes are not)."""
    if expected_sha256:
        _verify_existing(path, expected_sha256=expected_sha256, hash_prefix=None)
    log.debug("using cached file %s", path)
    return path


def _verify_existing(path: Path, *, expected_sha256: str | None, hash_prefix: str | None) -> None:
    actual = sha256_file(path)
    expected = check_digest(actual, expected_sha256=expected_sha256, hash_prefix=hash_prefix)
    if expected is not None:
        raise HashMismatchError(
            f"SHA-256 mismatch for existing file {path}: expected {expected}, got {actual}. The file was left "
            "untouched. If it is damaged or a different version, delete it and download it again; if its name "
            "merely ends in '-<hex>' without being a hash, pass check_hash=False.",
            expected=expected,
            actual=actual,
            path=str(path),
        )


# --------------------------------------------------------------------------------------------------- downloading


def _download_to(
    url: str,
    target: Path,
    expected_sha256: str | None,
    hash_prefix: str | None,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> None:
    """Download into the partial file beside ``target``, check it, then rename it; delete it on failure.

    Called with ``target``'s lock held. A partial file from a killed run is resumed when the result will be
    verified against a hash, removed otherwise; an interrupted (Ctrl-C) verified download keeps it for next time.
    """
    _remove_leftovers(target)
    verified = bool(expected_sha256 or hash_prefix) and urlsplit(url).scheme.lower() in {"http", "https"}
    part = partial_path(target)
    state = Transfer()
    keep = False
    try:
        with open(part, "r+b") as fh, _progress_bar(target.name, progress) as bar:
            if verified:
                state.seed(fh)
                if state.received:
                    log.info("resuming the partial download %s at byte %d", part, state.received)
            else:
                fh.truncate()
            fetch(url, fh, bar, state, retries=retries, backoff=backoff, timeout=timeout)
        _check_complete(url, part, state)
        _check_not_a_page(url, part, state.content_type)
        _verify_download(url, state.digest.hexdigest(), expected_sha256, hash_prefix)
        commit_temp(part, target)
    except KeyboardInterrupt:
        keep = verified
        raise
    finally:
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _remove_leftovers(target: Path) -> None:
    """Remove what killed writers of ``target`` left: random temporaries, and earlier versions' partial files."""
    removed = remove_stale_temps(target)
    prefix = f".{target.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            tail = entry.name[len(prefix) - 1 :]
            if entry.name.startswith(prefix) and _OLD_PART.fullmatch(tail) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    if removed:
        log.debug("removed %d stale temporary file(s) of %s", removed, target)


def _progress_bar(name: str, progress: bool) -> tqdm:
    # disable=None lets tqdm switch itself off when stderr is not a terminal. The name never holds a query.
    return tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=None if progress else True)


def _check_complete(url: str, part: Path, state: Transfer) -> None:
    """Every byte the server announced arrived (checked on disk too), and no more: else nothing is committed."""
    size = part.stat().st_size
    if state.total is None or (size == state.total == state.received):
        return
    shown = redact_url(url)
    raise IncompleteDownloadError(
        f"Download of {shown} is incomplete: the server announced {state.total} bytes, {size} arrived. Nothing was "
        "saved. Try again, or download the file with a resumable tool (e.g. `wget -c`) and pass its local path.",
        url=shown,
        received=size,
        expected=state.total,
    )


def _check_not_a_page(url: str, part: Path, content_type: str) -> None:
    """Refuse an HTML/XML page (a login, error or expired-link page) in place of the file."""
    with open(part, "rb") as fh:
        head = fh.read(64).lstrip().lower()
    if content_type not in _HTML_TYPES and not head.startswith(_HTML_STARTS):
        return
    shown = redact_url(url)
    raise DownloadError(
        f"{shown} answered with a web page ({content_type or 'HTML/XML'}), not a weights file: most likely an "
        "expired or incomplete signed link, or a page that needs a login. Nothing was saved. Use the direct "
        "download link (for DINOv3, a fresh one from Meta's download form), or download the file yourself and "
        "pass its local path.",
        url=shown,
    )


def _verify_download(url: str, actual: str, expected_sha256: str | None, hash_prefix: str | None) -> None:
    expected = check_digest(actual, expected_sha256=expected_sha256, hash_prefix=hash_prefix)
    if expected is None:
        return
    origin = "given by the caller" if expected == (expected_sha256 or "").lower() else "from the file name"
    raise HashMismatchError(
        f"SHA-256 mismatch for {redact_url(url)}: expected {expected} ({origin}), got {actual}. The downloaded file "
        "was deleted. Download it again; if the mismatch persists the link serves a different or damaged file "
        "(request a fresh link or check the expected hash).",
        expected=expected,
        actual=actual,
    )
