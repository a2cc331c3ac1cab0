"""The preprocessing each model expects, as one public function: :func:`make_transform`.

Two input conventions exist, on purpose (each follows the code it is compatible with):

* the bare ViT (:class:`~dinov3_integration.models.DinoVisionTransformer`, and ``create_model(...,
  features_only=True)``) takes **normalised** images, as Meta's reference: ``(x / 255 - mean) / std`` with the
  weights' mean/std (ImageNet, or the satellite statistics for ``sat493m``);
* the :class:`~dinov3_integration.vggt_compat.Aggregator` and
  :class:`~dinov3_integration.integrated.DINOv3IntegratedModel` take images **in [0, 1]**, as VGGT, and
  normalise inside (the integrated model with ``normalize=False`` takes normalised images).

``make_transform(model)`` returns the torchvision ``v2`` pipeline that produces the input ``model`` expects from a
PIL image, a ``uint8`` ``[3, h, w]`` tensor or a numpy ``[h, w, 3]`` array: ``ToImage -> Resize((S, S), bilinear,
antialias) -> ToDtype(float32, scale=True) [-> Normalize(mean, std)]``, the transform of Meta's README (``S``
= 256). :func:`input_convention` says which of the two conventions a model uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from .integrated.model import DINOv3IntegratedModel
from .models.specs import normalization_for
from .models.timm_features import DEFAULT_INPUT_SIZE, FeatureMapModel
from .models.vision_transformer import DinoVisionTransformer
from .vggt_compat.aggregator import Aggregator

__all__ = ["input_convention", "make_transform"]

Convention = Literal["normalized", "unit"]


def input_convention(model: nn.Module) -> Convention:
    """``"normalized"`` (the ViT, a feature-map wrapper, an integrated model with ``normalize=False``) or
    ``"unit"`` (images in [0, 1]: the Aggregator, the integrated model)."""
    if isinstance(model, (DinoVisionTransformer, FeatureMapModel)):
        return "normalized"
    if isinstance(model, Aggregator):
        return "unit"
    if isinstance(model, DINOv3IntegratedModel):
        return "unit" if model.normalize else "normalized"
    raise TypeError(
        f"make_transform does not know the input convention of {type(model).__name__}; pass a DinoVisionTransformer, "
        "an Aggregator or a DINOv3IntegratedModel (or weights=/normalize= for a bare transform)"
    )


def _mean_std(model: nn.Module | None, weights: str | None) -> tuple[Sequence[float], Sequence[float]]:
    if weights is not None or model is None:
        return normalization_for(weights)
    if isinstance(model, FeatureMapModel):
        model = model.model
    if isinstance(model, DinoVisionTransformer):
        cfg = model.pretrained_cfg
        return cfg["mean"], cfg["std"]
    if isinstance(model, DINOv3IntegratedModel):
        return tuple(model.mean.flatten().tolist()), tuple(model.std.flatten().tolist())
    return normalization_for(getattr(model, "weights_tag", None))


def make_transform(
    model: nn.Module | None = None,
    *,
    resize: int | tuple[int, int] = DEFAULT_INPUT_SIZE,
    weights: str | None = None,
    normalize: bool | None = None,
    interpolation: Literal["bilinear", "bicubic"] = "bilinear",
) -> Any:
    """The ``v2.Compose`` giving ``model``'s expected input ``[3, H, W]`` float32 from one image.

    Args:
        model: the model to feed (its convention from :func:`input_convention`, its mean/std from its weights);
            None: a bare transform (ImageNet statistics unless ``weights``).
        resize: output side ``S`` (square, as Meta's README) or ``(H, W)``; each a multiple of the patch size
            (16) so no pixel is dropped by the patch embedding.
        weights: a weight tag (``"sat493m"``) choosing the mean/std instead of the model's.
        normalize: force (True) or skip (False) the final ``Normalize``; None: the model's convention.
        interpolation: ``"bilinear"`` (the reference's) or ``"bicubic"``.

    Raises:
        ValueError: a size that is not a positive multiple of the patch size.
        TypeError: a model whose convention is unknown.
    """
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    patch = getattr(model, "patch_size", None) or getattr(getattr(model, "model", None), "patch_size", 16)
    if len(size) != 2 or any(not isinstance(s, int) or s <= 0 or s % patch for s in size):
        raise ValueError(f"resize={resize!r}: give a positive multiple of the patch size {patch} (or two of them)")
    if normalize is None:
        normalize = True if model is None else input_convention(model) == "normalized"
    mode = v2.InterpolationMode.BILINEAR if interpolation == "bilinear" else v2.InterpolationMode.BICUBIC
    steps: list[Any] = [
        v2.ToImage(),
        v2.Resize(list(size), interpolation=mode, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        mean, std = _mean_std(model, weights)
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)
