"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for :class:`DINOv3IntegratedModel` (a mixin).

The folder holds ``config.json`` (the model's full configuration, ``to_config().to_dict()``) and
``model.safetensors`` (every tensor of the backbone and the Aggregator). ``from_pretrained`` builds the model from
the configuration without loading any weights (a weight tag keeps selecting the architecture, e.g. ``sat493m``; a
weights file or URL in the configuration is dropped: the folder's tensors replace it) on the ``meta`` device and
loads the tensors with ``strict=True, assign=True`` (no random initialisation, no copy).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file

from ..hub.loading import assign_state_dict
from ..models.hf_api import LIBRARY, WEIGHTS_NAME, HubMixin, read_saved_folder
from ..models.specs import WEIGHT_TAGS

__all__ = ["IntegratedHubMixin"]


class IntegratedHubMixin(HubMixin):
    """The Hugging Face methods of :class:`~dinov3_integration.models.hf_api.HubMixin`, with the configuration of
    the integrated model as ``config.json``."""

    def hub_config(self) -> dict[str, Any]:
        config = self.to_config().to_dict()  # type: ignore[attr-defined]
        return {"library_name": LIBRARY, "architecture": type(self).__name__, "config": config}

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> Any:
        """Load a folder written by ``save_pretrained`` (a local path or a Hub ``repo_id``), in eval mode.

        Raises:
            FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
            ValueError: the folder was written for another class.
            RuntimeError: the tensors do not fit the configuration (missing/unexpected keys).
        """
        if overrides:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no architecture overrides: {sorted(overrides)}")
        folder, saved = read_saved_folder(cls.__name__, pretrained_model_name_or_path, revision, token, cache_dir)
        config = saved["config"]
        backbone = config["model"]["backbone"]
        backbone["pretrained"] = False
        if backbone.get("weights") not in WEIGHT_TAGS:
            backbone["weights"] = None
        model = cls.from_config(config, device="meta")  # type: ignore[attr-defined]  # no random init
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu" if device is None else str(torch.device(device)))
        assign_state_dict(model, state, strict=True, device=device, owner=f"{cls.__name__}.from_pretrained")
        return model.eval()
