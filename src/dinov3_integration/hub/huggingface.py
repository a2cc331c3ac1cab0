"""Hugging Face files: ``huggingface_hub`` behind one clear error per problem, and no long wait when offline.

:func:`hf_download` goes through ``huggingface_hub`` (which honours ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and ``HF_TOKEN``) and turns its errors into
:class:`~dinov3_integration.hub.errors.WeightsError` subclasses with actionable messages.

Without ``HF_HUB_OFFLINE``, ``huggingface_hub`` retries an unreachable Hub five times (about 25-40 s) and prints a
line per retry. Instead, :func:`hub_unreachable` first opens one TCP connection to the Hub (or to the proxy that
would be used) with a short timeout; when that fails (a host name that does not resolve, a refused connection, no
route, no answer), the file is taken from the local cache if it is there and otherwise one
:class:`~dinov3_integration.hub.errors.DownloadError` says so, within seconds. The verdict is remembered for
:data:`PROBE_TTL` seconds, so the next files of the same lookup fail at once. ``huggingface_hub``'s own retry
lines are logged at DEBUG level under ``dinov3.hub`` instead of being printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.errors import (
    DownloadError,
    GatedRepoAccessError,
    RepoNotFoundError,
    WeightsError,
    WeightsNotFoundError,
)
from dinov3_integration.utils.redact import redact_text, redact_url

log = get_logger("hub")

__all__ = ["PROBE_TIMEOUT", "PROBE_TTL", "hf_cache_dir", "hf_download", "hf_endpoint", "hf_offline", "hub_unreachable"]

PROBE_TIMEOUT = 3.0
"""Seconds the reachability probe waits for a TCP connection to the Hub."""
PROBE_TTL = 30.0
"""Seconds a probe's verdict is reused."""
_HF_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download")
_probes: dict[tuple[str, int], tuple[float, str | None]] = {}


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
    unreachable = None if offline else hub_unreachable()
    try:
        with _quiet_hf():
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=folder,
                local_files_only=offline or unreachable is not None,
                token=token,
                library_name="dinov3-integration",
            )
    except Exception as exc:
        if unreachable is not None and _is_not_cached(exc):
            raise _unreachable_error(repo_id, filename, revision, folder, unreachable) from None
        translated = _translate_hf_error(exc, repo_id, filename, revision, folder, offline)
        if translated is None:
            raise
        raise translated from exc
    if unreachable is not None:
        log.debug("the Hugging Face Hub is unreachable (%s); using the cached %s", unreachable, path)
    log.debug("resolved hf://%s/%s@%s -> %s", repo_id, filename, revision or "main", path)
    return Path(path)


# --------------------------------------------------------------------------------------------------- reachability


def hf_endpoint() -> str:
    """The Hub address ``huggingface_hub`` uses (``$HF_ENDPOINT`` as read at its import, else huggingface.co)."""
    from huggingface_hub import constants

    return str(getattr(constants, "ENDPOINT", None) or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


def hub_unreachable(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the Hub cannot be reached (``"connection refused"``, ...) or ``None`` when a TCP connection opens.

    Connects to the proxy instead when one is configured for the endpoint (``HTTPS_PROXY``/``ALL_PROXY``, unless
    ``NO_PROXY`` exempts the host). The answer is cached for :data:`PROBE_TTL` seconds per address.
    """
    address = _probe_address(endpoint or hf_endpoint())
    if address is None:
        return None  # cannot tell: let huggingface_hub try
    now = time.monotonic()
    cached = _probes.get(address)
    if cached is not None and now - cached[0] < PROBE_TTL:
        return cached[1]
    reason = _connect(address, timeout)
    _probes[address] = (now, reason)
    return reason


def _probe_address(endpoint: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(endpoint)
        host, scheme = parts.hostname, parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        if not host:
            return None
        proxy = urllib.request.getproxies().get(scheme) or urllib.request.getproxies().get("all")
        if proxy and not urllib.request.proxy_bypass(host):
            proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if not proxied.hostname:
                return None
            return proxied.hostname, proxied.port or (443 if proxied.scheme == "https" else 80)
    except ValueError:
        return None
    return host, port


def _connect(address: tuple[str, int], timeout: float) -> str | None:
    try:
        with socket.create_connection(address, timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"the host name {address[0]!r} cannot be resolved ({exc.strerror or exc})"
    except ConnectionRefusedError:
        return f"connection to {address[0]}:{address[1]} refused"
    except TimeoutError:
        return f"no answer from {address[0]}:{address[1]} within {timeout:g} s"
    except OSError as exc:
        return f"{address[0]}:{address[1]}: {exc.strerror or exc}"


def _is_not_cached(exc: BaseException) -> bool:
    err = _hf_errors()
    types = tuple(err[n] for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if n in err)
    return bool(types) and isinstance(exc, types)


def _unreachable_error(repo_id: str, filename: str, revision: str | None, cache: Path, why: str) -> DownloadError:
    rev = revision or "main"
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    return DownloadError(
        f"Could not reach the Hugging Face Hub at {redact_url(hf_endpoint())} ({why}), and {filename!r} from {repo_id} "
        f"(revision {rev}) is not in the local cache {folder}. Check your network connection and proxy settings "
        "(HTTPS_PROXY), set HF_HUB_OFFLINE=1 to work offline from the cache, or pass the path of a local weights "
        "file.",
        url=f"https://huggingface.co/{repo_id}/blob/{rev}/{filename}",
    )


class _ToDebug(logging.Filter):
    """Turns huggingface_hub's retry warnings into DEBUG records of ``dinov3.hub`` (secrets redacted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("huggingface_hub: %s", redact_text(record.getMessage()))
        return False


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    quiet = _ToDebug()
    loggers = [logging.getLogger(name) for name in _HF_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


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
        return WeightsError(
            f"{repo_id!r} is not a valid Hugging Face repository id ({redact_text(str(exc))}). Use 'org/name'."
        )
    if isa("HfHubHTTPError", "OfflineModeIsEnabled") or isinstance(exc, (ConnectionError, TimeoutError)):
        return DownloadError(
            f"Could not download {filename!r} from the Hugging Face repository {repo_id}: {redact_text(str(exc))}. "
            "Check your network "
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
