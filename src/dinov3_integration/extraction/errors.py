"""The one error of :mod:`dinov3_integration.extraction`: bad options or inputs, named with the fix."""

from __future__ import annotations

__all__ = ["ExtractionError"]


class ExtractionError(ValueError):
    """A problem with the options or the inputs of an extraction (the message names it and the fix).

    ``dinov3 extract`` prints it as ``dinov3 extract: error: ...`` and exits with status 2.
    """
