"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for the :class:`~.aggregator.Aggregator` (a mixin).

The folder is Hugging Face's (what ``huggingface_hub.PyTorchModelHubMixin`` writes): ``model.safetensors`` (the
Aggregator's own state-dict keys, VGGT's: ``camera_token``, ``patch_embed.*``, ``frame_blocks.N.*`` ...) and
``config.json``:

- ``kwargs``: the constructor arguments as called (positional ones by name), with the settings read back from the
  module (``output_layers``, ``frames_chunk_size``, ``gradient_checkpointing``, ``pad_output_list``,
  ``check_input_range``; the register count as ``num_register_tokens``);
- ``patch_embed``: a name (``"conv"``, a VGGT DINOv2 name) with its ``patch_embed_config``, or, for a DINOv3 ViT
  (given by name or as a module, e.g. by ``integrated.build_aggregator``), ``{"dinov3_vit": <the ViT's own
  config>}`` (its constructor arguments, ``model_name``, ``weights_tag``): the ViT is rebuilt from that, whatever
  weights (tag, file, hub id) it was first loaded from;
- ``normalization``: the ``(mean, std)`` applied to ``[0, 1]`` inputs (kept by ``set_normalization``, which the
  state dict does not hold).

What cannot be written is refused at ``save_pretrained`` with a ``TypeError`` that says why: another ``block_fn``
than VGGT's ``Block``, a ``patch_embed`` module that is not this library's DINOv3 ViT, or a ``patch_embed_config``
that is not JSON. ``from_pretrained`` builds on the ``meta`` device (no random initialisation), loads the tensors
with ``assign=True`` after comparing them with the architecture (:func:`~dinov3_integration.hub.mismatch.
compare_state_dicts`: a damaged or edited folder raises :class:`~.checkpoint.StateDictMismatchError` listing the
missing, unexpected and mis-shaped tensors), and never reads a pickle.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub.checkpoint_io import load_state_dict_file
from ..hub.mismatch import compare_state_dicts
from ..models import DinoVisionTransformer
from ..models.hf_api import LIBRARY, WEIGHTS_NAME, HubMixin
from .checkpoint import StateDictMismatchError
from .layers.block import Block

__all__ = ["RUNTIME_SETTINGS", "AggregatorHubMixin"]

RUNTIME_SETTINGS = (
    "output_layers",
    "pad_output_list",
    "frames_chunk_size",
    "gradient_checkpointing",
    "check_input_range",
)
"""Constructor arguments that leave the tensors unchanged: recorded from the module, overridable in from_pretrained."""

_DROPPED = ("block_fn", "n_storage_tokens", "patch_embed_weights", "self")


class AggregatorHubMixin(HubMixin):
    """The Hugging Face methods of :class:`~dinov3_integration.models.hf_api.HubMixin` for the Aggregator, whose
    constructor takes positional arguments, modules and a ``block_fn`` (see the module docstring); its
    ``from_pretrained`` is the shared one, with the hooks below."""

    _HUB_HINT = "; for a VGGT checkpoint use Aggregator.from_vggt"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs).arguments
        except TypeError:  # __init__ raises the real error
            bound = {}
        object.__setattr__(self, "_init_kwargs", dict(bound))
        return self

    def hub_config(self) -> dict[str, Any]:
        """What ``config.json`` holds (see the module docstring).

        Raises:
            TypeError: a constructor argument that cannot be written (another ``block_fn``, a ``patch_embed``
                module that is not a DINOv3 ViT).
        """
        given = dict(self._init_kwargs)
        block_fn = given.get("block_fn", Block)
        if block_fn is not Block:
            raise TypeError(
                f"save_pretrained: block_fn={getattr(block_fn, '__qualname__', block_fn)!r} cannot be written to "
                "config.json (only VGGT's Block can be rebuilt); save aggregator.state_dict() with safetensors and "
                "rebuild the module yourself"
            )
        kwargs = {k: v for k, v in given.items() if k not in _DROPPED}
        kwargs["num_register_tokens"] = self.num_register_tokens  # type: ignore[attr-defined]
        kwargs["aa_order"] = list(self.aa_order)  # type: ignore[attr-defined]
        for key in RUNTIME_SETTINGS:
            kwargs[key] = getattr(self, key)
        patch_embed = self.patch_embed  # type: ignore[attr-defined]
        if self.patch_embed_kind == "dinov3":  # type: ignore[attr-defined]
            kwargs.pop("patch_embed_config", None)
            kwargs["patch_embed"] = {"dinov3_vit": patch_embed.hub_config()}
        elif isinstance(given.get("patch_embed"), nn.Module):
            raise TypeError(
                f"save_pretrained: patch_embed={type(patch_embed).__name__} (a module) cannot be written to "
                "config.json; use a patch_embed name ('conv', a DINOv2 or DINOv3 name) or a DINOv3 ViT module"
            )
        mean, std = self.normalization  # type: ignore[attr-defined]
        return {
            "library_name": LIBRARY,
            "architecture": type(self).__name__,
            "patch_embed_kind": self.patch_embed_kind,  # type: ignore[attr-defined]
            "normalization": {"mean": list(mean), "std": list(std)},
            "kwargs": kwargs,
        }

    @classmethod
    def _check_hub_overrides(cls, overrides: dict[str, Any]) -> None:
        """Only :data:`RUNTIME_SETTINGS` may be overridden (e.g. ``output_layers=[-1]``).

        Raises:
            TypeError: an override that would change the architecture.
        """
        bad = sorted(set(overrides) - set(RUNTIME_SETTINGS))
        if bad:
            raise TypeError(
                f"{cls.__name__}.from_pretrained: {bad} would change the architecture; only {list(RUNTIME_SETTINGS)} "
                "can be overridden"
            )

    @classmethod
    def _build_from_hub(cls, folder: Path, config: dict[str, Any], overrides: dict[str, Any]) -> Any:
        """The Aggregator of ``config.json`` on the ``meta`` device (a DINOv3 patch embedding rebuilt from its own
        config); the saved ``normalization`` is checked here and set by :meth:`_load_hub_weights`.

        Raises:
            ValueError: ``config.json`` lacks ``kwargs`` or ``normalization`` (not this format).
        """
        try:
            kwargs = {**config["kwargs"], **overrides}
            _saved_normalization(config)
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{folder / 'config.json'} lacks {exc} (not written by {cls.__name__}.save_pretrained)"
            ) from exc
        with torch.device("meta"):
            patch_embed = kwargs.get("patch_embed")
            if isinstance(patch_embed, dict):
                kwargs["patch_embed"] = _rebuild_vit(patch_embed["dinov3_vit"])
            model = cls(**kwargs)
        return model

    def _load_hub_weights(self, folder: Path, config: dict[str, Any], device: torch.device | str | None) -> Any:
        """Compare ``model.safetensors`` with the architecture, then take it with ``assign=True`` (on the CPU, then
        moved to ``device``); the normalisation (in no state dict) comes from ``config.json``.

        Raises:
            StateDictMismatchError: the tensors do not fit ``config.json`` (lists the missing, unexpected and
                mis-shaped tensors).
            CheckpointFormatError: ``model.safetensors`` is damaged.
        """
        state = load_state_dict_file(folder / WEIGHTS_NAME, unwrap=False)
        mismatch = compare_state_dicts(state, self)  # type: ignore[arg-type]
        if mismatch:
            raise StateDictMismatchError(
                f"{folder / WEIGHTS_NAME} does not fit the Aggregator described by its config.json: "
                f"{mismatch.summary()}. The folder was damaged or edited: write it again with save_pretrained",
                mismatch.missing,
                mismatch.unexpected,
                mismatch.wrong_shape,
            )
        self.load_state_dict(state, strict=True, assign=True)  # type: ignore[attr-defined]
        # non-persistent buffers are not in the state dict: the input normalisation comes from config.json
        mean, std = _saved_normalization(config)
        self._resnet_mean = torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1)
        return self if device is None else self.to(device)  # type: ignore[attr-defined]


def _saved_normalization(config: dict[str, Any]) -> tuple[Any, Any]:
    """The ``(mean, std)`` of a saved ``config.json``; raises ``KeyError``/``TypeError`` when it has none."""
    return config["normalization"]["mean"], config["normalization"]["std"]


def _rebuild_vit(config: dict[str, Any]) -> DinoVisionTransformer:
    """The DINOv3 ViT of a saved ``hub_config()`` (on the current default device), with its names."""
    vit = DinoVisionTransformer(**config["kwargs"])
    vit.model_name = config.get("model_name")
    vit.weights_tag = config.get("weights_tag")
    return vit
