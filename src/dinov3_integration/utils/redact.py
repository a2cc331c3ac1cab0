"""Redaction of secrets in URLs: the one boundary every log line, error message and metadata field passes.

Signed links (``?Policy=...&Signature=...``, ``X-Amz-Signature``) and ``user:password@`` credentials never leave
the process: :func:`redact_url` keeps scheme, host and path and replaces the query with ``?<redacted>``;
:func:`redact_text` does the same for every URL found inside a message.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_text", "redact_url", "strip_query"]

REDACTED = "<redacted>"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def strip_query(url: str) -> str:
    """``url`` without its query, fragment and credentials (the identity of the resource, safe to store)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]


def redact_url(url: str) -> str:
    """``url`` with any query replaced by ``?<redacted>`` and credentials removed; other strings unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        base = url.split("?", 1)[0]
        return base + (f"?{REDACTED}" if "?" in url else "")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", ""))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` passed through :func:`redact_url`."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)
