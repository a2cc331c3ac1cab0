"""Hugging Face's model conventions on the ViT (a mixin): ``save_pretrained``, ``from_pretrained``, ``push_to_hub``.

The folder written is what ``huggingface_hub.PyTorchModelHubMixin`` writes: ``model.safetensors`` (the official
state-dict keys, so nothing is lost: RoPE periods, untied norms, a classifier head) and ``config.json`` (the
constructor arguments, ``model_name`` and ``weights_tag``). ``from_pretrained`` reads a local folder or a Hub repo,
builds the model on the ``meta`` device and loads with ``strict=True, assign=True`` (no random initialisation; any
missing or unexpected tensor raises). No pickle is ever read. ``create_model(name, weights=folder)`` also reads
such a folder. ``HubMixin.from_pretrained`` is the one implementation: the Aggregator's and the integrated model's
mixins (``vggt_compat.hub``, ``integrated.hub``) supply its hooks (``_check_hub_overrides``, ``_build_from_hub``,
``_load_hub_weights``), since ``models`` cannot import the hub's loader.

For a folder that ``transformers.AutoModel`` / ``AutoImageProcessor`` read, use ``dinov3 convert SRC DST --to hf``
(the ``DINOv3ViTModel`` layout plus ``preprocessor_config.json``); ``create_model(name, weights=that_folder)`` reads
it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from ..utils.atomic import atomic_path, atomic_write_text
from ..utils.meta import raise_if_on_meta
from .specs import normalization_for

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "HubMixin", "hf_preprocessor_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LIBRARY = "dinov3_integration"
_NOT_SAVED = frozenset({"device"})


def _download(repo_id: str, revision: str | None, token: str | bool | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
    )


def read_saved_folder(
    class_name: str,
    name_or_path: str | os.PathLike[str],
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | None,
    *,
    hint: str = "",
) -> tuple[Path, dict[str, Any]]:
    """The folder of a ``save_pretrained`` (local, else downloaded) and its ``config.json``, checked.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors`` (``hint`` is appended).
        ValueError: ``config.json`` was written for another class or library.
    """
    path = Path(name_or_path).expanduser()
    folder = path if path.is_dir() else _download(str(name_or_path), revision, token, cache_dir)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}: from_pretrained reads folders written by save_pretrained{hint}"
            )
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if config.get("library_name") != LIBRARY or config.get("architecture") != class_name:
        raise ValueError(
            f"{folder / CONFIG_NAME} was not written by {class_name}.save_pretrained (architecture "
            f"{config.get('architecture')!r}, library {config.get('library_name')!r})"
        )
    return folder, config


def read_saved_weights(folder: Path, device: torch.device | str | None) -> dict[str, torch.Tensor]:
    """The tensors of ``folder``'s ``model.safetensors`` (a ``save_pretrained`` folder), on ``device`` (default CPU)."""
    return load_file(str(folder / WEIGHTS_NAME), device="cpu" if device is None else str(torch.device(device)))


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a module built from keyword arguments.

    The constructor's keywords are recorded when the object is created (as ``PyTorchModelHubMixin`` does), so
    ``from_pretrained`` rebuilds the same architecture; ``device`` is not recorded.
    """

    _init_kwargs: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        object.__setattr__(self, "_init_kwargs", {k: v for k, v in kwargs.items() if k not in _NOT_SAVED})
        return self

    def hub_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the constructor keywords (with the current ``num_classes``/``global_pool``)."""
        kwargs = dict(self._init_kwargs)
        for key in ("num_classes", "global_pool"):
            if hasattr(self, key):
                kwargs[key] = getattr(self, key)
        return {
            "library_name": LIBRARY,
            "architecture": type(self).__name__,
            "model_name": getattr(self, "model_name", None),
            "weights_tag": getattr(self, "weights_tag", None),
            "kwargs": kwargs,
        }

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, push_to_hub: bool = False, **push_kwargs: Any
    ) -> Path | str:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (each file atomically).

        With ``push_to_hub=True`` also upload the folder (``repo_id`` defaults to the folder name) and return the
        commit URL; otherwise return the folder.
        """
        folder = Path(save_directory).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        config = self.hub_config()
        try:
            text = json.dumps(config, indent=2) + "\n"
        except TypeError as exc:
            raise TypeError(f"save_pretrained: a constructor argument cannot be written to config.json: {exc}") from exc
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "library": LIBRARY})
        atomic_write_text(folder / CONFIG_NAME, text)
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", folder.name)
            return self.push_to_hub(repo_id, _folder=folder, **push_kwargs)
        return folder

    _HUB_HINT: ClassVar[str] = "; for a transformers DINOv3ViTModel folder use create_model(name, weights=folder)"
    """Appended to ``from_pretrained``'s error for a folder without ``config.json``/``model.safetensors``."""
    _HUB_RECORDS_SOURCE: ClassVar[bool] = True
    """Whether ``from_pretrained`` sets ``weights_source`` (the path or repo id it read)."""

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
        """Load a folder written by :meth:`save_pretrained` (a local path or a Hub ``repo_id``), in eval mode.

        The one ``from_pretrained`` of the ViT, the Aggregator and the integrated model: ``overrides`` are checked
        (:meth:`_check_hub_overrides`), the folder and its ``config.json`` are read (:func:`read_saved_folder`), the
        model is built on the ``meta`` device from the configuration (:meth:`_build_from_hub`: no random
        initialisation) and takes the tensors of ``model.safetensors`` with ``assign=True`` (:meth:`_load_hub_weights`;
        no pickle is read); nothing may be left on ``meta`` (:func:`~dinov3_integration.utils.meta.raise_if_on_meta`).

        ``overrides`` replace recorded constructor keywords that leave the tensors unchanged: the ViT's
        (``drop_path_rate``), the Aggregator's ``RUNTIME_SETTINGS`` (``output_layers=[-1]``); the integrated model
        takes none.

        Raises:
            FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
            ValueError: the folder was written for another class (or its ``config.json`` is not this format); the
                Aggregator's ``CheckpointFormatError``: its ``model.safetensors`` is damaged.
            TypeError: an override that would change the architecture (or that the class takes none of).
            RuntimeError: the tensors do not fit the recorded architecture (missing/unexpected keys; the
                Aggregator's ``StateDictMismatchError`` lists the missing, unexpected and mis-shaped tensors).
        """
        cls._check_hub_overrides(overrides)
        folder, config = read_saved_folder(
            cls.__name__, pretrained_model_name_or_path, revision, token, cache_dir, hint=cls._HUB_HINT
        )
        model = cls._build_from_hub(folder, config, overrides)._load_hub_weights(folder, config, device)
        raise_if_on_meta(model, f"{cls.__name__}.from_pretrained")
        if cls._HUB_RECORDS_SOURCE:
            model.weights_source = str(pretrained_model_name_or_path)
        return model.eval()

    @classmethod
    def _check_hub_overrides(cls, overrides: dict[str, Any]) -> None:
        """Refuse ``from_pretrained`` overrides before anything is read (the ViT: none; its constructor decides)."""

    @classmethod
    def _build_from_hub(cls, folder: Path, config: dict[str, Any], overrides: dict[str, Any]) -> Any:
        """The model ``config.json`` describes, on the ``meta`` device (the ViT: its recorded keywords and names)."""
        model = cls(**{**config["kwargs"], **overrides}, device="meta")
        model.model_name = config.get("model_name")
        model.weights_tag = config.get("weights_tag")
        return model

    def _load_hub_weights(self, folder: Path, config: dict[str, Any], device: torch.device | str | None) -> Any:
        """Take ``folder``'s tensors (on ``device``, default CPU) with ``strict=True, assign=True``; returns the model."""
        self.load_state_dict(read_saved_weights(folder, device), strict=True, assign=True)  # type: ignore[attr-defined]
        return self

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload model with dinov3_integration",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        _folder: Path | None = None,
    ) -> str:
        """Create ``repo_id`` if needed and upload ``config.json`` + ``model.safetensors``; returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = _folder if _folder is not None else Path(self.save_pretrained(tmp))  # type: ignore[arg-type]
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                commit_message=commit_message,
                revision=revision,
            )
        return str(info)


def hf_preprocessor_config(weights_tag: str | None, size: int = 224) -> dict[str, Any]:
    """A ``preprocessor_config.json`` for ``transformers.AutoImageProcessor`` (``DINOv3ViTImageProcessorFast``):
    bilinear resize to ``size x size`` (224, as Meta's Hugging Face repos), rescale by 1/255, the weights' mean/std.

    transformers rescales before resizing (float resize) where Meta's README resizes the uint8 image: values differ
    by rounding only (``dinov3_integration.transforms.make_transform`` is the reference's exact pipeline).
    """
    mean, std = normalization_for(weights_tag)
    return {
        "image_processor_type": "DINOv3ViTImageProcessorFast",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
    }
