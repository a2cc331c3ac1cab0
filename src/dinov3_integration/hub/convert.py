"""Write a checkpoint in another layout: what ``dinov3 convert SRC DST --to {official,hf,safetensors,timm}`` does.

- ``official``: a plain state dict with the reference key names (``.pth``, loadable by Meta's code with
  ``strict=True``; ``.safetensors`` if DST ends so);
- ``safetensors``: the official layout as ``.safetensors`` with the architecture in the metadata;
- ``hf``: a Hugging Face model folder (``config.json`` + ``model.safetensors``) that
  ``transformers.DINOv3ViTModel.from_pretrained`` loads;
- ``timm``: timm's Eva layout (``.safetensors`` or ``.pth``).

The source is read by the hub (any local file or folder, URL, ``hf-hub:`` id or timm name), converted to the
official layout, checked against the model it describes (a model that does not fit lists the missing, unexpected
and mis-shaped keys) and written atomically.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from .._logging import get_logger
from ..models.hf_api import hf_preprocessor_config
from ..models.specs import SAT_TAG, get_model_spec, list_models, tag_in_name
from ..models.vision_transformer import DinoVisionTransformer
from ..utils.atomic import atomic_dir
from ..utils.redact import redact_text
from . import formats
from .checkpoint_io import is_hf_model_folder, load_hf_model_folder, load_state_dict_file, save_state_dict_file
from .errors import WeightsMismatchError
from .hf_config import HF_EXTRA_FILE, check_hf_config_fits
from .loading import TRAINING_ONLY_PREFIXES, load_pretrained, needs_satellite_layout
from .mismatch import compare_state_dicts
from .sources import resolve_weights

log = get_logger("hub")

Target = Literal["official", "hf", "safetensors", "timm"]
TARGETS = ("official", "hf", "safetensors", "timm")


def read_official(
    src: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    periods: formats.PeriodsMode = "reference",
) -> tuple[dict[str, Tensor], dict[str, Any], str | None]:
    """Read any supported source and return ``(official state dict, constructor kwargs, model name or None)``.

    With ``model_name`` the hub resolves ``src`` for that model (URLs, ``hf-hub:`` ids and timm names work) and the
    weights are checked against it; without, ``src`` must be a local file or Hugging Face folder and the
    architecture is inferred from the tensors (and ``config.json``, checked against them). Training checkpoints
    (``teacher`` with ``dino_head``/``ibot_head``) are unwrapped either way.
    """
    if model_name is not None:
        return _read_for_model(src, model_name, periods)
    path = Path(src).expanduser()
    config = None
    if path.is_dir() and is_hf_model_folder(path):
        state_dict, config = load_hf_model_folder(path)
    elif path.is_file():
        state_dict = load_state_dict_file(path)
    else:
        raise FileNotFoundError(
            f"{src} is not a checkpoint file or a Hugging Face model folder; for a URL, 'hf-hub:' id or timm name "
            "also name the model (--model)"
        )
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if config:
        check_hf_config_fits(config, state_dict)
        kwargs = formats.kwargs_from_hf_config(config)
        official = formats.to_official(
            state_dict, num_heads=kwargs["num_heads"], periods=periods, rope_base=kwargs["pos_embed_rope_base"]
        )
        extra = path / HF_EXTRA_FILE
        if extra.is_file():  # what the Hugging Face layout cannot hold (local_cls_norm), written by convert
            official.update(load_state_dict_file(extra))
            kwargs["untie_global_and_local_cls_norm"] = "local_cls_norm.weight" in official
    else:
        official = formats.to_official(state_dict, periods=periods)
        kwargs = formats.infer_architecture(official)
    return official, kwargs, _registered_name(kwargs)


def _read_for_model(
    src: str | os.PathLike[str], model_name: str, periods: formats.PeriodsMode
) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    spec = get_model_spec(model_name)
    resolved = resolve_weights(spec.name, src)
    kwargs = spec.kwargs(SAT_TAG if needs_satellite_layout(spec, resolved) else resolved.tag)
    model = DinoVisionTransformer(**kwargs, device="meta")
    model.model_name = spec.name  # type: ignore[attr-defined]
    load_pretrained(model, resolved, periods=periods)  # raises listing missing/unexpected/mis-shaped keys
    return dict(model.state_dict()), kwargs, spec.name


def _registered_name(kwargs: dict[str, Any]) -> str | None:
    keys = ("embed_dim", "depth", "num_heads", "ffn_layer", "patch_size")
    for name in list_models():
        spec_kw = get_model_spec(name).kwargs()
        if all(spec_kw[k] == kwargs.get(k) for k in keys):
            return name
    return None


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: Target = "safetensors",
    model_name: str | None = None,
    periods: formats.PeriodsMode = "reference",
) -> Path:
    """Convert ``src`` to the ``to`` layout and write it at ``dst`` (a file, or a folder for ``"hf"``).

    Returns the path written. Nothing is left at ``dst`` if anything fails.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target layout {to!r}; choose one of {', '.join(TARGETS)}")
    official, kwargs, name = read_official(src, model_name=model_name, periods=periods)
    _check_fits(official, kwargs)
    dst = Path(dst).expanduser()
    meta = {"architecture": json.dumps(kwargs, default=str), "model": name or "", "source": redact_text(str(src))}
    if to == "hf":
        return _write_hf_folder(official, kwargs, dst, tag=tag_in_name(str(src)))
    if to == "timm":
        timm_sd = formats.official_to_timm(official)
        lost = sorted({k.rsplit(".", 1)[0] for k in official if k.startswith(("local_cls_norm.", "cls_norm."))})
        if "mask_token" in official and bool(official["mask_token"].any()):
            lost.insert(0, "mask_token")
        _warn_lossy(lost, "timm")
        return save_state_dict_file(timm_sd, dst, meta if _is_st(dst) else None)
    if to == "safetensors" and not _is_st(dst):
        raise ValueError(f"--to safetensors writes a .safetensors file; got {dst}")
    return save_state_dict_file(official, dst, meta if _is_st(dst) else None)


def _is_st(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _check_fits(official: dict[str, Tensor], kwargs: dict[str, Any]) -> None:
    report = compare_state_dicts(official, DinoVisionTransformer(**kwargs, device="meta"))
    if report:
        raise WeightsMismatchError(
            f"the checkpoint does not describe one consistent DINOv3 ViT: tensors {report.summary(limit=20)}"
        )


def _warn_lossy(what: list[str], target: str) -> None:
    if what:
        message = f"the {target} layout cannot hold {', '.join(what)}: not written"
        warnings.warn(message, UserWarning, stacklevel=3)
        log.warning(message)


def _write_hf_folder(official: dict[str, Tensor], kwargs: dict[str, Any], dst: Path, tag: str | None = None) -> Path:
    """Write ``config.json``, ``preprocessor_config.json`` (for ``AutoImageProcessor``; ``tag`` picks the mean/std)
    and ``model.safetensors`` (plus, for ViT-L SAT and the 7B, ``dinov3_extra.safetensors``
    with ``local_cls_norm``, which transformers ignores) into a temporary folder, then rename it to ``dst``."""
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(
            f"{dst} exists and is not an empty folder; choose a new folder for the Hugging Face model"
        )
    hf_sd = formats.official_to_hf(official)
    config = formats.hf_config_from_kwargs(kwargs, hf_sd)
    extra = {k: v for k, v in official.items() if k.startswith("local_cls_norm.")}
    _warn_lossy(sorted({k.rsplit(".", 1)[0] for k in official if k.startswith("cls_norm.")}), "Hugging Face")
    with atomic_dir(dst) as tmp:
        save_state_dict_file(hf_sd, tmp / "model.safetensors")
        if extra:
            save_state_dict_file(extra, tmp / HF_EXTRA_FILE)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(hf_preprocessor_config(tag), indent=2) + "\n")
    log.debug("wrote Hugging Face folder %s (%d tensors)", dst, len(hf_sd))
    return dst
