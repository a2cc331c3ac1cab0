"""Model registry: names, architectures, released weights, parameter and FLOP counts, ``create_model``.

Names follow the reference hub (``dinov3_<arch><patch>[plus]``); a ``_reg`` suffix is accepted as an alias
(``dinov3_vitl16_reg`` is ``dinov3_vitl16``: every DINOv3 ViT has 4 storage "register" tokens). Satellite
settings of ``dinov3_vitl16`` / ``dinov3_vit7b16`` are selected with ``weights="sat493m"``, as the reference does.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

from .._logging import get_logger
from ..layers.ffn import swiglu_hidden_features
from .vision_transformer import DinoVisionTransformer

log = get_logger("models")

# Arguments every released DINOv3 ViT shares (docs/dinov3_spec.md section 1.1).
HUB_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "in_chans": 3,
    "pos_embed_rope_base": 100.0,
    "pos_embed_rope_min_period": None,
    "pos_embed_rope_max_period": None,
    "pos_embed_rope_normalize_coords": "separate",
    "pos_embed_rope_shift_coords": None,
    "pos_embed_rope_jitter_coords": None,
    "pos_embed_rope_rescale_coords": 2.0,
    "pos_embed_rope_dtype": "fp32",
    "drop_path_rate": 0.0,
    "layerscale_init": 1.0e-05,
    "norm_layer": "layernormbf16",
    "ffn_bias": True,
    "proj_bias": True,
    "n_storage_tokens": 4,
    "mask_k_bias": True,
    "untie_cls_and_patch_norms": False,
    "untie_global_and_local_cls_norm": False,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)

WEIGHT_TAGS = ("lvd1689m", "sat493m")


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture.

    Attributes:
        name: registry name (``dinov3_vits16``).
        arch: architecture arguments on top of :data:`HUB_DEFAULTS`.
        weights: released weight tags with the official file hash prefix (``{"lvd1689m": "08c60483"}``).
        sat_overrides: arguments that change with ``weights="sat493m"``.
        description: one line for listings.
    """

    name: str
    arch: dict[str, Any]
    weights: dict[str, str] = field(default_factory=dict)
    sat_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def kwargs(self, weights: str | None = None) -> dict[str, Any]:
        """Constructor arguments for this model (with the satellite settings when ``weights == "sat493m"``)."""
        kw = {**HUB_DEFAULTS, **self.arch}
        if weights == "sat493m":
            kw.update(self.sat_overrides)
        return kw


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a :class:`ModelSpec` to the registry (names must be unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


_VITL = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn_ratio": 4.0, "ffn_layer": "mlp", "qkv_bias": True}
_SWIGLU = {"ffn_layer": "swiglu", "qkv_bias": True}
for _spec in (
    ModelSpec(
        "dinov3_vits16",
        {"embed_dim": 384, "depth": 12, "num_heads": 6, "ffn_ratio": 4.0, "ffn_layer": "mlp", "qkv_bias": True},
        {"lvd1689m": "08c60483"},
        description="ViT-S/16 distilled, 21M",
    ),
    ModelSpec(
        "dinov3_vits16plus",
        {"embed_dim": 384, "depth": 12, "num_heads": 6, "ffn_ratio": 6.0, **_SWIGLU},
        {"lvd1689m": "4057cbaa"},
        description="ViT-S+/16 distilled (SwiGLU), 29M",
    ),
    ModelSpec(
        "dinov3_vitb16",
        {"embed_dim": 768, "depth": 12, "num_heads": 12, "ffn_ratio": 4.0, "ffn_layer": "mlp", "qkv_bias": True},
        {"lvd1689m": "73cec8be"},
        description="ViT-B/16 distilled, 86M",
    ),
    ModelSpec(
        "dinov3_vitl16",
        _VITL,
        {"lvd1689m": "8aa4cbdd", "sat493m": "eadcf0ff"},
        sat_overrides={"untie_global_and_local_cls_norm": True},
        description="ViT-L/16 distilled, 300M (web or satellite weights)",
    ),
    ModelSpec(
        "dinov3_vitl16plus",
        {"embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn_ratio": 6.0, **_SWIGLU},
        {"lvd1689m": "46503df0"},
        description="ViT-L+/16 distilled (SwiGLU), 404M",
    ),
    ModelSpec(
        "dinov3_vith16plus",
        {"embed_dim": 1280, "depth": 32, "num_heads": 20, "ffn_ratio": 6.0, **_SWIGLU},
        {"lvd1689m": "7c1da9a5"},
        description="ViT-H+/16 distilled (SwiGLU), 841M",
    ),
    ModelSpec(
        "dinov3_vit7b16",
        {
            "embed_dim": 4096,
            "depth": 40,
            "num_heads": 32,
            "ffn_ratio": 3.0,
            "ffn_layer": "swiglu64",
            "qkv_bias": False,
            "untie_global_and_local_cls_norm": True,
        },
        {"lvd1689m": "a955f4ea", "sat493m": "a6675841"},
        description="ViT-7B/16 teacher, 6.7B (web or satellite weights)",
    ),
    ModelSpec(
        "dinov3_vitg16",
        {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_ratio": 4.0, "ffn_layer": "mlp", "qkv_bias": True},
        description="ViT-g/16 (1536 wide, 40 deep); no released weights",
    ),
    ModelSpec(
        "dinov3_vitl14",
        {**_VITL, "patch_size": 14},
        description="ViT-L with 14-pixel patches; loads ViT-L/16 weights with a resampled patch kernel",
    ),
):
    register(_spec)


def _canonical(name: str) -> str:
    name = name.strip()
    if name.endswith("_reg") and name[: -len("_reg")] in _REGISTRY:
        return name[: -len("_reg")]
    return name


def get_model_spec(name: str) -> ModelSpec:
    """Look up a model by name (``_reg`` aliases accepted); unknown names raise with the closest suggestions."""
    canonical = _canonical(name)
    if canonical in _REGISTRY:
        return _REGISTRY[canonical]
    candidates = list(_REGISTRY) + [f"{n}_reg" for n in _REGISTRY]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(_REGISTRY)} (list_models() lists them).")


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """Registered model names, optionally filtered by a shell-style ``pattern`` (``"*vitl*"``).

    With ``pretrained=True`` only models with released weights are listed.
    """
    names = [n for n, s in _REGISTRY.items() if not pretrained or s.weights]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def _ffn_hidden(kw: dict[str, Any]) -> int:
    hidden = int(kw["embed_dim"] * kw["ffn_ratio"])
    ffn = kw["ffn_layer"]
    if ffn == "mlp":
        return hidden
    align = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}[ffn]
    return swiglu_hidden_features(hidden, align)


def count_parameters(kw: dict[str, Any]) -> int:
    """Parameter count of a :class:`DinoVisionTransformer` from its constructor arguments (no model built)."""
    D, L, p, C = kw["embed_dim"], kw["depth"], kw["patch_size"], kw.get("in_chans", 3)
    F = _ffn_hidden(kw)
    norm = D if kw.get("norm_layer") == "rmsnorm" else 2 * D
    ls = 2 * D if kw.get("layerscale_init") else 0
    ffn_bias = kw.get("ffn_bias", True)
    if kw["ffn_layer"] == "mlp":
        ffn = 2 * D * F + (F + D if ffn_bias else 0)
    else:
        ffn = 3 * D * F + (2 * F + D if ffn_bias else 0)
    attn = 3 * D * D + (3 * D if kw.get("qkv_bias", True) else 0) + D * D + (D if kw.get("proj_bias", True) else 0)
    block = 2 * norm + attn + ffn + ls
    total = D * C * p * p + D  # patch embedding
    total += D + kw.get("n_storage_tokens", 0) * D + D  # cls, storage, mask tokens
    total += L * block + norm
    total += norm if kw.get("untie_cls_and_patch_norms") else 0
    total += norm if kw.get("untie_global_and_local_cls_norm") else 0
    return total


def count_flops(kw: dict[str, Any], height: int = 224, width: int | None = None) -> int:
    """Forward FLOPs (2 x multiply-accumulates) for one ``height x width`` image (docs/peers.md section 4.3).

    Counts the patch embedding, QKV/out projections, ``QK^T`` and ``AV`` and the FFN matrices; norms, softmax,
    activations and RoPE (about 1-2 %) are ignored, like timm's profiler-based counts.
    """
    width = height if width is None else width
    D, L, p = kw["embed_dim"], kw["depth"], kw["patch_size"]
    n_patch = (height // p) * (width // p)
    N = 1 + kw.get("n_storage_tokens", 0) + n_patch
    k = 2 if kw["ffn_layer"] == "mlp" else 3
    F = _ffn_hidden(kw)
    macs = L * (N * 4 * D * D + k * N * D * F + 2 * N * N * D) + n_patch * kw.get("in_chans", 3) * p * p * D
    return 2 * macs


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`model_info` reports."""

    name: str
    params: int
    flops: int
    resolution: tuple[int, int]
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    weights: tuple[str, ...]
    description: str

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def model_info(name: str, resolution: int | tuple[int, int] = 224, weights: str | None = None) -> ModelInfo:
    """Parameter count and FLOPs at ``resolution`` (an int side or ``(H, W)``), computed from the architecture."""
    spec = get_model_spec(name)
    kw = spec.kwargs(weights)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return ModelInfo(
        name=spec.name,
        params=count_parameters(kw),
        flops=count_flops(kw, h, w),
        resolution=(h, w),
        patch_size=kw["patch_size"],
        embed_dim=kw["embed_dim"],
        depth=kw["depth"],
        num_heads=kw["num_heads"],
        weights=tuple(spec.weights),
        description=spec.description,
    )


def _weights_tag(weights: Any) -> str | None:
    """The weight tag implied by a ``weights`` argument: a tag itself, or an official file name containing it."""
    if weights is None:
        return None
    text = str(getattr(weights, "value", weights)).lower()
    if text in WEIGHT_TAGS:
        return text
    for tag, hashes in (("sat493m", ("eadcf0ff", "a6675841")),):
        if tag in text or any(h in text for h in hashes):
            return tag
    return None


def create_model(
    name: str,
    pretrained: bool = False,
    weights: Any = None,
    *,
    device: torch.device | str | None = None,
    rope_periods: str = "reference",
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build a registered model, timm style.

    Args:
        name: a registry name (``list_models()``), ``_reg`` suffix accepted.
        pretrained: load weights (the model's default when ``weights`` is None; see the hub).
        weights: a tag (``"lvd1689m"``, ``"sat493m"``), a file, a folder, a URL, an ``hf-hub:`` id or a timm
            name. A tag alone with ``pretrained=False`` only selects the architecture (``sat493m`` unties the norms).
        device: build on this device; ``"meta"`` allocates no memory (for shapes and counts).
        rope_periods: for weights without stored RoPE periods (Hugging Face, timm): ``"reference"`` uses the
            bfloat16-rounded periods of the official checkpoints (outputs match Meta's model), ``"float32"`` the
            float32 periods the ports compute (outputs match ``transformers``/``timm``).
        **overrides: constructor arguments replacing the registered ones (``depth=2`` for a tiny test model).

    Returns:
        A :class:`DinoVisionTransformer` in eval mode.
    """
    spec = get_model_spec(name)
    tag = _weights_tag(weights)
    kw = spec.kwargs(tag)
    unknown = sorted(set(overrides) - set(kw) - _EXTRA_CONSTRUCTOR_ARGS)
    if unknown:
        valid = sorted(set(kw) | _EXTRA_CONSTRUCTOR_ARGS)
        hints = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
        text = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise TypeError(f"create_model({name!r}) got unknown arguments: {text}")
    kw.update(overrides)
    log.debug("create_model(%r): weights=%r pretrained=%s arguments=%s", spec.name, weights, pretrained, kw)
    model = DinoVisionTransformer(**kw, device=device)
    model.model_name = spec.name  # type: ignore[attr-defined]
    model.weights_tag = tag or (next(iter(spec.weights), None) if pretrained else None)  # type: ignore[attr-defined]
    if pretrained or (weights is not None and tag is None):
        from ..hub import load_pretrained_weights

        load_pretrained_weights(model, spec.name, weights=weights, periods=rope_periods)
    return model.eval()


_EXTRA_CONSTRUCTOR_ARGS = {"device"}


def normalization_for(weights_tag: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input ``(mean, std)`` for a weight tag: satellite statistics for ``sat493m``, ImageNet otherwise."""
    return (SAT_MEAN, SAT_STD) if weights_tag == "sat493m" else (IMAGENET_MEAN, IMAGENET_STD)


def _make_factory(model_name: str):
    def factory(*, pretrained: bool = False, weights: Any = None, **kwargs: Any) -> DinoVisionTransformer:
        return create_model(model_name, pretrained=pretrained, weights=weights, **kwargs)

    factory.__name__ = model_name
    factory.__qualname__ = model_name
    factory.__doc__ = f"Build ``{model_name}`` ({_REGISTRY[model_name].description}); see :func:`create_model`."
    return factory


dinov3_vits16 = _make_factory("dinov3_vits16")
dinov3_vits16plus = _make_factory("dinov3_vits16plus")
dinov3_vitb16 = _make_factory("dinov3_vitb16")
dinov3_vitl16 = _make_factory("dinov3_vitl16")
dinov3_vitl16plus = _make_factory("dinov3_vitl16plus")
dinov3_vith16plus = _make_factory("dinov3_vith16plus")
dinov3_vit7b16 = _make_factory("dinov3_vit7b16")
dinov3_vitg16 = _make_factory("dinov3_vitg16")
dinov3_vitl14 = _make_factory("dinov3_vitl14")
