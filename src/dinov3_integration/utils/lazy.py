"""Lazy re-exports: a package names its public objects and imports each submodule only on first use.

A package's ``__init__`` keeps a mapping ``{name: submodule}`` and calls :func:`lazy_exports`; the returned
functions become its module-level ``__getattr__`` / ``__dir__`` (PEP 562), so ``import package`` imports no
submodule (and so no torch) until one of its names is read. Standard library only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    module_globals: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``module_globals``.

    ``exports`` maps each public name to the submodule (relative to the package, e.g. ``"inputs"``) that defines
    it. ``__getattr__(name)`` imports that submodule, stores the value in the package's globals (so later reads
    skip ``__getattr__``) and returns it; an unknown name raises ``AttributeError("module 'pkg' has no attribute
    'name'")``. ``__dir__()`` is the sorted union of the package's globals and its ``__all__`` (read when
    called).
    """
    package = module_globals["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        module_globals[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(module_globals.get("__all__", ())))

    return __getattr__, __dir__
