"""``create_model`` and the official hub functions (``dinov3_vitl16(...)``): the one place that joins models and hub.

:func:`create_model` (timm style) builds a registered model and, when asked for weights, loads them. A model that
gets weights is built on the ``meta`` device and loaded with ``assign=True``: no random initialisation ever runs
(the 7B never materialises random weights) and the result is bit-identical to building on the CPU and copying the
weights in. What ``weights`` means:

* ``None``: no weights (random initialisation), unless ``pretrained=True`` (then the model's default tag);
* a tag (``"lvd1689m"``, ``"sat493m"`` or the reference's ``Weights`` enum): those released weights, found by the
  hub's search order; with an explicit ``pretrained=False`` the tag only selects the architecture (``sat493m``
  unties the ViT-L norms) and the weights stay random;
* anything else (a file, a folder, a URL, ``hf-hub:org/repo``, a timm name): always loaded. The satellite
  architecture of ViT-L is chosen from the name (``sat493m`` or the ``eadcf0ff`` hash, as the reference does) or
  from the tensors themselves (a ``local_cls_norm``).

The hub functions (``dinov3_vits16`` ... ``dinov3_vit7b16``) follow Meta's ``hubconf.py``: keyword-only
``pretrained=True``, ``weights`` (a tag, path or URL), ``check_hash=False``; they return the model in training mode
and ignore (with a warning) keywords the model does not take, as the reference does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch

from ._logging import get_logger
from .hub.loading import load_pretrained, needs_satellite_layout
from .hub.sources import resolve_weights
from .models.specs import SAT_TAG, WEIGHT_TAGS, ModelSpec, get_model_spec
from .models.timm_features import split_timm_kwargs
from .models.vision_transformer import DinoVisionTransformer
from .utils.redact import redact_text

log = get_logger("models")

__all__ = [
    "create_model",
    "dinov3_vit7b16",
    "dinov3_vitb16",
    "dinov3_vitg16",
    "dinov3_vith16plus",
    "dinov3_vitl14",
    "dinov3_vitl16",
    "dinov3_vitl16plus",
    "dinov3_vits16",
    "dinov3_vits16plus",
]

_EXTRA_CONSTRUCTOR_ARGS = frozenset({"device", "num_classes", "global_pool"})


def _tag(weights: Any) -> str | None:
    """``weights`` as a tag, when it is one (``"lvd1689m"``, ``"SAT493M"``, ``Weights.SAT493M``)."""
    text = getattr(weights, "value", weights)
    if isinstance(text, str) and text.strip().lower() in WEIGHT_TAGS:
        return text.strip().lower()
    return None


def _check_overrides(spec: ModelSpec, kw: dict[str, Any], overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(kw) - _EXTRA_CONSTRUCTOR_ARGS)
    if unknown:
        valid = sorted(set(kw) | _EXTRA_CONSTRUCTOR_ARGS)
        hints = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        text = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise TypeError(f"create_model({spec.name!r}) got unknown arguments: {text}")


def create_model(
    name: str,
    pretrained: bool | None = None,
    weights: Any = None,
    *,
    device: torch.device | str | None = None,
    check_hash: bool = True,
    rope_periods: str = "reference",
    **overrides: Any,
) -> DinoVisionTransformer | Any:
    """Build a registered model, timm style, and load its weights when asked (see the module docstring).

    Args:
        name: a registry name (``list_models()``), ``_reg`` suffix accepted.
        pretrained: ``True``: load weights (the model's default tag when ``weights`` is None); ``None`` (default):
            load when ``weights`` is given; ``False``: a tag only selects the architecture (random weights).
        weights: a tag (``"lvd1689m"``, ``"sat493m"``), a file, a folder, a URL, an ``hf-hub:`` id or a timm name.
        device: where the model lives; ``"meta"`` without weights allocates no memory (for shapes and counts).
        check_hash: verify the SHA-256 prefix in the name of a downloaded official file.
        rope_periods: for weights without stored RoPE periods (Hugging Face, timm): ``"reference"`` uses the
            bfloat16-rounded periods of the official checkpoints (outputs match Meta's model), ``"float32"`` the
            float32 periods the ports compute (outputs match ``transformers``/``timm``).
        **overrides: constructor arguments replacing the registered ones (``depth=2`` for a tiny test model,
            ``num_classes``/``global_pool``), and timm's keywords (:func:`~dinov3_integration.models.timm_features.
            split_timm_kwargs`): ``checkpoint_path=`` / ``pretrained_cfg_overlay=dict(file=...)`` (aliases of
            ``weights``), ``features_only=True`` with ``out_indices``/``feature_cfg`` (returns a
            :class:`~dinov3_integration.models.timm_features.FeatureMapModel` with ``feature_info``).

    Returns:
        A :class:`DinoVisionTransformer` in eval mode, with ``model_name``, ``weights_tag`` and (when loaded)
        ``weights_source`` set.

    Raises:
        TypeError: an unknown constructor argument (with the closest valid one).
        ValueError: an unknown model name.
        WeightsError: the weights cannot be found, read or do not fit (never random weights instead).
    """
    weights, timm_options, overrides = split_timm_kwargs(weights, overrides)  # timm's aliases and features_only
    spec = get_model_spec(name)
    tag = _tag(weights)
    load = bool(pretrained) or (weights is not None and (tag is None or pretrained is None))
    _check_overrides(spec, spec.kwargs(), overrides)
    resolved = resolve_weights(spec.name, weights, check_hash=check_hash) if load else None
    arch_tag = tag
    if resolved is not None and arch_tag is None and needs_satellite_layout(spec, resolved):
        arch_tag = SAT_TAG
    kw = {**spec.kwargs(arch_tag), **overrides}
    shown = redact_text(repr(weights))  # a signed link's query never reaches a log line
    log.debug("create_model(%r): weights=%s load=%s arguments=%s", spec.name, shown, load, kw)
    if resolved is None:
        model = DinoVisionTransformer(**kw, device=device)
    else:
        model = DinoVisionTransformer(**kw, device="meta")  # no random init: every tensor comes from the file
    model.model_name = spec.name  # type: ignore[attr-defined]
    model.weights_tag = tag if resolved is None else None  # type: ignore[attr-defined]
    if resolved is not None:
        target = None if device is None or torch.device(device).type == "meta" else device
        load_pretrained(model, resolved, periods=rope_periods, device=target)  # type: ignore[arg-type]
        if model.weights_tag is None:
            model.weights_tag = tag or (SAT_TAG if arch_tag == SAT_TAG else None)
    return timm_options.finish(model.eval())


def _make_hub_function(model_name: str, *, released: bool) -> Callable[..., DinoVisionTransformer]:
    def hub_function(
        *, pretrained: bool = released, weights: Any = None, check_hash: bool = False, **kwargs: Any
    ) -> DinoVisionTransformer:
        spec = get_model_spec(model_name)
        known = set(spec.kwargs()) | _EXTRA_CONSTRUCTOR_ARGS | {"rope_periods"}
        ignored = sorted(set(kwargs) - known)
        if ignored:  # the reference's constructor logs and ignores them
            log.warning("%s ignores unknown arguments: %s", model_name, ignored)
        kwargs = {k: v for k, v in kwargs.items() if k in known}
        model = create_model(model_name, pretrained=pretrained, weights=weights, check_hash=check_hash, **kwargs)
        return model.train()  # the reference returns the module as built (training mode)

    hub_function.__name__ = hub_function.__qualname__ = model_name
    default = "``pretrained=True`` (the released weights)" if released else "``pretrained=False``"
    hub_function.__doc__ = (
        f"``{model_name}`` ({get_model_spec(model_name).description}), Meta's hub signature; default {default}.\n\n"
        "``weights``: a tag (``'lvd1689m'``, ``'sat493m'``), a path, a URL or anything :func:`create_model` takes "
        "(a path or URL always loads); ``check_hash`` verifies a downloaded official file; other keywords are "
        "constructor arguments (unknown ones are ignored with a warning, as the reference does). Returns the model "
        "in training mode, as the reference does: call ``.eval()`` for inference."
    )
    return hub_function


dinov3_vits16 = _make_hub_function("dinov3_vits16", released=True)
dinov3_vits16plus = _make_hub_function("dinov3_vits16plus", released=True)
dinov3_vitb16 = _make_hub_function("dinov3_vitb16", released=True)
dinov3_vitl16 = _make_hub_function("dinov3_vitl16", released=True)
dinov3_vitl16plus = _make_hub_function("dinov3_vitl16plus", released=True)
dinov3_vith16plus = _make_hub_function("dinov3_vith16plus", released=True)
dinov3_vit7b16 = _make_hub_function("dinov3_vit7b16", released=True)
dinov3_vitg16 = _make_hub_function("dinov3_vitg16", released=False)  # not in Meta's hub: no released weights
dinov3_vitl14 = _make_hub_function("dinov3_vitl14", released=False)  # not in Meta's hub: ViT-L/16 weights resampled
