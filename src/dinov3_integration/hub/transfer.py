"""One URL's bytes into an open file: attempts, retries, ``Range`` resumption, and the errors they end in.

:func:`fetch` streams ``http(s)://`` or ``file://`` bodies into a file while hashing them. Transient failures
(dropped connections, timeouts, truncated bodies, refused connections, HTTP 5xx/408/425/429) are retried with
exponential back-off, resuming with an HTTP ``Range`` request when the server supports it; HTTP 4xx answers, host
names that do not resolve, malformed URLs and local write errors are not. Every message and log line passes
:func:`~dinov3_integration.utils.redact.redact_text`, so a signed link's query never leaves the process, and no
exception of ``urllib``/``http.client`` (whose text may hold the URL) is chained to the errors raised here.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from dinov3_integration._logging import get_logger
from dinov3_integration.hub.errors import (
    DINOV3_DOWNLOAD_FORM,
    DownloadError,
    HTTPStatusError,
    IncompleteDownloadError,
    LinkExpiredError,
    URLNotFoundError,
    WeightsError,
)
from dinov3_integration.utils.redact import redact_text, redact_url

log = get_logger("hub")

__all__ = ["Transfer", "fetch", "is_signed_url"]

_CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429})
_SIGNED_QUERY_KEYS = frozenset(
    {"signature", "policy", "key-pair-id", "expires", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
)
_OFFICIAL_HOSTS = ("fbaipublicfiles.com",)
# Network failures worth another attempt. HTTPError (a URLError) is handled separately, by status code; a
# URLError whose reason is a DNS failure, and http.client.InvalidURL, are permanent (see _is_permanent).
_TRANSIENT = (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError)


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"dinov3-integration/{version('dinov3-integration')}"
    except Exception:  # not installed (source checkout)
        return "dinov3-integration"


@dataclass
class Transfer:
    """Progress of one download across attempts (and across processes, when a partial file is resumed)."""

    received: int = 0
    total: int | None = None
    content_type: str = ""
    digest: Any = field(default_factory=hashlib.sha256)

    def seed(self, fh: IO[bytes]) -> None:
        """Count (and hash) what a partial file already holds, to resume after it; leave ``fh`` at its end."""
        fh.seek(0)
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            self.digest.update(chunk)
            self.received += len(chunk)

    def restart(self, fh: IO[bytes]) -> None:
        """Throw away what was received so far (the server cannot resume)."""
        fh.seek(0)
        fh.truncate()
        self.received = 0
        self.total = None
        self.digest = hashlib.sha256()


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived (retryable)."""


def is_signed_url(url: str) -> bool:
    """True for links carrying a signature in their query string (CloudFront/S3 style), which expire."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    keys = {key.lower() for key, _ in parse_qsl(query, keep_blank_values=True)}
    return bool(keys & _SIGNED_QUERY_KEYS)


# --------------------------------------------------------------------------------------------------- attempts


def fetch(url: str, fh: IO[bytes], bar: Any, state: Transfer, *, retries: int, backoff: float, timeout: float) -> None:
    """Stream ``url`` into ``fh`` (after ``state.received`` bytes already there), retrying transient failures.

    Raises the library's :class:`DownloadError` family only (never a ``urllib``/``http.client`` exception).
    """
    last: BaseException | None = None
    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            shown = redact_text(str(last))
            log.debug("retrying %s in %.2fs (attempt %d/%d): %s", redact_url(url), delay, attempt + 1, attempts, shown)
            time.sleep(delay)
        try:
            _fetch_once(url, fh, bar, state, timeout)
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and state.received:  # our Range is past the end: start over
                state.restart(fh)
                bar.reset()
            elif not _is_retryable_status(exc.code):
                raise http_status_error(url, exc.code, exc.reason) from None
            last = exc
        except WeightsError:
            raise
        except (_Truncated, *_TRANSIENT, ValueError) as exc:  # UnicodeError is a ValueError
            if _is_permanent(exc):
                raise _final_error(url, exc, state, attempt + 1) from None
            last = exc
    raise _final_error(url, last, state, attempts) from None


def _is_permanent(exc: BaseException) -> bool:
    """A failure another attempt cannot fix: a host name that does not resolve, no network, a malformed URL."""
    if isinstance(exc, (http.client.InvalidURL, ValueError)):
        return True
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.gaierror, ValueError)):
        return True
    return isinstance(reason, OSError) and reason.errno == errno.ENETUNREACH


def _fetch_once(url: str, fh: IO[bytes], bar: Any, state: Transfer, timeout: float) -> None:
    """One attempt: (re)start or resume the transfer and stream the body into ``fh``."""
    headers = {"User-Agent": _user_agent()}
    resuming = state.received > 0 and urlsplit(url).scheme.lower() in {"http", "https"}
    if resuming:
        headers["Range"] = f"bytes={state.received}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        state.content_type = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        length = _int_header(resp, "Content-Length")
        if resuming and _resume_offset(resp) == state.received:
            log.debug("resuming %s at byte %d", redact_url(url), state.received)
            state.total = _range_total(resp) or (state.received + length if length is not None else None)
        else:
            if state.received:
                log.debug("server cannot resume %s; starting over", redact_url(url))
                state.restart(fh)
                bar.reset()
            state.total = length
        bar.total = state.total
        bar.n = state.received
        bar.refresh()
        _stream(resp, fh, bar, state)
    if state.total is not None and state.received < state.total:
        raise _Truncated(f"received {state.received} of {state.total} bytes")


def _stream(resp: Any, fh: IO[bytes], bar: Any, state: Transfer) -> None:
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
            ) from None
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


def _range_total(resp: Any) -> int | None:
    """The full length in a ``Content-Range: bytes a-b/N`` header (``None`` for ``*`` or none)."""
    total = resp.headers.get("Content-Range", "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


# --------------------------------------------------------------------------------------------------- errors


def _is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


def _is_official_link(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return is_signed_url(url) or any(host == h or host.endswith("." + h) for h in _OFFICIAL_HOSTS)


def http_status_error(url: str, status: int, reason: object) -> HTTPStatusError:
    """The error for an HTTP error status that is not retried (or no longer)."""
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
        f"HTTP {status} {redact_text(str(reason))} for {shown}. Check the URL, or download the file yourself and "
        "pass its local path.",
        url=shown,
        status=status,
    )


def _final_error(url: str, last: BaseException | None, state: Transfer, attempts: int) -> DownloadError:
    shown = redact_url(url)
    if isinstance(last, urllib.error.HTTPError):
        return HTTPStatusError(
            f"HTTP {last.code} {redact_text(str(last.reason))} for {shown}, {attempts} attempt(s). The server seems "
            "to be having trouble; try again later, or download the file yourself and pass its local path.",
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
    if isinstance(reason, socket.gaierror):
        host = urlsplit(url).hostname or "?"
        return DownloadError(
            f"Could not download {shown}: the host name {host!r} cannot be resolved ({reason.strerror or reason}). "
            "Check the URL and your network connection (DNS, proxy settings such as HTTPS_PROXY), or download the "
            "file elsewhere and pass its local path.",
            url=shown,
        )
    if isinstance(last, (http.client.InvalidURL, ValueError)):
        return DownloadError(
            f"Cannot download {shown}: the URL is malformed ({redact_text(str(last))}). Check it (spaces must be "
            "written %20), or pass a local file path.",
            url=shown,
        )
    return DownloadError(
        f"Could not download {shown} after {attempts} attempt(s): {redact_text(str(reason))}. Check your network "
        "connection and proxy settings (HTTPS_PROXY), or download the file elsewhere and pass its local path.",
        url=shown,
    )
