"""Layer-index parsing: the one rule every ``n=``/``indices=``/``output_layers=``/``--layers`` follows.

- an ``int`` ``n`` means "the last ``n`` layers" (``1 <= n <= depth``);
- a sequence means those layers, negative ones counted from the end (``-1`` is the last);
- anything out of range, empty, ``bool``, non-integral floats or strings that are not integers raise ``ValueError``
  naming the value, the depth and the valid range. Nothing wraps silently.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

__all__ = ["parse_index_list", "resolve_index", "resolve_layer_indices"]


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{what}: {value!r} is not an integer layer index")
    return int(value)


def resolve_index(index: object, depth: int, what: str = "layer index", *, unit: str = "layers") -> int:
    """Return ``index`` (negative counts from the end) as a non-negative index below ``depth``.

    ``unit`` names what is counted in the error message (``"layers"``, ``"blocks"``).
    """
    i = _as_int(index, what)
    j = i + depth if i < 0 else i
    if not 0 <= j < depth:
        raise ValueError(f"{what} {i} is out of range for {depth} {unit} (valid: 0..{depth - 1} or -{depth}..-1)")
    return j


def resolve_layer_indices(
    spec: int | Iterable[object],
    depth: int,
    *,
    what: str = "layers",
    sort: bool = True,
    unique: bool = True,
    unit: str = "layers",
) -> list[int]:
    """Resolve ``spec`` (an ``int`` "last n", or a sequence of indices) against ``depth`` layers.

    Returns non-negative indices, sorted and de-duplicated unless ``sort``/``unique`` say otherwise. ``what`` is
    the argument's name and ``unit`` what is counted (``"layers"``, ``"blocks"``), both for the error messages.
    """
    if isinstance(spec, bool):
        raise ValueError(f"{what}={spec!r}: pass an int (the last n {unit}) or a list of layer indices")
    if isinstance(spec, numbers.Integral):
        n = int(spec)
        if not 1 <= n <= depth:
            raise ValueError(f"{what}={n} asks for the last {n} {unit}, but there are {depth} (valid: 1..{depth})")
        return list(range(depth - n, depth))
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable):
        raise ValueError(f"{what}={spec!r}: pass an int (the last n {unit}) or a list of layer indices")
    out = [resolve_index(i, depth, f"{what}: index", unit=unit) for i in spec]
    if not out:
        raise ValueError(f"{what}=[] names no layer; pass at least one index (e.g. [-1] for the last)")
    if unique:
        out = list(dict.fromkeys(out))
    return sorted(out) if sort else out


def parse_index_list(text: str | Sequence[object]) -> list[int]:
    """Parse ``"-4,-1"``/``"4 11 17 23"``/``[4, 11]`` into a list of ints (not yet resolved against a depth)."""
    if isinstance(text, str):
        parts = [p for p in text.replace(",", " ").split() if p]
        if not parts:
            raise ValueError(f"{text!r} names no layer index")
        return [_as_int(p, "layer index") for p in parts]
    return [_as_int(p, "layer index") for p in text]
