"""The one check that a model built on the ``meta`` device was loaded completely: nothing may be left on ``meta``.

Every loader that builds on ``meta`` and loads with ``assign=True`` ends with :func:`raise_if_on_meta`
(``hub.loading.assign_state_dict``; ``models.hf_api.HubMixin.from_pretrained``, the ``from_pretrained`` of the ViT,
the Aggregator and the integrated model), so a tensor that no state dict filled is reported, never run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["meta_tensor_names", "raise_if_on_meta"]


def meta_tensor_names(model: nn.Module) -> list[str]:
    """The dotted names of ``model``'s parameters and buffers (non-persistent ones too) still on ``meta``, module
    by module."""
    left: list[str] = []
    for prefix, module in model.named_modules():
        left += [f"{prefix}.{n}".lstrip(".") for n, t in module._parameters.items() if t is not None and t.is_meta]
        left += [f"{prefix}.{n}".lstrip(".") for n, t in module._buffers.items() if t is not None and t.is_meta]
    return left


def raise_if_on_meta(model: nn.Module, owner: str) -> None:
    """Raise if a parameter or buffer of ``model`` is still on the ``meta`` device after ``owner`` loaded it.

    Raises:
        RuntimeError: names the first tensors left (a bug of the loader: please report it).
    """
    left = meta_tensor_names(model)
    if left:
        raise RuntimeError(
            f"{owner} left {len(left)} tensors on the meta device after loading ({', '.join(left[:4])}): "
            "tensors that are not in the state dict must be initialised after the meta build. Please report this."
        )
