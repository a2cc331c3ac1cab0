"""Exceptions raised by the weights hub.

Every error derives from :class:`WeightsError` (itself a :class:`RuntimeError`), so callers can catch one class.
Each message says what went wrong *and* what to do about it.
"""

from __future__ import annotations

DINOV3_DOWNLOAD_FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
"""Meta's request form; it e-mails signed download links that expire after a while."""


class WeightsError(RuntimeError):
    """Base class of every error raised while finding, downloading, verifying or reading weights."""


class DownloadError(WeightsError):
    """A download failed (network error, server error) even after retrying."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message, url=url)
        self.status = status


class LinkExpiredError(HTTPStatusError):
    """HTTP 403 on a signed download link: the link has most likely expired."""


class IncompleteDownloadError(DownloadError):
    """The connection kept ending before the whole file arrived."""

    def __init__(self, message: str, *, url: str | None = None, received: int = 0, expected: int | None = None) -> None:
        super().__init__(message, url=url)
        self.received = received
        self.expected = expected


class HashMismatchError(WeightsError):
    """A file's SHA-256 digest differs from the expected one."""

    def __init__(self, message: str, *, expected: str, actual: str, path: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
        self.path = path


class WeightsNotFoundError(WeightsError):
    """No weights were found; ``searched`` lists every place that was looked at."""

    def __init__(self, message: str, *, searched: list[str] | None = None) -> None:
        super().__init__(message)
        self.searched = list(searched or [])


class RepoNotFoundError(WeightsNotFoundError):
    """A Hugging Face repository or revision does not exist (as opposed to a missing file in it)."""


class URLNotFoundError(HTTPStatusError, WeightsNotFoundError):
    """HTTP 404/410: nothing is published at this URL."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        HTTPStatusError.__init__(self, message, url=url, status=status)
        self.searched = [url] if url else []


class GatedRepoAccessError(WeightsError):
    """A Hugging Face repository refused access (gated licence not accepted, or no/invalid token)."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint needs to run arbitrary code to load, so it was refused."""


class WeightsMismatchError(WeightsError):
    """Weights do not fit the model (missing or unexpected tensors, wrong shapes): usually another model size."""


class CheckpointFormatError(WeightsError, ValueError):
    """A file cannot be read as a checkpoint (damaged, truncated, unsupported or not a state dict), or a state
    dict's layout is not one of the official, Hugging Face or timm layouts."""
