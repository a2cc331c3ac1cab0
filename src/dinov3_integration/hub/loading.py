"""Loading resolved weights into a :class:`~dinov3_integration.models.DinoVisionTransformer`.

:func:`load_pretrained` converts :class:`~.resolved.ResolvedWeights` to the official layout
(:mod:`.formats`), fills in what other layouts cannot hold, checks them against the model with the one mismatch
reporter (:mod:`.mismatch`) and loads them strictly. A model built on the ``meta`` device is loaded with
``assign=True`` (no random initialisation ever happens): every tensor is then cast to the model's dtype and put on
``device``. :func:`assign_state_dict` is that step on its own, for every model built on ``meta`` (the ViT, the
Aggregator, the integrated model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._logging import get_logger
from ..models.specs import SAT_TAG, ModelSpec, tag_in_name
from ..utils.meta import raise_if_on_meta
from . import formats
from .errors import CheckpointFormatError, WeightsMismatchError
from .mismatch import StateDictMismatch, compare_state_dicts, fitting_models
from .resample import resample_patch_embed
from .resolved import LoadResult, ResolvedWeights

log = get_logger("hub")

__all__ = [
    "TRAINING_ONLY_PREFIXES",
    "assign_state_dict",
    "buffer_device",
    "convert_resolved",
    "load_pretrained",
    "needs_satellite_layout",
]

TRAINING_ONLY_PREFIXES = ("dino_head.", "ibot_head.")
"""Keys of training heads that training checkpoints carry next to the backbone; never part of the model."""


def load_pretrained(
    model: nn.Module,
    resolved: ResolvedWeights,
    *,
    strict: bool = True,
    periods: formats.PeriodsMode = "reference",
    device: torch.device | str | None = None,
) -> LoadResult:
    """Convert ``resolved`` to the official layout and load it into ``model`` (a ``DinoVisionTransformer``).

    Training heads (``dino_head``/``ibot_head``) are dropped, ``local_cls_norm`` is filled in for models that have
    it (ViT-L SAT, 7B) when the source lacks it, the patch kernel is resampled when patch sizes differ (ViT-L/14),
    and missing RoPE periods are computed (``periods``: ``"reference"`` bf16-rounded like the official files, or
    ``"float32"``). A Hugging Face ``config.json`` that contradicts the model is refused. With ``strict`` any
    missing, unexpected, mis-shaped or wrong-kind (integer where the model is floating) tensor raises
    :class:`WeightsMismatchError` naming the likely cause; otherwise the tensors that fit are loaded. A model on
    the ``meta`` device is loaded with ``assign=True``, its tensors cast to the model's dtypes and put on ``device``
    (default CPU). Sets ``model.weights_tag`` (when known) and ``model.weights_source``.
    """
    check_hf_config(model, resolved)
    state_dict = convert_resolved(model, resolved, periods)
    state_dict = _fit_patch_embed(model, state_dict)
    expected = model.state_dict()
    report = compare_state_dicts(state_dict, expected)
    on_meta = any(t.is_meta for t in expected.values())
    if report and (strict or (on_meta and report.missing)):
        raise _mismatch_error(model, resolved, state_dict, report, strict)
    for key in sorted(report.unusable):
        log.warning("not loading %s: its shape or kind differs from the model's", key)
        del state_dict[key]
    if on_meta:
        result = assign_state_dict(model, state_dict, strict=strict, device=device, owner="create_model")
    else:
        result = model.load_state_dict(state_dict, strict=strict)
    if resolved.tag is not None:
        model.weights_tag = resolved.tag  # type: ignore[assignment]
    model.weights_source = resolved.source  # type: ignore[assignment]
    log.debug("loaded %d tensors into %s from %s", len(state_dict), _model_name(model), resolved.source)
    return LoadResult(list(result.missing_keys), list(result.unexpected_keys))


def assign_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    device: torch.device | str | None = None,
    owner: str = "loading",
    own: Mapping[str, Tensor] | None = None,
) -> Any:
    """Load ``state_dict`` into ``model`` built on the ``meta`` device: ``load_state_dict(assign=True)``.

    No random initialisation and no copy: each tensor is cast to the dtype of the model's tensor of the same name
    and put on ``device`` (default CPU), which is free when it already is (a memory-mapped ``.pth`` stays backed by
    its file). Each parameter keeps its ``requires_grad``. Tensors the model already holds on a real device (a
    submodule passed in built) are copied into instead. Tensors the state dict does not hold (non-persistent
    buffers, which the model builds on a real device: :func:`buffer_device`) are moved to ``device`` too. The
    caller checks the keys first (with ``strict=False`` a missing tensor would stay on ``meta``, which raises
    here). ``own``: ``model.state_dict(keep_vars=True)``, when the caller has it already.

    Returns:
        ``load_state_dict``'s ``(missing_keys, unexpected_keys)``.

    Raises:
        RuntimeError: a parameter or buffer is still on the ``meta`` device afterwards (names the first ones).
    """
    target = torch.device("cpu") if device is None else torch.device(device)
    own = model.state_dict(keep_vars=True) if own is None else own
    tensors: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        mine = own.get(key)
        if mine is None or (not mine.is_meta and mine.shape != value.shape):
            tensors[key] = value  # load_state_dict reports it
        elif mine.is_meta:
            tensors[key] = value.to(device=target, dtype=mine.dtype).contiguous()
        else:  # already real (a submodule passed in built): copied into, as load_state_dict does
            with torch.no_grad():
                mine.copy_(value)
            tensors[key] = mine
    result = model.load_state_dict(tensors, strict=strict, assign=True)
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and not buffer.is_meta and buffer.device != target:
                module._buffers[name] = buffer.to(target)
    raise_if_on_meta(model, owner)  # the one leftover check (utils.meta), shared with models.hf_api's from_pretrained
    return result


def buffer_device(device: torch.device | str | None) -> torch.device:
    """Where a model built on ``device`` puts the tensors no state dict holds (non-persistent buffers such as its
    input normalisation): ``device`` (default: the current default device), or the CPU for ``meta``, so that a
    model built on ``meta`` and loaded with :func:`assign_state_dict` has them with their values."""
    target = torch.get_default_device() if device is None else torch.device(device)
    return torch.device("cpu") if target.type == "meta" else target


def needs_satellite_layout(spec: ModelSpec, resolved: ResolvedWeights) -> bool:
    """Whether loaded weights need the satellite architecture of ViT-L (its untied ``local_cls_norm``).

    Official-layout tensors decide by themselves (a ``local_cls_norm`` or not, whatever the path says); layouts that
    cannot hold it (Hugging Face, timm) decide by the tag their name carries (``sat493m``, ``eadcf0ff``).
    """
    if not spec.sat_overrides:
        return False
    if any(k.startswith("local_cls_norm.") for k in [*resolved.state_dict, *resolved.extras]):
        return True
    if resolved.format == "official":
        return False
    name = resolved.path.name if resolved.path is not None else resolved.source
    return resolved.tag == SAT_TAG or tag_in_name(name) == SAT_TAG


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "model_name", type(model).__name__))


def check_hf_config(model: nn.Module, resolved: ResolvedWeights) -> None:
    """Refuse a Hugging Face ``config.json`` whose heads or RoPE base contradict ``model`` (they set the periods)."""
    config = resolved.config or {}
    if resolved.format != "hf":
        return
    problems = []
    heads = config.get("num_attention_heads")
    if heads is not None and getattr(model, "num_heads", heads) != heads:
        problems.append(f"num_attention_heads={heads} but the model has {model.num_heads} heads")
    theta = config.get("rope_theta")
    base = getattr(getattr(model, "rope_embed", None), "base", None)
    if theta is not None and base is not None and float(theta) != float(base):
        problems.append(f"rope_theta={theta} but the model's RoPE base is {base}")
    if problems:
        raise WeightsMismatchError(
            f"The config.json of {resolved.source} contradicts {_model_name(model)}: {'; '.join(problems)}. Build the "
            "model with matching arguments (create_model(name, num_heads=..., pos_embed_rope_base=...)) or fix the "
            "config."
        )


def convert_resolved(model: nn.Module, resolved: ResolvedWeights, periods: formats.PeriodsMode) -> dict[str, Tensor]:
    """``resolved``'s tensors in the official layout for ``model``: heads dropped, ``local_cls_norm`` and RoPE
    periods filled in where ``model`` has them and the source does not."""
    wants_local = getattr(model, "local_cls_norm", None) is not None
    num_heads = getattr(model, "num_heads", None)
    rope_base = getattr(getattr(model, "rope_embed", None), "base", None) or 100.0
    try:
        state_dict = formats.to_official(
            resolved.state_dict,
            source_format=resolved.format,  # type: ignore[arg-type]
            num_heads=num_heads,
            periods=periods,
            rope_base=rope_base,
            add_local_cls_norm=wants_local,
            qkv_bias=_has_qkv_bias(model),
        )
    except (KeyError, formats.CheckpointFormatError) as exc:
        raise CheckpointFormatError(
            f"Cannot convert the weights from {resolved.source} ({resolved.format} layout) to the official layout: "
            f"{exc}. The file is probably not a DINOv3 ViT checkpoint."
        ) from exc
    state_dict.update(resolved.extras)
    dropped = [k for k in state_dict if k.startswith(TRAINING_ONLY_PREFIXES)]
    for key in dropped:
        del state_dict[key]
    if dropped:
        log.debug("dropped %d training-head tensors (%s...)", len(dropped), dropped[0])
    if wants_local and "local_cls_norm.weight" not in state_dict and "norm.weight" in state_dict:
        # Unused in evaluation, but part of the model: the official files hold it, other layouts drop it.
        state_dict["local_cls_norm.weight"] = state_dict["norm.weight"].clone()
        state_dict["local_cls_norm.bias"] = state_dict["norm.bias"].clone()
    if "rope_embed.periods" not in state_dict and num_heads and "cls_token" in state_dict:
        head_dim = state_dict["cls_token"].shape[-1] // num_heads
        state_dict["rope_embed.periods"] = formats.rope_periods(head_dim, rope_base, periods)
    return state_dict


def _has_qkv_bias(model: nn.Module) -> bool | None:
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return None
    qkv = getattr(getattr(blocks[0], "attn", None), "qkv", None)
    return None if qkv is None else qkv.bias is not None


def _fit_patch_embed(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    key = "patch_embed.proj.weight"
    target = model.state_dict().get(key)
    weight = state_dict.get(key)
    if target is None or weight is None or weight.shape[-2:] == target.shape[-2:] or weight.ndim != 4:
        return state_dict
    if weight.shape[:2] != target.shape[:2]:
        return state_dict  # another width: reported as a shape mismatch
    log.debug("resampling the patch kernel %s -> %s", tuple(weight.shape[-2:]), tuple(target.shape[-2:]))
    state_dict[key] = resample_patch_embed(weight, tuple(target.shape[-2:]))
    return state_dict


def _mismatch_error(
    model: nn.Module, resolved: ResolvedWeights, state_dict: dict[str, Tensor], report: StateDictMismatch, strict: bool
) -> WeightsMismatchError:
    name = _model_name(model)
    hints = [h for h in (_size_hint(state_dict, name), _local_norm_hint(report.unexpected, name)) if h]
    if strict:
        hints.append(
            "To load only the tensors that fit, build the model (create_model(name, pretrained=False)) and call "
            "dinov3_integration.hub.load_pretrained(model, resolve_weights(name, weights), strict=False)."
        )
    else:
        hints.append("A model on the meta device cannot keep tensors the weights lack: build it on a real device.")
    return WeightsMismatchError(
        f"The weights from {resolved.source} do not fit {name}: tensors {report.summary()}. {' '.join(hints)}"
    )


def _size_hint(state_dict: dict[str, Any], model_name: str) -> str | None:
    fit = fitting_models(state_dict)
    if fit is None:
        return None
    matches, described = fit
    if matches and model_name not in matches:
        return f"The weights look like {' or '.join(matches)} ({described}): build that model instead."
    return f"The weights have {described}."


def _local_norm_hint(unexpected: list[str], model_name: str) -> str | None:
    if any(k.startswith("local_cls_norm.") for k in unexpected):
        return (
            "They carry local_cls_norm (satellite ViT-L or 7B weights): pass the file to "
            "create_model('dinov3_vitl16', weights=<this file>) (or dinov3_vitl16(weights=<this file>)), which "
            "detects the satellite layout; a model built without weights needs "
            f"create_model({model_name!r}, pretrained=False, weights='sat493m') before load_pretrained."
        )
    return None
