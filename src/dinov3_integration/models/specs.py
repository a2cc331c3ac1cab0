"""The model specs: pure data about every registered DINOv3 ViT (architecture, released weights, where they live).

One :class:`ModelSpec` per name holds everything the rest of the package needs to know about a model without
building it: the constructor arguments (on top of :data:`HUB_DEFAULTS`), the released weight tags with the SHA-256
prefix of the official files, whether Meta publishes it on the Hugging Face Hub, the timm architecture name, the
satellite settings, and the model whose weights it uses (``dinov3_vitl14`` uses ViT-L/16 weights).

Names follow the reference hub (``dinov3_<arch><patch>[plus]``); a ``_reg`` suffix is accepted as an alias
(``dinov3_vitl16_reg`` is ``dinov3_vitl16``: every DINOv3 ViT has 4 storage "register" tokens). Satellite settings
of ``dinov3_vitl16`` / ``dinov3_vit7b16`` are selected with the tag ``"sat493m"``, as the reference does.

To add a model: one :func:`register` call below (and its released files in ``weights``); nothing else.
This module imports no other part of the package except the leaf ``utils``: the hub and the factory read it.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ..utils.normalization import IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD

__all__ = [
    "HF_ORG",
    "HF_WEIGHT_FILES",
    "HUB_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAT_MEAN",
    "SAT_STD",
    "SAT_TAG",
    "SWIGLU_ALIGN",
    "TIMM_ARCHS",
    "WEIGHT_TAGS",
    "ModelSpec",
    "get_model_spec",
    "head_dim_for",
    "list_models",
    "normalization_for",
    "official_filename",
    "register",
    "tag_in_name",
    "weights_spec",
]

# Arguments every released DINOv3 ViT shares (the reference hub's ``_make_dinov3_vit`` defaults).
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

WEIGHT_TAGS = ("lvd1689m", "sat493m")
"""Released weight tags: web images (LVD-1689M) and satellite images (SAT-493M)."""
SAT_TAG = "sat493m"

SWIGLU_ALIGN: dict[str, int] = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}
"""``ffn_layer`` name -> the multiple the SwiGLU hidden width is rounded up to (reference ``ffn_layer_dict``)."""

HF_ORG = "facebook"
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files of a Hugging Face model folder or repository, in the order they are tried."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture.

    Attributes:
        name: registry name (``dinov3_vits16``).
        arch: architecture arguments on top of :data:`HUB_DEFAULTS`.
        weights: released weight tags with the official file hash prefix (``{"lvd1689m": "08c60483"}``).
        sat_overrides: arguments that change with ``weights="sat493m"``.
        description: one line for listings.
        on_hf: Meta publishes the weights on the Hugging Face Hub (``facebook/dinov3-<arch>-pretrain-<tag>``).
        timm_arch: timm's architecture name (``vit_small_patch16_dinov3``), if timm has the model.
        weights_from: the registered model whose released weights this one uses (``dinov3_vitl14``: ViT-L/16's,
            patch kernel resampled); ``None`` for itself.
    """

    name: str
    arch: dict[str, Any]
    weights: dict[str, str] = field(default_factory=dict)
    sat_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    on_hf: bool = False
    timm_arch: str | None = None
    weights_from: str | None = None

    def kwargs(self, weights: str | None = None) -> dict[str, Any]:
        """Constructor arguments for this model (with the satellite settings when ``weights == "sat493m"``)."""
        kw = {**HUB_DEFAULTS, **self.arch}
        if weights == SAT_TAG:
            kw.update(self.sat_overrides)
        return kw

    @property
    def head_dim(self) -> int:
        return int(self.arch["embed_dim"]) // int(self.arch["num_heads"])


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a :class:`ModelSpec` to the registry (names must be unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _mlp(dim: int, depth: int, heads: int) -> dict[str, Any]:
    return {
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "ffn_ratio": 4.0,
        "ffn_layer": "mlp",
        "qkv_bias": True,
    }


def _swiglu(dim: int, depth: int, heads: int) -> dict[str, Any]:
    return {
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "ffn_ratio": 6.0,
        "ffn_layer": "swiglu",
        "qkv_bias": True,
    }


for _spec in (
    ModelSpec(
        "dinov3_vits16",
        _mlp(384, 12, 6),
        {"lvd1689m": "08c60483"},
        description="ViT-S/16 distilled, 21M",
        on_hf=True,
        timm_arch="vit_small_patch16_dinov3",
    ),
    ModelSpec(
        "dinov3_vits16plus",
        _swiglu(384, 12, 6),
        {"lvd1689m": "4057cbaa"},
        description="ViT-S+/16 distilled (SwiGLU), 29M",
        on_hf=True,
        timm_arch="vit_small_plus_patch16_dinov3",
    ),
    ModelSpec(
        "dinov3_vitb16",
        _mlp(768, 12, 12),
        {"lvd1689m": "73cec8be"},
        description="ViT-B/16 distilled, 86M",
        on_hf=True,
        timm_arch="vit_base_patch16_dinov3",
    ),
    ModelSpec(
        "dinov3_vitl16",
        _mlp(1024, 24, 16),
        {"lvd1689m": "8aa4cbdd", "sat493m": "eadcf0ff"},
        sat_overrides={"untie_global_and_local_cls_norm": True},
        description="ViT-L/16 distilled, 300M (web or satellite weights)",
        on_hf=True,
        timm_arch="vit_large_patch16_dinov3",
    ),
    ModelSpec(
        "dinov3_vitl16plus",
        _swiglu(1024, 24, 16),
        {"lvd1689m": "46503df0"},
        description="ViT-L+/16 distilled (SwiGLU), 404M",
    ),  # not on the Hugging Face Hub
    ModelSpec(
        "dinov3_vith16plus",
        _swiglu(1280, 32, 20),
        {"lvd1689m": "7c1da9a5"},
        description="ViT-H+/16 distilled (SwiGLU), 841M",
        on_hf=True,
        timm_arch="vit_huge_plus_patch16_dinov3",
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
        on_hf=True,
        timm_arch="vit_7b_patch16_dinov3",
    ),
    ModelSpec("dinov3_vitg16", _mlp(1536, 40, 24), description="ViT-g/16 (1536 wide, 40 deep); no released weights"),
    ModelSpec(
        "dinov3_vitl14",
        {**_mlp(1024, 24, 16), "patch_size": 14},
        description="ViT-L with 14-pixel patches; loads ViT-L/16 weights with a resampled patch kernel",
        weights_from="dinov3_vitl16",
    ),
):
    register(_spec)

TIMM_ARCHS: dict[str, str] = {s.timm_arch: s.name for s in _REGISTRY.values() if s.timm_arch}
"""timm architecture name -> registry name."""


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


def weights_spec(name: str) -> ModelSpec:
    """The spec whose released weights ``name`` uses: itself, or its ``weights_from`` model."""
    spec = get_model_spec(name)
    return get_model_spec(spec.weights_from) if spec.weights_from else spec


def official_filename(name: str, tag: str) -> str | None:
    """The official file name (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``), ``None`` if not released."""
    spec = weights_spec(name)
    if tag not in spec.weights:
        return None
    return f"{spec.name}_pretrain_{tag}-{spec.weights[tag]}.pth"


def hf_repo_id(name: str, tag: str) -> str | None:
    """The Hugging Face repository Meta publishes these weights in (``None`` if there is none)."""
    spec = weights_spec(name)
    if not spec.on_hf or tag not in spec.weights:
        return None
    return f"{HF_ORG}/dinov3-{spec.name.removeprefix('dinov3_')}-pretrain-{tag}"


def tag_in_name(text: str) -> str | None:
    """The weight tag a name or path reveals: the tag itself, or the hash prefix of an official file of that tag.

    >>> tag_in_name("/w/dinov3_vit7b16_pretrain_sat493m-a6675841.pth"), tag_in_name("weights/eadcf0ff.pth")
    ('sat493m', 'sat493m')
    """
    lowered = text.lower()
    for tag in WEIGHT_TAGS:
        if tag in lowered:
            return tag
    for spec in _REGISTRY.values():
        for tag, digest in spec.weights.items():
            if tag == SAT_TAG and digest in lowered:
                return tag
    return None


def head_dim_for(embed_dim: int, depth: int | None = None) -> int:
    """The head width of the registered model of this width (and depth, when given); 64 when none matches."""
    for spec in _REGISTRY.values():
        if spec.arch["embed_dim"] == embed_dim and (depth is None or spec.arch["depth"] == depth):
            return spec.head_dim
    return 64


def normalization_for(weights_tag: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input ``(mean, std)`` for a weight tag: satellite statistics for ``sat493m``, ImageNet otherwise."""
    return (SAT_MEAN, SAT_STD) if weights_tag == SAT_TAG else (IMAGENET_MEAN, IMAGENET_STD)
