"""Loading, merging and saving configurations (the packaged ones live in ``config/presets/``).

Precedence (later wins): schema defaults < the file < the chosen variant < dotted overrides. Mappings merge key
by key; lists and scalars are replaced. Every value remembers where it came from, so a :class:`ConfigError`
says "``my.yaml variant 'video'``" or "``override 'model.aggregator.depth=5'``" rather than just a key.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .._logging import get_logger
from .safe_yaml import safe_load
from .schema import ConfigError, DINOv3Config, Origins, config_from_dict, validate_config

log = get_logger("config")

DEFAULT_CONFIG_NAME = "dinov3_config.yaml"
_TOP_LEVEL_FILE_KEYS = ("model", "variants")


def default_config_path() -> Path:
    """Path of the packaged ``config/presets/dinov3_config.yaml`` (the default and its variants)."""
    return Path(str(resources.files("dinov3_integration").joinpath("config", "presets", DEFAULT_CONFIG_NAME)))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), "<file>", str(path), f"cannot read the file ({err.strerror or err})") from err
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        raise ConfigError(str(path), "<file>", where, f"not valid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "<top level>", data, "expected a mapping with a 'model' key")
    for key in data:
        if key not in _TOP_LEVEL_FILE_KEYS:
            close = difflib.get_close_matches(str(key), _TOP_LEVEL_FILE_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                str(path), str(key), data[key], f"unknown top-level key; {hint}valid: {', '.join(_TOP_LEVEL_FILE_KEYS)}"
            )
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``base`` (mappings recursively; anything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.aggregator.output_layers=[4, 11]"`` -> ``(["model", "aggregator", "output_layers"], [4, 11])``.

    The value is parsed with ``yaml.safe_load`` (``true``, ``0.5``, ``[1, 2]``, ``null``, ``{a: 1}``); an empty
    value is the empty string.
    """
    source = f"override {text!r}"
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(source, str(text), text, "expected 'dotted.key=value', e.g. 'model.aggregator.enabled=true'")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(source, key, raw, "the key must be a dotted path such as 'model.backbone.img_size'")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(source, key, raw, f"the value is not valid YAML ({getattr(err, 'problem', err)})") from err
    return parts, value


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            key = ".".join(parts[: i + 1])
            raise ConfigError(source, ".".join(parts), value, f"{key} is {child!r}, not a mapping, so it has no keys")
        node = child
    node[parts[-1]] = value


def _resolve_source(path_or_variant: str | Path | None, variant: str | None) -> tuple[Path, str | None]:
    """The file to read and the variant to apply."""
    if path_or_variant is None:
        return default_config_path(), variant
    path = Path(path_or_variant)
    if path.is_file():
        return path, variant
    text = str(path_or_variant)
    looks_like_file = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_file:
        raise ConfigError(text, "<file>", text, "no such file; check the path (or give a packaged variant name)")
    if variant is not None:
        raise ConfigError(
            "load_config",
            "variant",
            variant,
            f"{text!r} is not a file; give a file path with variant=, not two variants",
        )
    return default_config_path(), text


def load_config(
    path_or_variant: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
) -> DINOv3Config:
    """Load, merge and validate a configuration.

    Args:
        path_or_variant: a YAML file, the name of a variant of the packaged default (``"lightweight"``,
            ``"high_performance"``, ``"video"``), or None for the packaged default.
        overrides: dotted ``key=value`` strings (values parsed with ``yaml.safe_load``), e.g.
            ``["model.backbone.dinov3_model=dinov3_vits16", "model.aggregator.output_layers=[4, 11]"]``,
            or a mapping ``{"model.aggregator.enabled": True}``.
        variant: a variant of the file given in ``path_or_variant`` (files may define ``variants:`` too).

    Returns:
        A validated :class:`DINOv3Config` (``config.source`` says where it came from).

    Raises:
        ConfigError: unreadable file, unknown variant or key, wrong type, impossible model; the message names the
            file/variant/override, the key path and the value.
    """
    path, variant = _resolve_source(path_or_variant, variant)
    raw = _read_yaml(path)
    origins = Origins(str(path))
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, Mapping):
        raise ConfigError(str(path), "variants", variants, "expected a mapping of variant name -> partial config")
    data: dict[str, Any] = raw
    label = str(path)
    if variant is not None:
        if variant not in variants:
            close = difflib.get_close_matches(variant, list(variants), n=1, cutoff=0.4)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                str(path),
                "variants",
                variant,
                f"unknown variant; {hint}available: {', '.join(variants) or 'none (the file has no variants)'}",
            )
        patch = variants[variant] or {}
        vsource = f"{path} variant {variant!r}"
        if not isinstance(patch, Mapping):
            raise ConfigError(vsource, f"variants.{variant}", patch, "expected a partial config mapping")
        for key in patch:
            if key != "model":
                raise ConfigError(vsource, f"variants.{variant}.{key}", patch[key], "a variant may only set 'model'")
        data = deep_merge(data, patch)
        origins.record_tree(patch, vsource)
        label = vsource
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        items = [(str(k).split("."), v, f"{k}={v!r}") for k, v in overrides.items()]
    else:
        items = [(*parse_override(t), t) for t in overrides or ()]
    for parts, value, text in items:
        source = f"override {text!r}"
        _set_dotted(data, parts, value, source)
        origins.set(tuple(parts), source)
    config = config_from_dict(data, origins)
    validate_config(config, origins)
    config.source = label + (f" + {len(items)} override(s)" if items else "")
    log.debug("loaded config from %s: %s", config.source, config)
    return config


def list_variants(path: str | Path | None = None) -> list[str]:
    """Names of the variants in ``path`` (default: the packaged config)."""
    raw = _read_yaml(Path(path) if path is not None else default_config_path())
    return list(raw.get("variants") or {})


def save_config(config: DINOv3Config, path: str | Path) -> Path:
    """Write ``config`` as YAML (all keys, explicit values) to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)
    path.write_text(text, encoding="utf-8")
    return path
