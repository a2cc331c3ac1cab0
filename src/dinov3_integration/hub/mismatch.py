"""The one state-dict mismatch reporter: which tensors are missing, unexpected, mis-shaped or of the wrong kind.

:func:`compare_state_dicts` compares a checkpoint with what a module expects and returns a
:class:`StateDictMismatch`; its :meth:`~StateDictMismatch.summary` is the text every loader puts in its error
(the ViT loader in :mod:`.loading`, the checkpoint converter, the VGGT Aggregator). :func:`fitting_models` names
the registered DINOv3 models a (official-layout) state dict would fit, for the hint.

A tensor of the wrong *kind* is an integer or boolean tensor where the model holds a floating one (or the reverse):
``load_state_dict`` would cast it silently (an int32 weight of ``1439`` instead of ``1.42``), so it is a mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..models.specs import get_model_spec, list_models
from .formats import infer_architecture

__all__ = ["StateDictMismatch", "compare_state_dicts", "fitting_models"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StateDictMismatch:
    """How a checkpoint differs from a model's state dict (each list sorted by key).

    Attributes:
        missing: keys the model has and the checkpoint lacks.
        unexpected: keys the checkpoint has and the model lacks.
        wrong_shape: ``(key, checkpoint shape, model shape)``.
        wrong_kind: ``(key, checkpoint dtype, model dtype)`` where one is floating and the other not.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    wrong_kind: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape or self.wrong_kind)

    @property
    def unusable(self) -> set[str]:
        """Checkpoint keys that cannot be loaded even without strictness (wrong shape or kind)."""
        return {k for k, *_ in self.wrong_shape} | {k for k, *_ in self.wrong_kind}

    def summary(self, limit: int = 4) -> str:
        """One line: ``"2 missing (e.g. a, b); 1 with other shapes (e.g. k: (3,) in the checkpoint vs (4,))"``."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {', '.join(self.missing[:limit])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {', '.join(self.unexpected[:limit])})")
        if self.wrong_shape:
            shown = ", ".join(f"{k}: {s} in the checkpoint vs {e}" for k, s, e in self.wrong_shape[:limit])
            parts.append(f"{len(self.wrong_shape)} with other shapes (e.g. {shown})")
        if self.wrong_kind:
            shown = ", ".join(
                f"{k}: {str(s).removeprefix('torch.')} where the model has {str(e).removeprefix('torch.')}"
                for k, s, e in self.wrong_kind[:limit]
            )
            parts.append(f"{len(self.wrong_kind)} of another kind (e.g. {shown})")
        return "; ".join(parts) if parts else "none"


def compare_state_dicts(
    state_dict: Mapping[str, Tensor],
    expected: Mapping[str, Tensor] | nn.Module,
    *,
    optional: Iterable[str] = (),
) -> StateDictMismatch:
    """Compare ``state_dict`` (a checkpoint) with ``expected`` (a module or its ``state_dict()``; meta is fine).

    ``optional``: key prefixes the checkpoint may lack without counting as missing.
    """
    want = expected.state_dict() if isinstance(expected, nn.Module) else expected
    prefixes = tuple(optional)
    missing = sorted(k for k in want.keys() - state_dict.keys() if not (prefixes and k.startswith(prefixes)))
    unexpected = sorted(state_dict.keys() - want.keys())
    shared = sorted(state_dict.keys() & want.keys())
    wrong_shape = [
        (k, tuple(state_dict[k].shape), tuple(want[k].shape))
        for k in shared
        if tuple(state_dict[k].shape) != tuple(want[k].shape)
    ]
    wrong_kind = [
        (k, state_dict[k].dtype, want[k].dtype)
        for k in shared
        if state_dict[k].dtype.is_floating_point != want[k].dtype.is_floating_point
    ]
    return StateDictMismatch(missing, unexpected, wrong_shape, wrong_kind)


def fitting_models(state_dict: Mapping[str, Tensor]) -> tuple[list[str], str] | None:
    """Registered models an official-layout state dict fits (by width, depth and FFN), and a description of it.

    Returns ``(names, "width 384, 12 blocks, mlp FFN")`` or ``None`` when the tensors are not a DINOv3 ViT.
    """
    try:
        arch = infer_architecture(state_dict)
    except Exception:  # a hint only: never hide the real error
        return None
    names = [
        n
        for n in list_models()
        if (kw := get_model_spec(n).kwargs())["embed_dim"] == arch["embed_dim"]
        and kw["depth"] == arch["depth"]
        and kw["ffn_layer"] == arch["ffn_layer"]
    ]
    return names, f"width {arch['embed_dim']}, {arch['depth']} blocks, {arch['ffn_layer']} FFN"
