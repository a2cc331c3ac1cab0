"""Downloading weights: plain URLs (official signed links, mirrors, ``file://``) and Hugging Face files.

:func:`download_url` streams to a temporary file beside the destination while hashing, verifies the SHA-256
digest, and only then renames the file into place, under a file lock so concurrent processes never corrupt it.
Transient failures (dropped connections, timeouts, truncated bodies, HTTP 5xx) are retried with exponential
back-off, resuming with an HTTP ``Range`` request when the server supports it; HTTP 4xx errors are not retried.

:func:`hf_download` goes through ``huggingface_hub`` (which honours ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` and ``HF_TOKEN``) and turns its errors into :class:`~dinov3_integration.hub.errors.WeightsError`
subclasses with actionable messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.cache import (
    check_digest,
    commit_file,
    ensure_dir,
    get_cache_dir,
    hash_prefix_from_filename,
    redact_url,
    sha256_file,
    temp_path_beside,
    url_to_filename,
)
from dinov3_integration.hub.errors import (
    DINOV3_DOWNLOAD_FORM,
    DownloadError,
    GatedRepoAccessError,
    HashMismatchError,
    HTTPStatusError,
    IncompleteDownloadError,
    LinkExpiredError,
    RepoNotFoundError,
    URLNotFoundError,
    WeightsError,
    WeightsNotFoundError,
)

log = get_logger("hub")

_CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429})
_SIGNED_QUERY_KEYS = frozenset(
    {"signature", "policy", "key-pair-id", "expires", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
)
_OFFICIAL_HOSTS = ("fbaipublicfiles.com",)
# Network failures worth another attempt. HTTPError (a URLError) is handled separately, by status code.
_TRANSIENT = (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError)


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"dinov3-integration/{version('dinov3-integration')}"
    except Exception:  # not installed (source checkout)
        return "dinov3-integration"


@dataclass
class _Transfer:
    """Progress of one download across attempts."""

    received: int = 0
    total: int | None = None
    digest: Any = field(default_factory=hashlib.sha256)

    def restart(self, fh: IO[bytes]) -> None:
        """Throw away what was received so far (the server cannot resume)."""
        fh.seek(0)
        fh.truncate()
        self.received = 0
        self.total = None
        self.digest = hashlib.sha256()


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived (retryable)."""


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
        dst: destination file, or a folder to put it in. Default: the cache folder
            (:func:`~dinov3_integration.hub.cache.get_cache_dir`) with the URL's file name. If the file already
            exists it is reused and nothing is downloaded. A ``file://`` URL with no ``dst`` is read in place.
        expected_sha256: full hex SHA-256 the file must have.
        hash_prefix: hex prefix the SHA-256 must start with. Default (``None``): the prefix carried by the file
            name (``...-08c60483.pth``, the torch.hub convention), when ``check_hash`` is true.
        check_hash: set to ``False`` to skip the file-name prefix check (for names whose ``-<hex>`` suffix is not
            a hash). A given ``expected_sha256`` or ``hash_prefix`` is always checked.
        progress: show a tqdm progress bar on stderr (only when it is a terminal).
        retries: extra attempts after a transient failure (dropped connection, timeout, HTTP 5xx/408/429).
        backoff: seconds before the first retry; doubled for each further retry.
        timeout: socket timeout in seconds for connecting and for each read.

    Raises:
        LinkExpiredError: HTTP 403 on a signed (official) link.
        URLNotFoundError: HTTP 404/410.
        HTTPStatusError: another HTTP error.
        HashMismatchError: the digest is wrong (the download is deleted).
        IncompleteDownloadError: the body kept arriving truncated.
        DownloadError: other network failures after all retries.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {"http", "https", "file"}:
        raise WeightsError(
            f"Unsupported URL {redact_url(url)!r}: only http://, https:// and file:// URLs can be downloaded. "
            "For a local file, pass its path instead of a URL."
        )
    if hash_prefix is None and check_hash:
        hash_prefix = hash_prefix_from_filename(url_to_filename(url))
    if scheme == "file" and dst is None:
        return _use_local_file(url, expected_sha256=expected_sha256, hash_prefix=hash_prefix)

    target = _resolve_dst(url, dst)
    if target.is_file():
        return _use_cached(target, expected_sha256=expected_sha256)
    ensure_dir(target.parent)
    with _locked(target):
        if target.is_file():  # another process finished this download while we waited for the lock
            return _use_cached(target, expected_sha256=expected_sha256)
        _download_to(url, target, expected_sha256, hash_prefix, progress, retries, backoff, timeout)
    log.debug("downloaded %s -> %s", redact_url(url), target)
    return target


def is_signed_url(url: str) -> bool:
    """True for links carrying a signature in their query string (CloudFront/S3 style), which expire."""
    keys = {key.lower() for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    return bool(keys & _SIGNED_QUERY_KEYS)


# --------------------------------------------------------------------------------------------------- URL helpers


def _resolve_dst(url: str, dst: str | os.PathLike[str] | None) -> Path:
    if dst is None:
        return get_cache_dir() / url_to_filename(url)
    path = Path(dst).expanduser()
    return path / url_to_filename(url) if path.is_dir() else path


def _local_path_from_file_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in {"", "localhost"}:
        raise WeightsError(f"Cannot read {url!r}: file:// URLs must point to this machine (file:///path/to/file).")
    return Path(urllib.request.url2pathname(parts.path))


def _use_local_file(url: str, *, expected_sha256: str | None, hash_prefix: str | None) -> Path:
    """Verify (when a hash is known) and return a ``file://`` URL's file, which is read in place, not copied."""
    path = _local_path_from_file_url(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"No such file: {path} (from {url!r}). Check the path, or pass the file's path directly.",
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


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold ``<target>.lock`` so only one process downloads ``target`` at a time."""
    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.debug("another process is downloading %s; waiting for it", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
    """Download into a temporary file beside ``target``, verify it, then rename it; delete it on any failure."""
    tmp = temp_path_beside(target)
    try:
        with open(tmp, "wb") as fh, _progress_bar(target.name, progress) as bar:
            state = _fetch_with_retries(url, fh, bar, retries=retries, backoff=backoff, timeout=timeout)
        _verify_download(url, state.digest.hexdigest(), expected_sha256, hash_prefix)
        commit_file(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _progress_bar(name: str, progress: bool) -> tqdm:
    # disable=None lets tqdm switch itself off when stderr is not a terminal.
    return tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=None if progress else True)


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


def _fetch_with_retries(
    url: str, fh: IO[bytes], bar: tqdm, *, retries: int, backoff: float, timeout: float
) -> _Transfer:
    state = _Transfer()
    last: BaseException | None = None
    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log.debug("retrying %s in %.2fs (attempt %d/%d): %s", redact_url(url), delay, attempt + 1, attempts, last)
            time.sleep(delay)
        try:
            _fetch_once(url, fh, bar, state, timeout)
            return state
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and state.received:  # our Range is past the end: start over
                state.restart(fh)
                bar.reset()
            elif not _is_retryable_status(exc.code):
                raise _http_status_error(url, exc.code, exc.reason) from None
            last = exc
        except (_Truncated, *_TRANSIENT) as exc:
            last = exc
    raise _final_error(url, last, state, attempts)


def _fetch_once(url: str, fh: IO[bytes], bar: tqdm, state: _Transfer, timeout: float) -> None:
    """One attempt: (re)start or resume the transfer and stream the body into ``fh``."""
    headers = {"User-Agent": _user_agent()}
    resuming = state.received > 0 and urlsplit(url).scheme.lower() in {"http", "https"}
    if resuming:
        headers["Range"] = f"bytes={state.received}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if resuming and _resume_offset(resp) == state.received:
            log.debug("resuming %s at byte %d", redact_url(url), state.received)
        else:
            if state.received:
                log.debug("server cannot resume %s; starting over", redact_url(url))
                state.restart(fh)
                bar.reset()
            state.total = _int_header(resp, "Content-Length")
        bar.total = state.total
        bar.refresh()
        _stream(resp, fh, bar, state)
    if state.total is not None and state.received < state.total:
        raise _Truncated(f"received {state.received} of {state.total} bytes")


def _stream(resp: Any, fh: IO[bytes], bar: tqdm, state: _Transfer) -> None:
    while True:
        chunk = resp.read(_CHUNK)
        if not chunk:
            return
        try:
            fh.write(chunk)
        except OSError as exc:  # disk full, quota, ...: not a network problem, do not retry
            raise WeightsError(
                f"Cannot write the download to {fh.name}: {exc.strerror or exc}. Free some disk space there or "
                "choose another folder (set $DINOV3_CACHE or pass dst=...)."
            ) from exc
        state.digest.update(chunk)
        state.received += len(chunk)
        bar.update(len(chunk))


def _int_header(resp: Any, name: str) -> int | None:
    value = resp.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _resume_offset(resp: Any) -> int | None:
    """Start offset of a ``206 Partial Content`` answer (and set nothing else), or ``None`` if it is not one."""
    if getattr(resp, "status", None) != 206:
        return None
    content_range = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        unit, _, spec = content_range.partition(" ")
        start = int(spec.split("-", 1)[0])
    except ValueError:
        return None
    return start if unit == "bytes" else None


def _is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


def _is_official_link(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return is_signed_url(url) or any(host == h or host.endswith("." + h) for h in _OFFICIAL_HOSTS)


def _http_status_error(url: str, status: int, reason: object) -> HTTPStatusError:
    shown = redact_url(url)
    if status in {401, 403} and _is_official_link(url):
        return LinkExpiredError(
            f"HTTP {status} (access denied) for {shown}: the signed download link has probably expired (the links "
            f"Meta e-mails for DINOv3 are only valid for a limited time). Request a fresh link from Meta's DINOv3 "
            f"download form ({DINOV3_DOWNLOAD_FORM}) and use the new URL, or download the file yourself and pass "
            "its local path.",
            url=shown,
            status=status,
        )
    if status in {404, 410}:
        return URLNotFoundError(
            f"HTTP {status}: nothing found at {shown}. Check the URL for typos, or pass a local file path instead.",
            url=shown,
            status=status,
        )
    if status in {401, 403}:
        return HTTPStatusError(
            f"HTTP {status} (access denied) for {shown}. Check that the URL is right and that you are allowed to "
            "download it (log in / use a fresh link), or download it yourself and pass its local path.",
            url=shown,
            status=status,
        )
    return HTTPStatusError(
        f"HTTP {status} {reason} for {shown}. Check the URL, or download the file yourself and pass its local path.",
        url=shown,
        status=status,
    )


def _final_error(url: str, last: BaseException | None, state: _Transfer, attempts: int) -> DownloadError:
    shown = redact_url(url)
    if isinstance(last, urllib.error.HTTPError):
        return HTTPStatusError(
            f"HTTP {last.code} {last.reason} for {shown}, {attempts} attempt(s). The server seems to be having "
            "trouble; try again later, or download the file yourself and pass its local path.",
            url=shown,
            status=last.code,
        )
    if state.total is not None and isinstance(last, (_Truncated, http.client.IncompleteRead, ConnectionError)):
        return IncompleteDownloadError(
            f"Download of {shown} was cut off {attempts} time(s); the last attempt received {state.received} of "
            f"{state.total} bytes. Nothing was saved. Check your connection and try again, or download the file with "
            "a resumable tool (e.g. `wget -c`) and pass its local path.",
            url=shown,
            received=state.received,
            expected=state.total,
        )
    reason = getattr(last, "reason", None) or last
    return DownloadError(
        f"Could not download {shown} after {attempts} attempt(s): {reason}. Check your network connection and "
        "proxy settings (HTTPS_PROXY), or download the file elsewhere and pass its local path.",
        url=shown,
    )


# --------------------------------------------------------------------------------------------------- Hugging Face


def hf_offline() -> bool:
    """True when Hugging Face offline mode is on (``HF_HUB_OFFLINE``, read now as well as at import time)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face hub cache folder in use: ``cache_dir``, ``$HF_HUB_CACHE`` (read now), or the library default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_download(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """Fetch ``filename`` from the Hugging Face model repository ``repo_id`` (cached) and return its local path.

    ``local_files_only`` defaults to the offline mode (:func:`hf_offline`); ``token`` defaults to the logged-in
    token or ``$HF_TOKEN``. Errors become :class:`GatedRepoAccessError`, :class:`WeightsNotFoundError` (with the
    cache folder that was searched) or :class:`DownloadError`.
    """
    from huggingface_hub import hf_hub_download

    offline = hf_offline() if local_files_only is None else local_files_only
    folder = hf_cache_dir(cache_dir)
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=folder,
            local_files_only=offline,
            token=token,
            library_name="dinov3-integration",
        )
    except Exception as exc:
        translated = _translate_hf_error(exc, repo_id, filename, revision, folder, offline)
        if translated is None:
            raise
        raise translated from exc
    log.debug("resolved hf://%s/%s@%s -> %s", repo_id, filename, revision or "main", path)
    return Path(path)


def _hf_errors() -> dict[str, type[BaseException]]:
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils
        from huggingface_hub import utils as hf_errors
    names = [
        "GatedRepoError",
        "LocalEntryNotFoundError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
        "HfHubHTTPError",
        "HFValidationError",
        "OfflineModeIsEnabled",
    ]
    return {name: getattr(hf_errors, name) for name in names if hasattr(hf_errors, name)}


def _http_status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _translate_hf_error(
    exc: BaseException, repo_id: str, filename: str, revision: str | None, cache: Path, offline: bool
) -> WeightsError | None:
    """Map a huggingface_hub exception to a WeightsError with an actionable message (``None``: unknown error)."""
    err = _hf_errors()
    rev = revision or "main"
    page = f"https://huggingface.co/{repo_id}"
    login = "log in with `hf auth login` (or set HF_TOKEN to a token of an account that has access)"

    def isa(*names: str) -> bool:
        types = tuple(err[n] for n in names if n in err)
        return bool(types) and isinstance(exc, types)

    if isa("GatedRepoError") or (isa("HfHubHTTPError") and _http_status_of(exc) in {401, 403}):
        return GatedRepoAccessError(
            f"Access to the Hugging Face repository {repo_id} was refused: the repository is gated. Accept the "
            f"licence at {page} and {login}, then try again."
        )
    if isa("LocalEntryNotFoundError"):
        return _hf_not_cached_error(repo_id, filename, rev, cache, offline)
    if isa("RepositoryNotFoundError"):
        return RepoNotFoundError(
            f"Hugging Face repository {repo_id} not found, or it is private/gated and no valid token was sent. Check "
            f"the id (DINOv3 repositories look like facebook/dinov3-vitl16-pretrain-lvd1689m); if it is gated, "
            f"accept the licence at {page} and {login}.",
            searched=[page],
        )
    if isa("RevisionNotFoundError"):
        return RepoNotFoundError(
            f"Revision {rev!r} does not exist in the Hugging Face repository {repo_id}. Use a branch, tag or commit "
            f"listed at {page}/tree/main (or omit the revision).",
            searched=[f"{page}@{rev}"],
        )
    if isa("EntryNotFoundError"):
        return WeightsNotFoundError(
            f"The Hugging Face repository {repo_id} (revision {rev}) has no file {filename!r}. See the files at "
            f"{page}/tree/{rev} and pick the weights file from there.",
            searched=[f"{page}/blob/{rev}/{filename}"],
        )
    if isa("HFValidationError"):
        return WeightsError(f"{repo_id!r} is not a valid Hugging Face repository id ({exc}). Use 'org/name'.")
    if isa("HfHubHTTPError", "OfflineModeIsEnabled") or isinstance(exc, (ConnectionError, TimeoutError)):
        return DownloadError(
            f"Could not download {filename!r} from the Hugging Face repository {repo_id}: {exc}. Check your network "
            "connection, or run offline (HF_HUB_OFFLINE=1) with the file already in the cache.",
            url=f"{page}/blob/{rev}/{filename}",
        )
    return None


def _hf_not_cached_error(repo_id: str, filename: str, rev: str, cache: Path, offline: bool) -> WeightsError:
    """Offline: nothing cached (a WeightsNotFoundError listing the cache searched). Online: the Hub could not be
    reached, a network problem (a DownloadError, so callers do not try more files and wait for more timeouts)."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    place = f"Hugging Face cache {folder} (file {filename!r}, revision {rev})"
    if not offline:
        return DownloadError(
            f"Could not reach the Hugging Face Hub to get {filename!r} from {repo_id}, and it is not in the local "
            f"cache ({place}). Check your network connection and proxy settings (HTTPS_PROXY), or pass the path of "
            "a local weights file.",
            url=f"https://huggingface.co/{repo_id}/blob/{rev}/{filename}",
        )
    return WeightsNotFoundError(
        f"{filename!r} from the Hugging Face repository {repo_id} is not in the local cache and Hugging Face offline "
        f"mode is on (HF_HUB_OFFLINE=1 or local_files_only), so the Hub was not contacted. Searched: {place}. "
        f"Download it once while online (e.g. `hf download {repo_id} {filename}`), point HF_HUB_CACHE at a cache "
        "that has it, or pass the path of a local weights file.",
        searched=[place],
    )
