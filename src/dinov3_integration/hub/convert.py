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
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from .._logging import get_logger
from . import formats
from .checkpoint_io import is_hf_model_folder, load_hf_model_folder, load_state_dict_file, save_state_dict_file

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
    architecture is inferred from the tensors.
    """
    from ..models import create_model, get_model_spec
    from .sources import load_pretrained, resolve_weights

    if model_name is not None:
        resolved = resolve_weights(model_name, src)
        model = create_model(model_name, weights=resolved.tag, device="meta")
        load_pretrained(model, resolved, periods=periods)  # raises listing missing/unexpected/mis-shaped keys
        kwargs = {**get_model_spec(model_name).kwargs(resolved.tag)}
        return {k: v for k, v in model.state_dict().items()}, kwargs, get_model_spec(model_name).name
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
    heads = config.get("num_attention_heads") if config else None
    official = formats.to_official(state_dict, num_heads=heads, periods=periods)
    kwargs = formats.kwargs_from_hf_config(config) if config else formats.infer_architecture(official)
    return official, kwargs, _registered_name(kwargs)


def _registered_name(kwargs: dict[str, Any]) -> str | None:
    from ..models import get_model_spec, list_models

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
    meta = {"architecture": json.dumps(kwargs, default=str), "model": name or "", "source": str(src)}
    if to == "hf":
        return _write_hf_folder(official, kwargs, dst)
    if to == "timm":
        return save_state_dict_file(formats.official_to_timm(official), dst, meta if _is_st(dst) else None)
    if to == "safetensors" and not _is_st(dst):
        raise ValueError(f"--to safetensors writes a .safetensors file; got {dst}")
    return save_state_dict_file(official, dst, meta if _is_st(dst) else None)


def _is_st(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _check_fits(official: dict[str, Tensor], kwargs: dict[str, Any]) -> None:
    from ..models import DinoVisionTransformer

    model = DinoVisionTransformer(**kwargs, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(official))
    unexpected = sorted(set(official) - set(expected))
    wrong = sorted(k for k in set(expected) & set(official) if tuple(official[k].shape) != expected[k])
    if missing or unexpected or wrong:
        from .errors import WeightsMismatchError

        lines = [
            f"missing: {', '.join(missing)}" if missing else "",
            f"unexpected: {', '.join(unexpected)}" if unexpected else "",
        ]
        lines += [f"{k}: checkpoint {tuple(official[k].shape)} vs model {expected[k]}" for k in wrong]
        raise WeightsMismatchError(
            "the checkpoint does not describe one consistent DINOv3 ViT:\n  " + "\n  ".join(x for x in lines if x)
        )


def _write_hf_folder(official: dict[str, Tensor], kwargs: dict[str, Any], dst: Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into a temporary folder, then rename it to ``dst``."""
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder for the Hugging Face model")
    hf_sd = formats.official_to_hf(official)
    config = formats.hf_config_from_kwargs(kwargs, hf_sd)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        save_state_dict_file(hf_sd, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("wrote Hugging Face folder %s (%d tensors)", dst, len(hf_sd))
    return dst
