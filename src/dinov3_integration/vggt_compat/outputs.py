"""What the Aggregator returns when ``output_layers`` keeps only some layers: :class:`LayerOutputs`.

VGGT's heads index the output list by absolute layer (the DPT heads read ``[4]``, ``[11]``, ``[17]``, ``[23]``, the
camera head ``[-1]``) and Spatial-MLLM reads ``[-1]`` after touching every entry. :class:`LayerOutputs` serves both
without storing the layers nobody reads:

- ``out[i]`` is layer ``i`` of the full run (the very same tensor values), ``i`` absolute or negative
  (``out[-1]`` is layer ``depth - 1``); a layer that was not kept raises :class:`LayerNotKeptError` naming the kept
  layers and the ``output_layers`` to pass; ``i`` outside ``-depth..depth - 1`` raises ``IndexError`` as a list;
- ``len(out)`` is ``depth``, so indices mean what they mean in VGGT's full list (``out[len(out) - 1]`` is the last
  layer);
- iterating yields **only the kept layers**, in layer order (``list(out)`` has ``len(out.layers)`` entries, never a
  ``None``), and :attr:`LayerOutputs.layers` says which they are; :meth:`LayerOutputs.items` gives the pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import overload

from torch import Tensor

from ..utils.indices import resolve_index, resolve_layer_indices

__all__ = ["LayerNotKeptError", "LayerOutputs", "resolve_output_layers", "write_half"]


def resolve_output_layers(spec: str | int | Sequence[int], depth: int) -> list[int]:
    """Sorted absolute layer indices for an ``output_layers`` value: ``"all"``, one index, or a list of indices.

    An int is **one layer index** (``-1``: the last layer), not "the last n" of :mod:`dinov3_integration.utils.indices`;
    a list follows that module (negative indices count from the end; out of range raises ``ValueError``).
    """
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f'output_layers must be "all", an int or a list of ints, got the string {spec!r}')
        return list(range(depth))
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [resolve_index(spec, depth, "output layer")]
    return resolve_layer_indices(spec, depth, what="output_layers")


class LayerNotKeptError(LookupError):
    """A layer was read from :class:`LayerOutputs` that the Aggregator did not keep (see ``output_layers``)."""


class LayerOutputs(Sequence[Tensor]):
    """The Aggregator's ``[B, S, P, 2C]`` layer outputs, indexed by absolute layer, holding only the kept layers.

    Args:
        outputs: kept layer index -> tensor.
        depth: the Aggregator's depth (``len()`` of this sequence).
    """

    __slots__ = ("_outputs", "_depth")

    def __init__(self, outputs: Mapping[int, Tensor], depth: int) -> None:
        self._outputs = dict(sorted(outputs.items()))
        self._depth = int(depth)

    @property
    def layers(self) -> list[int]:
        """The kept layer indices, ascending."""
        return list(self._outputs)

    def items(self) -> list[tuple[int, Tensor]]:
        """``(layer, tensor)`` for each kept layer, ascending."""
        return list(self._outputs.items())

    def __len__(self) -> int:
        return self._depth

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._outputs.values())

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(self._depth)[index]]
        if not -self._depth <= index < self._depth:
            raise IndexError(f"layer index {index} is out of range for depth {self._depth}")
        layer = index % self._depth
        out = self._outputs.get(layer)
        if out is None:
            kept = self.layers
            raise LayerNotKeptError(
                f"layer {layer} (index {index}) was not kept: this Aggregator output holds layers {kept} only. "
                f"Pass output_layers={sorted({*kept, layer})} (or 'all') to the Aggregator or to its forward to read it."
            )
        return out

    def __repr__(self) -> str:
        shape = tuple(next(iter(self._outputs.values())).shape) if self._outputs else ()
        return f"LayerOutputs(depth={self._depth}, layers={self.layers}, shape={shape})"


def write_half(outputs: dict[int, Tensor], layer: int, half: int, value: Tensor) -> None:
    """Write ``value`` ``[B, S, P, C]`` into channels ``half * C:(half + 1) * C`` of ``outputs[layer]``."""
    out = outputs.get(layer)
    C = value.shape[-1]
    if out is None:
        out = value.new_empty((*value.shape[:-1], 2 * C))
        outputs[layer] = out
    out[..., half * C : (half + 1) * C].copy_(value)
