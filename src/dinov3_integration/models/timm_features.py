"""timm's ``create_model`` keywords and data config for the ViT: ``features_only``, ``pretrained_cfg``, aliases.

- :class:`FeatureMapModel` is what ``create_model(name, features_only=True, out_indices=...)`` returns: a module
  whose ``forward(x)`` gives a list of ``[B, D, H // p, W // p]`` maps (timm's ``FeatureGetterNet`` behaviour,
  ``norm=False`` by default) and whose ``feature_info`` (:class:`FeatureInfo`) answers ``channels()``,
  ``reduction()``, ``module_name()`` and ``get_dicts()`` as timm's does, so detection and segmentation libraries
  (timm-based necks, ``detectron2``/``mmdet`` adapters) can consume it.
- :class:`PretrainedCfgMixin` gives the ViT a ``pretrained_cfg`` (and timm's older ``default_cfg``): with it
  ``timm.data.resolve_data_config({}, model=model)`` and ``timm.data.create_transform(**cfg)`` give **this**
  model's preprocessing: bilinear resize, ``crop_pct`` 1.0, the ImageNet (or, for ``sat493m``, satellite)
  mean/std, 256 x 256 input (the size of Meta's README transform; any multiple of 16 works, RoPE has no fixed grid).
- :func:`split_timm_kwargs` reads ``checkpoint_path=`` and ``pretrained_cfg_overlay=dict(file=...)`` (aliases of
  ``weights=``) and the ``features_only`` options out of ``create_model``'s keywords.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..utils.indices import resolve_layer_indices
from .specs import normalization_for

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "FeatureInfo",
    "FeatureMapModel",
    "PretrainedCfgMixin",
    "TimmOptions",
    "pretrained_cfg_for",
    "split_timm_kwargs",
]

DEFAULT_INPUT_SIZE = 256
"""Side of the default input (Meta's README transform resizes to 256 x 256)."""


def pretrained_cfg_for(model: nn.Module) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` dict for a :class:`DinoVisionTransformer` (reads ``model_name``, ``weights_tag``).

    ``interpolation`` is ``"bilinear"`` (torchvision's default, as the reference README transform), ``crop_pct``
    1.0 (no crop), ``mean``/``std`` those of the weights (:func:`~dinov3_integration.models.specs.normalization_for`).
    """
    tag = getattr(model, "weights_tag", None)
    mean, std = normalization_for(tag)
    name = getattr(model, "model_name", None) or type(model).__name__
    in_chans = getattr(model, "in_chans", 3)
    return {
        "architecture": name,
        "tag": tag or "",
        "hf_hub_id": "",
        "url": "",
        "input_size": (in_chans, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": getattr(model, "num_classes", 0),
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "dinov3-license",
    }


class PretrainedCfgMixin:
    """``pretrained_cfg`` / ``default_cfg`` for timm's data helpers, recomputed from the model on each read (so a
    later ``weights_tag`` or ``reset_classifier`` shows); assigning a dict overlays it (timm's ``create_model`` and
    users may set it)."""

    _pretrained_cfg_overlay: dict[str, Any] | None = None

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return {**pretrained_cfg_for(self), **(self._pretrained_cfg_overlay or {})}  # type: ignore[arg-type]

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict[str, Any] | None) -> None:
        self._pretrained_cfg_overlay = dict(value or {})

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg


class FeatureInfo:
    """timm's ``FeatureInfo`` for the selected blocks: one dict per output (``module``, ``num_chs``, ``reduction``,
    ``index``). ``channels()``/``reduction()``/``module_name()`` return a list, or one value with ``idx``."""

    def __init__(self, info: list[dict[str, Any]]) -> None:
        self.info = info
        self.out_indices = tuple(d["index"] for d in info)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [d[key] for d in self.info]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        pick = (lambda d: dict(d)) if keys is None else (lambda d: {k: d[k] for k in keys})
        if idx is None:
            return [pick(d) for d in self.info]
        if isinstance(idx, int):
            return pick(self.info[idx])
        return [pick(self.info[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.info)


class FeatureMapModel(nn.Module):
    """The ViT as a feature extractor (timm's ``features_only=True``).

    Args:
        model: a :class:`DinoVisionTransformer` (kept as ``self.model``: state-dict keys gain a ``model.`` prefix,
            as timm's ``FeatureGetterNet``).
        out_indices: block indices (negative from the end) or an int (the last n blocks; timm's default 3).
        norm: apply the final norm to each map (timm's default False).
        output_fmt: ``"NCHW"`` (``[B, D, H // p, W // p]``) or ``"NLC"`` (``[B, N, D]``).

    ``forward(x)``: ``x`` ``[B, 3, H, W]``, normalised with the model's mean/std (``pretrained_cfg``) -> a list of
    one map per ``out_indices`` entry.
    """

    def __init__(
        self, model: nn.Module, out_indices: int | Sequence[int] = 3, norm: bool = False, output_fmt: str = "NCHW"
    ) -> None:
        super().__init__()
        depth = len(model.blocks)
        self.model = model
        self.out_indices = tuple(resolve_layer_indices(out_indices, depth, what="out_indices", unit="blocks"))
        self.norm = norm
        self.output_fmt = output_fmt
        self.feature_info = FeatureInfo(
            [
                {"module": f"blocks.{i}", "num_chs": model.embed_dim, "reduction": model.patch_size, "index": i}
                for i in self.out_indices
            ]
        )

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return self.model.pretrained_cfg

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )


@dataclass
class TimmOptions:
    """The timm-only keywords of ``create_model``, read by :func:`split_timm_kwargs`."""

    features_only: bool = False
    out_indices: int | Sequence[int] = 3
    feature_cfg: dict[str, Any] = field(default_factory=dict)
    cfg_overlay: dict[str, Any] = field(default_factory=dict)

    def finish(self, model: nn.Module) -> nn.Module:
        """Apply the options to a built model: the cfg overlay, then the feature wrapper when asked."""
        if self.cfg_overlay:
            model.pretrained_cfg = self.cfg_overlay
        if not self.features_only:
            return model
        cfg = dict(self.feature_cfg)
        unknown = sorted(set(cfg) - {"norm", "output_fmt"})
        if unknown:
            raise TypeError(f"feature_cfg keys {unknown} are not supported; use 'norm' and 'output_fmt'")
        return FeatureMapModel(model, self.out_indices, **cfg)


def split_timm_kwargs(weights: Any, overrides: dict[str, Any]) -> tuple[Any, TimmOptions, dict[str, Any]]:
    """Take timm's keywords out of ``overrides``: returns ``(weights, options, remaining overrides)``.

    ``checkpoint_path=`` and ``pretrained_cfg_overlay=dict(file=...)`` are aliases of ``weights=`` (a path); two
    different sources raise ``ValueError``. Other ``pretrained_cfg_overlay`` keys (``mean``, ``input_size``, ...)
    overlay the model's ``pretrained_cfg``. ``features_only``, ``out_indices`` and ``feature_cfg`` (``norm``,
    ``output_fmt``) build a :class:`FeatureMapModel`.
    """
    rest = dict(overrides)
    opts = TimmOptions(
        features_only=bool(rest.pop("features_only", False)),
        out_indices=rest.pop("out_indices", 3),
        feature_cfg=dict(rest.pop("feature_cfg", None) or {}),
    )
    overlay = dict(rest.pop("pretrained_cfg_overlay", None) or {})
    aliases = {"checkpoint_path": rest.pop("checkpoint_path", None), "pretrained_cfg_overlay['file']": None}
    for key in ("file", "url", "hf_hub_id"):
        if overlay.get(key):
            aliases["pretrained_cfg_overlay['file']"] = overlay[key] if key != "hf_hub_id" else f"hf-hub:{overlay[key]}"
        overlay.pop(key, None)
    opts.cfg_overlay = overlay
    given = {k: v for k, v in aliases.items() if v}
    if weights is not None:
        given = {"weights": weights, **given}
    sources = {str(v) for v in given.values()}
    if len(sources) > 1:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(f"create_model got two weight sources ({shown}): pass one of weights=, checkpoint_path=")
    if given:
        weights = next(iter(given.values()))
    if not opts.features_only and ("out_indices" in overrides or "feature_cfg" in overrides):
        raise TypeError("out_indices/feature_cfg need features_only=True")
    return weights, opts, rest
