"""The library's logger.

Everything logs under the name ``"dinov3"`` (children such as ``"dinov3.hub"``). Nothing is printed at the
default level; ``logging.getLogger("dinov3").setLevel(logging.DEBUG)`` plus a handler shows how models are
built, which weights are resolved and which shapes are chosen.
"""

from __future__ import annotations

import logging

LOGGER_NAME = "dinov3"

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())


def get_logger(child: str | None = None) -> logging.Logger:
    """Return the library logger, or a child of it (``get_logger("hub")`` -> ``"dinov3.hub"``)."""
    return logger if not child else logger.getChild(child)


_warned: set[str] = set()


def warn_once(log: logging.Logger, key: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING level the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    log.warning(message, *args)
