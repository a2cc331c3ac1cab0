"""The ``dinov3`` command line: ``extract``, ``pca``, ``models``, ``demo`` and ``selftest``.

Run ``dinov3 --help`` (or ``python -m dinov3_integration --help``). :func:`main` is the console-script entry point.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
