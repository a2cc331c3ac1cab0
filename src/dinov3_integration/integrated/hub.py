"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for :class:`DINOv3IntegratedModel` (a mixin).

The folder holds ``config.json`` (the model's full configuration, ``to_config().to_dict()``) and
``model.safetensors`` (every tensor of the backbone and the Aggregator). ``from_pretrained`` builds the model from
the configuration without loading any weights (a weight tag keeps selecting the architecture, e.g. ``sat493m``; a
weights file or URL in the configuration is dropped: the folder's tensors replace it) on the ``meta`` device and
loads the tensors with ``strict=True, assign=True`` (no random initialisation, no copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..hub.loading import assign_state_dict
from ..models.hf_api import LIBRARY, HubMixin, read_saved_weights
from ..models.specs import WEIGHT_TAGS

__all__ = ["IntegratedHubMixin"]


class IntegratedHubMixin(HubMixin):
    """The Hugging Face methods of :class:`~dinov3_integration.models.hf_api.HubMixin`, with the configuration of
    the integrated model as ``config.json``."""

    _HUB_HINT = ""
    _HUB_RECORDS_SOURCE = False  # the integrated model keeps no weights_source

    def hub_config(self) -> dict[str, Any]:
        config = self.to_config().to_dict()  # type: ignore[attr-defined]
        return {"library_name": LIBRARY, "architecture": type(self).__name__, "config": config}

    @classmethod
    def _check_hub_overrides(cls, overrides: dict[str, Any]) -> None:
        """The integrated model takes no overrides: its configuration is the architecture.

        Raises:
            TypeError: any override.
        """
        if overrides:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no architecture overrides: {sorted(overrides)}")

    @classmethod
    def _build_from_hub(cls, folder: Path, config: dict[str, Any], overrides: dict[str, Any]) -> Any:
        """The model of the saved configuration on the ``meta`` device, without loading any backbone weights (a
        weight tag keeps selecting the architecture; a weights file or URL is dropped: the folder's tensors replace
        it)."""
        config = config["config"]
        backbone = config["model"]["backbone"]
        backbone["pretrained"] = False
        if backbone.get("weights") not in WEIGHT_TAGS:
            backbone["weights"] = None
        return cls.from_config(config, device="meta")  # type: ignore[attr-defined]  # no random init

    def _load_hub_weights(self, folder: Path, config: dict[str, Any], device: torch.device | str | None) -> Any:
        """Take ``folder``'s tensors with :func:`~dinov3_integration.hub.loading.assign_state_dict` (strict; on
        ``device``, default CPU)."""
        state = read_saved_weights(folder, device)
        owner = f"{type(self).__name__}.from_pretrained"
        assign_state_dict(self, state, strict=True, device=device, owner=owner)  # type: ignore[arg-type]
        return self
