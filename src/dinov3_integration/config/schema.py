"""The configuration schema: typed dataclasses, ``ConfigError`` and validation.

A configuration is a tree of dataclasses that mirrors the YAML file::

    model:
      backbone:   {dinov3_model, img_size, patch_size, embed_dim, depth, num_heads, n_storage_tokens,
                   pretrained, weights, intermediate_layers, normalize, overrides}
      aggregator: {enabled, embed_dim, depth, num_heads, mlp_ratio, num_register_tokens, aa_order,
                   aa_block_size, qk_norm, rope_freq, init_values, qkv_bias, proj_bias, ffn_bias,
                   output_layers, frames_chunk_size}
      freeze_backbone: false
      gradient_checkpointing: null   # null: while training (VGGT's behaviour)

``config_from_dict`` checks keys and types (unknown keys get the closest valid key as a suggestion);
``validate_config`` checks meaning (the backbone exists, declared sizes agree with it, aggregator settings are
possible). Both raise :class:`ConfigError`, which names the source (file, variant or override), the dotted key
path, the offending value and a fix. Nothing is built before a configuration has passed both.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ..models import WEIGHT_TAGS, get_model_spec
from ..utils.indices import resolve_index

AA_TYPES = ("frame", "global")

# Backbone constructor arguments that change parameter shapes (or their meaning), so pretrained weights
# cannot be loaded when an override changes them.
_WEIGHT_SHAPING_ARGS = frozenset(
    {
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "ffn_ratio",
        "ffn_layer",
        "qkv_bias",
        "ffn_bias",
        "proj_bias",
        "n_storage_tokens",
        "layerscale_init",
        "norm_layer",
        "mask_k_bias",
        "untie_cls_and_patch_norms",
        "untie_global_and_local_cls_norm",
    }
)

# Architecture fields a config may declare; each must agree with the named model (plus overrides).
_DECLARED_ARCH = ("patch_size", "embed_dim", "depth", "num_heads", "n_storage_tokens")


class ConfigError(ValueError):
    """An invalid configuration.

    Attributes:
        source: where the value came from (a file path, ``"<file> variant 'video'"``, ``"override 'a.b=1'"``...).
        key_path: dotted key path (``"model.aggregator.num_heads"``).
        value: the offending value.
        problem: what is wrong and how to fix it.
    """

    def __init__(self, source: str, key_path: str, value: Any, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.value = value
        self.problem = problem
        super().__init__(f"{source}: {key_path} = {value!r}: {problem}")


# ---------------------------------------------------------------------------------------------------- schema
@dataclass
class BackboneConfig:
    """The DINOv3 ViT (``model.backbone``).

    ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` and ``n_storage_tokens`` are declarations: ``None``
    takes the named model's value; a number must agree with it. To change the architecture itself (e.g. a tiny
    test model) use ``overrides`` (``DinoVisionTransformer`` constructor arguments, random init only).
    """

    dinov3_model: str = "dinov3_vitb16"
    img_size: int = 224
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    n_storage_tokens: int | None = None
    pretrained: bool = False
    weights: str | None = None
    intermediate_layers: list[int] = field(default_factory=list)
    normalize: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class AggregatorConfig:
    """The VGGT-style alternating-attention Aggregator (``model.aggregator``).

    ``embed_dim`` and ``num_heads`` of ``None`` take the backbone's; a different width adds a ``patch_proj``
    Linear from the backbone's patch tokens. ``output_layers`` is ``"all"`` or a list of layer indices (negative
    counts from the end); other layers are returned as ``None`` placeholders. ``rope_freq <= 0`` disables RoPE.
    """

    enabled: bool = False
    embed_dim: int | None = None
    depth: int = 24
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    aa_order: list[str] = field(default_factory=lambda: list(AA_TYPES))
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    output_layers: Union[list[int], str] = "all"
    frames_chunk_size: int | None = None


@dataclass
class ModelConfig:
    """``model``: the backbone, the aggregator and training switches."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    freeze_backbone: bool = False
    gradient_checkpointing: bool | None = None  # None: while training (VGGT's behaviour)


@dataclass
class DINOv3Config:
    """A whole configuration file (minus its ``variants``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    source: str | None = field(default=None, compare=False, repr=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists, ready for ``yaml.safe_dump`` (without ``source``)."""
        return {"model": dataclasses.asdict(self.model)}


# ---------------------------------------------------------------------------------------------------- origins
class Origins:
    """Where each key path's value came from, for error messages.

    ``set(path, source)`` records a source for a key path (and everything under it); ``of(path)`` returns the
    source of the longest recorded prefix, or the default.
    """

    def __init__(self, default: str) -> None:
        self.default = default
        self._by_path: dict[tuple[str, ...], str] = {}

    def set(self, path: tuple[str, ...], source: str) -> None:
        for key in [k for k in self._by_path if k[: len(path)] == path]:
            del self._by_path[key]
        self._by_path[path] = source

    def record_tree(self, data: Any, source: str, prefix: tuple[str, ...] = ()) -> None:
        """Record ``source`` for every leaf of a nested mapping."""
        if isinstance(data, Mapping) and data:
            for key, value in data.items():
                self.record_tree(value, source, (*prefix, str(key)))
        else:
            self.set(prefix, source)

    def of(self, path: tuple[str, ...] | str) -> str:
        if isinstance(path, str):
            path = tuple(path.split("."))
        for n in range(len(path), -1, -1):
            if path[:n] in self._by_path:
                return self._by_path[path[:n]]
        return self.default


# ---------------------------------------------------------------------------------------------------- typing
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_describe(item)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_NOT_OK = object()


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (ints become floats where a number is expected), or ``_NOT_OK``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NOT_OK:
                return out
        return _NOT_OK
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return _NOT_OK
        items = [_coerce(v, item) for v in value]
        return _NOT_OK if any(v is _NOT_OK for v in items) else items
    if origin is dict:
        return dict(value) if isinstance(value, Mapping) and all(isinstance(k, str) for k in value) else _NOT_OK
    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else _NOT_OK
    if tp is bool:
        return value if isinstance(value, bool) else _NOT_OK
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NOT_OK
    if tp is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NOT_OK
    if tp is str:
        return value if isinstance(value, str) else _NOT_OK
    raise TypeError(f"unsupported schema type {tp!r}")


def _build(cls: type, data: Any, path: tuple[str, ...], origins: Origins) -> Any:
    """Check ``data`` against dataclass ``cls`` (keys and types) and build it."""
    dotted = ".".join(path) or "<top level>"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(origins.of(path), dotted, data, f"expected a mapping of {cls.__name__} keys")
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    hints = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = (*path, str(key))
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = ".".join(path) or "the top level"
            raise ConfigError(
                origins.of(key_path),
                ".".join(key_path),
                value,
                f"unknown key {key!r}; {hint}valid keys under {where}: {', '.join(names)}",
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, key_path, origins)
            continue
        out = _coerce(value, tp)
        if out is _NOT_OK:
            raise ConfigError(
                origins.of(key_path),
                ".".join(key_path),
                value,
                f"expected {_describe(tp)}, got {type(value).__name__}",
            )
        kwargs[key] = out
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any] | None, origins: Origins | None = None) -> DINOv3Config:
    """Build a :class:`DINOv3Config` from nested mappings, checking keys and types (not meaning)."""
    return _build(DINOv3Config, data, (), origins or Origins("<dict>"))


# ---------------------------------------------------------------------------------------------------- meaning
@dataclass(frozen=True)
class ResolvedArchitecture:
    """The architecture a valid config describes (declared ``None`` values filled in)."""

    backbone_kwargs: dict[str, Any]  # DinoVisionTransformer arguments (registry values + overrides)
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    n_storage_tokens: int
    aggregator_embed_dim: int
    aggregator_num_heads: int
    loads_weights: bool


def _check_layer_indices(indices: list[int], n: int, what: str, key: str, fail: Any) -> None:
    """Every index in ``[-n, n)`` (negative counts from the end), by the rule of ``utils.indices``."""
    for i in indices:
        try:
            resolve_index(i, n)
        except ValueError:
            fail(
                key, indices, f"layer index {i} is out of range for {what} with {n} layers; use 0..{n - 1} or -{n}..-1"
            )


def _choices(key: str) -> tuple[str, ...] | None:
    """Valid values of the backbone's string-valued arguments."""
    from ..layers import NORM_LAYERS, ROPE_DTYPES
    from ..models.vision_transformer import FFN_LAYERS

    table = {"norm_layer": NORM_LAYERS, "ffn_layer": FFN_LAYERS, "pos_embed_rope_dtype": ROPE_DTYPES}
    return tuple(table[key]) if key in table else None


def _check_backbone_override(key: str, value: Any, registered: Any, fail: Any) -> None:
    """An override must have the registered value's type (ints for ints; null allowed for optional values) and,
    for ``norm_layer`` / ``ffn_layer`` / ``pos_embed_rope_dtype``, be one of the choices."""
    path = f"model.backbone.overrides.{key}"
    if isinstance(registered, bool):
        ok = isinstance(value, bool)
    elif isinstance(registered, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(registered, float):  # optional factors: null switches them off (layerscale_init: null)
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    elif isinstance(registered, str):
        ok = isinstance(value, str)
    else:  # None by default: optional numbers and strings
        ok = value is None or (isinstance(value, (int, float, str)) and not isinstance(value, bool))
    if not ok:
        kind = type(registered).__name__ if registered is not None else "a number, a string or null"
        fail(path, value, f"expected {kind} like the registered value {registered!r}, got {type(value).__name__}")
    choices = _choices(key)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(path, value, f"unknown {key}; {hint}choose one of {', '.join(choices)}")


def validate_config(config: DINOv3Config, origins: Origins | None = None) -> ResolvedArchitecture:
    """Check that ``config`` describes a model that can be built; return its resolved architecture.

    Long on purpose: one flat list of independent checks, in the order the keys appear in the file, so that every
    rule about a key is found in one place.

    Raises:
        ConfigError: naming the source, key path, value and the fix.
    """
    o = origins or Origins("<config>")
    bb, agg = config.model.backbone, config.model.aggregator

    def fail(key: str, value: Any, problem: str) -> typing.NoReturn:
        raise ConfigError(o.of(key), key, value, problem)

    # --- backbone
    try:
        spec = get_model_spec(bb.dinov3_model)
    except ValueError as err:
        fail("model.backbone.dinov3_model", bb.dinov3_model, str(err))
    tag = bb.weights if bb.weights in WEIGHT_TAGS else None
    registered = spec.kwargs(tag)
    unknown = sorted(set(bb.overrides) - set(registered))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(registered), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(
            f"model.backbone.overrides.{unknown[0]}",
            bb.overrides[unknown[0]],
            f"not a DinoVisionTransformer argument; {hint}valid: {', '.join(sorted(registered))}",
        )
    if "img_size" in bb.overrides:
        fail("model.backbone.overrides.img_size", bb.overrides["img_size"], "set model.backbone.img_size instead")
    for key, value in bb.overrides.items():
        _check_backbone_override(key, value, registered[key], fail)
    arch = {**registered, **bb.overrides}
    overridden = {k for k in bb.overrides if bb.overrides[k] != registered[k]}
    for name in _DECLARED_ARCH:
        declared = getattr(bb, name)
        if declared is not None and declared != arch[name]:
            via = " (after model.backbone.overrides)" if name in overridden else ""
            fail(
                f"model.backbone.{name}",
                declared,
                f"contradicts {spec.name}, whose {name} is {arch[name]}{via}; set it to {arch[name]} or null, or "
                f"change the architecture with model.backbone.overrides.{name} (random init only)",
            )
    for name in ("embed_dim", "depth", "num_heads", "patch_size"):
        if not isinstance(arch[name], int) or isinstance(arch[name], bool) or arch[name] < 1:
            fail(f"model.backbone.overrides.{name}", arch[name], "must be a positive integer")
    storage = arch.get("n_storage_tokens", 0)
    if not isinstance(storage, int) or isinstance(storage, bool) or storage < 0:
        fail("model.backbone.overrides.n_storage_tokens", storage, "must be an integer >= 0")
    for key, value in bb.overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"model.backbone.overrides.{key}", value, "must be a finite number")
    if arch["embed_dim"] % arch["num_heads"]:
        fail(
            "model.backbone.overrides.num_heads",
            arch["num_heads"],
            f"backbone embed_dim {arch['embed_dim']} is not divisible by {arch['num_heads']} heads",
        )
    loads_weights = bb.pretrained or (bb.weights is not None and tag is None)
    if tag is not None and spec.weights and tag not in spec.weights:
        fail(
            "model.backbone.weights",
            bb.weights,
            f"{spec.name} has no {tag!r} weights; released: {', '.join(spec.weights)} (or give a file, URL or hub id)",
        )
    if tag is not None and not bb.pretrained and registered == spec.kwargs(None):
        fail(
            "model.backbone.pretrained",
            bb.pretrained,
            f"with weights {tag!r} this would build RANDOM weights (the tag does not change the {spec.name} "
            "architecture); set pretrained: true to load them, or weights: null for random weights",
        )
    if loads_weights:
        shaping = sorted(overridden & _WEIGHT_SHAPING_ARGS)
        if shaping:
            fail(
                f"model.backbone.overrides.{shaping[0]}",
                bb.overrides[shaping[0]],
                f"changes the architecture of {spec.name}, so its pretrained weights cannot load; "
                "remove the override or set model.backbone.pretrained: false and weights: null",
            )
    p = arch["patch_size"]
    if bb.img_size < p or bb.img_size % p:
        fix = max(p, bb.img_size // p * p)
        fail("model.backbone.img_size", bb.img_size, f"must be a positive multiple of the patch size {p}; use {fix}")
    _check_layer_indices(bb.intermediate_layers, arch["depth"], spec.name, "model.backbone.intermediate_layers", fail)

    # --- aggregator
    agg_dim = arch["embed_dim"] if agg.embed_dim is None else agg.embed_dim
    agg_heads = arch["num_heads"] if agg.num_heads is None else agg.num_heads
    if agg_dim < 1:
        fail("model.aggregator.embed_dim", agg.embed_dim, "must be a positive integer or null (the backbone's width)")
    if agg_heads < 1 or agg_dim % agg_heads:
        divisors = [d for d in range(1, agg_dim + 1) if agg_dim % d == 0 and (agg_dim // d) % 4 == 0]
        divisors = sorted(sorted(divisors, key=lambda d: abs(d - agg_heads))[:3])
        fail(
            "model.aggregator.num_heads",
            agg.num_heads,
            f"the aggregator width {agg_dim} is not divisible by {agg_heads} heads; use a divisor of {agg_dim}"
            + (f" such as {', '.join(map(str, divisors))}" if divisors else ""),
        )
    if agg.rope_freq > 0 and (agg_dim // agg_heads) % 4:
        fail(
            "model.aggregator.num_heads",
            agg.num_heads,
            f"head dim {agg_dim}//{agg_heads} = {agg_dim // agg_heads} must be divisible by 4 for the 2-D RoPE "
            "(or disable RoPE with rope_freq: 0)",
        )
    if agg.depth < 1:
        fail("model.aggregator.depth", agg.depth, "must be a positive integer")
    if agg.aa_block_size < 1 or agg.depth % agg.aa_block_size:
        fail(
            "model.aggregator.aa_block_size",
            agg.aa_block_size,
            f"depth {agg.depth} is not a multiple of aa_block_size {agg.aa_block_size}; use a divisor of {agg.depth}",
        )
    bad = [t for t in agg.aa_order if t not in AA_TYPES]
    if bad:
        close = difflib.get_close_matches(bad[0], AA_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        fail(
            "model.aggregator.aa_order", agg.aa_order, f"unknown attention type {bad[0]!r}{hint}; use 'frame'/'global'"
        )
    if sorted(agg.aa_order) != sorted(AA_TYPES):
        fail("model.aggregator.aa_order", agg.aa_order, "must name 'frame' and 'global' once each, in either order")
    if isinstance(agg.output_layers, str):
        if agg.output_layers != "all":
            fail("model.aggregator.output_layers", agg.output_layers, 'use "all" or a list of layer indices')
    else:
        if not agg.output_layers:
            fail("model.aggregator.output_layers", agg.output_layers, 'keep at least one layer (or "all")')
        _check_layer_indices(agg.output_layers, agg.depth, "an aggregator", "model.aggregator.output_layers", fail)
    if agg.frames_chunk_size is not None and agg.frames_chunk_size < 1:
        fail("model.aggregator.frames_chunk_size", agg.frames_chunk_size, "must be a positive integer or null")
    if agg.num_register_tokens < 0:
        fail("model.aggregator.num_register_tokens", agg.num_register_tokens, "must be >= 0")
    for key in ("mlp_ratio", "rope_freq", "init_values"):
        value = getattr(agg, key)
        if value is not None and not math.isfinite(value):
            fail(f"model.aggregator.{key}", value, "must be a finite number")
    if agg.mlp_ratio <= 0:
        fail("model.aggregator.mlp_ratio", agg.mlp_ratio, "must be > 0")

    return ResolvedArchitecture(
        backbone_kwargs=arch,
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        patch_size=arch["patch_size"],
        n_storage_tokens=arch["n_storage_tokens"],
        aggregator_embed_dim=agg_dim,
        aggregator_num_heads=agg_heads,
        loads_weights=loads_weights,
    )
