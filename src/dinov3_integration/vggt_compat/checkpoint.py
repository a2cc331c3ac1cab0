"""Reading VGGT checkpoints into an :class:`~dinov3_integration.vggt_compat.Aggregator`, and reporting misfits.

- :func:`read_vggt_checkpoint`: a state dict from a mapping, a file, a folder or a Hugging Face hub id. Files are
  read only with :func:`dinov3_integration.hub.checkpoint_io.load_state_dict_file` (safetensors, or
  ``torch.load(weights_only=True)``; there is no other reader).
- :func:`extract_aggregator_state_dict`: the ``aggregator.*`` part of a full VGGT (or Spatial-MLLM) state dict.
- :func:`load_aggregator_weights`: compare (:func:`dinov3_integration.hub.mismatch.compare_state_dicts`, the one
  reporter), refuse what must not load (another backbone family's tensors), report every bad key by name
  (:class:`StateDictMismatchError`) and load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._logging import get_logger
from ..hub.checkpoint_io import load_state_dict_file, unwrap_state_dict
from ..hub.download import hf_download
from ..hub.errors import WeightsMismatchError
from ..hub.loading import assign_state_dict
from ..hub.mismatch import StateDictMismatch, compare_state_dicts
from .patch_embeds import new_patch_proj

__all__ = [
    "BackboneFamilyError",
    "StateDictMismatchError",
    "VGGTLoadResult",
    "VGGT_WEIGHT_FILES",
    "extract_aggregator_state_dict",
    "fits_meta_build",
    "load_aggregator_weights",
    "mismatch_message",
    "patch_embed_family",
    "read_vggt_checkpoint",
]

log = get_logger("vggt_compat")

VGGT_WEIGHT_FILES = ("model.safetensors", "model.pt")
"""File names of a VGGT weights folder or hub repository (``facebook/VGGT-1B``), in order of preference."""

_MAX_LISTED_KEYS = 40
_AGG_PREFIX = re.compile(r"^(?:.*?\.)?aggregator\.")

Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]


class StateDictMismatchError(WeightsMismatchError):
    """A checkpoint does not fit the Aggregator; ``missing_keys``, ``unexpected_keys`` and ``mismatched`` list why."""

    def __init__(
        self, message: str, missing_keys: list[str], unexpected_keys: list[str], mismatched: list[Mismatch]
    ) -> None:
        super().__init__(message)
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.mismatched = mismatched


class BackboneFamilyError(StateDictMismatchError):
    """The checkpoint's ``patch_embed.*`` is another backbone family (e.g. DINOv2 tensors for a DINOv3 backbone).

    Raised whatever ``strict`` says: such tensors never load (names that coincide would build a silent hybrid).
    """


class VGGTLoadResult(NamedTuple):
    """What :meth:`Aggregator.load_vggt_state_dict` did (keys are relative to the Aggregator)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched: list[Mismatch]
    ignored_keys: list[str]


# ------------------------------------------------------------------------------------------------ reading


def read_vggt_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any], revision: str | None = None
) -> Mapping[str, Any]:
    """A state dict from a mapping (returned as is), a file, a folder or a Hugging Face hub id (``"org/name"``).

    A folder or hub repository must hold one of :data:`VGGT_WEIGHT_FILES`.
    """
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a state dict, a path or a hub id, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_file():
        return load_state_dict_file(path, unwrap=False)
    if path.is_dir():
        for name in VGGT_WEIGHT_FILES:
            if (path / name).is_file():
                return load_state_dict_file(path / name, unwrap=False)
        raise FileNotFoundError(f"no {' or '.join(VGGT_WEIGHT_FILES)} in the folder {path}")
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return load_state_dict_file(_download_from_hub(text, revision), unwrap=False)
    raise FileNotFoundError(f"VGGT weights not found: {text!r} is neither a file, a folder nor a hub id ('org/name')")


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    errors = []
    for name in VGGT_WEIGHT_FILES:
        try:
            return hf_download(repo_id, name, revision=revision)
        except Exception as exc:  # try the next file name, report all failures below
            errors.append(f"{name}: {exc}")
    raise FileNotFoundError(f"could not fetch VGGT weights from the hub repo {repo_id!r}:\n" + "\n".join(errors))


def extract_aggregator_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """Aggregator weights (keys relative to the Aggregator) and the keys that were left out.

    Accepts a full VGGT state dict (``aggregator.*`` next to ``camera_head.*``, ``depth_head.*`` ...), a model
    that holds VGGT under a longer prefix (``spatial_encoder.vggt_model.aggregator.*``; the prefix must be unique)
    or an Aggregator-only state dict (returned as is). Training wrappers (``{"model": ...}``, ``module.``) are
    unwrapped first.
    """
    sd = unwrap_state_dict(state_dict)
    prefixes = {m.group(0) for k in sd if (m := _AGG_PREFIX.match(k))}
    if not prefixes:
        return dict(sd), []
    if len(prefixes) > 1:
        raise ValueError(
            f"the checkpoint holds several aggregators ({sorted(prefixes)}); pass the state dict of one of them"
        )
    prefix = prefixes.pop()
    kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    ignored = [k for k in sd if not k.startswith(prefix)]
    if ignored:
        heads = sorted({k.split(".")[0] for k in ignored})
        log.info("ignoring %d non-aggregator checkpoint entries (%s)", len(ignored), ", ".join(heads))
    return kept, ignored


# ------------------------------------------------------------------------------------------------ families


def patch_embed_family(keys: Any) -> str | None:
    """The backbone family of the ``patch_embed.*`` keys among ``keys``: ``"conv"``, ``"dinov2"``, ``"dinov3"``.

    ``None`` when there are no ``patch_embed.*`` keys or they fit none of the three layouts.
    """
    pe = {k[len("patch_embed.") :] for k in keys if k.startswith("patch_embed.")}
    if not pe:
        return None
    if "pos_embed" in pe:  # DINOv2's learned position embedding (VGGT's ViT)
        return "dinov2"
    if "storage_tokens" in pe or any(k.startswith("rope_embed.") for k in pe) or "cls_token" in pe:
        return "dinov3"  # DINOv3 has RoPE and no pos_embed
    if pe <= {"proj.weight", "proj.bias"}:
        return "conv"
    return None


_FAMILY_NAMES = {"conv": "a conv patch embedding", "dinov2": "VGGT's DINOv2 ViT", "dinov3": "a DINOv3 ViT"}


def _family_error(found: str, model_kind: str, missing: list[str], unexpected: list[str]) -> BackboneFamilyError:
    lines = [
        f"the checkpoint's patch_embed.* tensors are {_FAMILY_NAMES[found]}, but this Aggregator's patch embedding "
        f"is {_FAMILY_NAMES[model_kind]}: they are never loaded into each other (whatever strict says: "
        "names that coincide would make a silent hybrid)."
    ]
    if model_kind == "dinov3":
        lines.append(
            "To keep the checkpoint's frame/global blocks and tokens and take the patch embedding from DINOv3 weights, "
            "pass patch_embed_weights: Aggregator.from_vggt(checkpoint, patch_embed='<dinov3 name>', "
            "patch_embed_weights=True) (the default weights), a tag such as 'lvd1689m', or a file/hub id; "
            "load_vggt_state_dict(..., skip_patch_embed=True) keeps the backbone as it is."
        )
    else:
        lines.append(
            "Build the Aggregator with the checkpoint's patch embedding (VGGT-1B: patch_embed='dinov2_vitl14_reg'), "
            "or keep this one's weights with load_vggt_state_dict(..., skip_patch_embed=True)."
        )
    return BackboneFamilyError("\n".join(lines), missing, unexpected, [])


# ------------------------------------------------------------------------------------------------ loading


def load_aggregator_weights(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    patch_embed_kind: str,
    strict: bool = True,
    skip_patch_embed: bool = False,
    device: torch.device | str | None = None,
) -> VGGTLoadResult:
    """Load VGGT weights (full VGGT or Aggregator-only keys) into the Aggregator ``module``.

    ``patch_proj.*`` may be absent (a new layer, left at its init). With ``skip_patch_embed`` the checkpoint's
    ``patch_embed.*`` entries are ignored. ``patch_embed_kind`` is the module's backbone family (``"conv"``,
    ``"dinov2"``, ``"dinov3"`` or ``"module"``). A module built on the ``meta`` device is loaded with
    ``assign=True`` (:func:`~dinov3_integration.hub.loading.assign_state_dict`; its tensors go to ``device``,
    default CPU) and an absent ``patch_proj`` is then initialised for real.

    Raises:
        BackboneFamilyError: the checkpoint's patch embedding is of another family (whatever ``strict`` says).
        StateDictMismatchError: with ``strict``, when keys are missing, unexpected or of the wrong shape (all listed
            by name). Without ``strict`` they are logged and the rest is loaded.
        WeightsMismatchError: a module on ``meta`` would keep tensors the checkpoint lacks (build it on a device).
    """
    own, sd, ignored, optional, report = _plan(module, state_dict, skip_patch_embed)
    missing, unexpected = report.missing, report.unexpected
    mismatched = [*report.wrong_shape, *((k, tuple(sd[k].shape), tuple(own[k].shape)) for k, *_ in report.wrong_kind)]
    found = patch_embed_family(sd)
    if found is not None and patch_embed_kind in _FAMILY_NAMES and found != patch_embed_kind:
        raise _family_error(found, patch_embed_kind, missing, unexpected)
    if any(k.startswith("patch_proj.") for k in own) and "patch_proj." in optional:
        log.warning("patch_proj is not in the checkpoint (a new layer): it keeps its initialisation; train it")
    if report:
        message = mismatch_message(report)
        if strict:
            raise StateDictMismatchError(message, missing, unexpected, mismatched)
        log.warning("%s", message)
    bad = report.unusable
    kept = {k: v for k, v in sd.items() if k in own and k not in bad}
    if any(t.is_meta for t in own.values()):
        _assign(module, own, kept, device)
    else:
        module.load_state_dict(kept, strict=False)
    return VGGTLoadResult(missing, unexpected, mismatched, ignored)


def fits_meta_build(module: nn.Module, state_dict: Mapping[str, Any], *, skip_patch_embed: bool = False) -> bool:
    """Whether ``state_dict`` holds every tensor of the Aggregator ``module`` with the right shape and kind (an
    absent ``patch_proj`` excepted, and ``patch_embed`` with ``skip_patch_embed``; unexpected keys do not matter): a
    ``meta`` build of it loads."""
    report = _plan(module, state_dict, skip_patch_embed)[-1]
    return not report.missing and not report.unusable


def _plan(
    module: nn.Module, state_dict: Mapping[str, Any], skip_patch_embed: bool
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str], list[str], StateDictMismatch]:
    """The module's tensors, the checkpoint's Aggregator tensors, the keys ignored, the optional prefixes and the
    comparison (:func:`~dinov3_integration.hub.mismatch.compare_state_dicts`)."""
    own = module.state_dict(keep_vars=True)
    sd, ignored = extract_aggregator_state_dict(state_dict)
    if skip_patch_embed:
        dropped = [k for k in sd if k.startswith("patch_embed.")]
        for k in dropped:
            del sd[k]
        ignored += dropped
        if dropped:
            log.info(
                "ignored %d patch_embed.* checkpoint entries (patch embedding weights come from elsewhere)",
                len(dropped),
            )
    optional = ["patch_embed."] if skip_patch_embed else []
    if not any(k.startswith("patch_proj.") for k in sd):
        optional.append("patch_proj.")
    return own, sd, ignored, optional, compare_state_dicts(sd, own, optional=optional)


def _assign(module: nn.Module, own: Mapping[str, Tensor], kept: dict[str, Tensor], device: Any) -> None:
    """Load ``kept`` into ``module`` built on ``meta``; a ``patch_proj`` the checkpoint lacks is initialised."""
    proj = getattr(module, "patch_proj", None)
    if isinstance(proj, nn.Linear) and proj.weight.is_meta and "patch_proj.weight" not in kept:
        module.patch_proj = new_patch_proj(proj.in_features, proj.out_features)  # as the constructor does
    left = [k for k, t in own.items() if t.is_meta and k not in kept and not k.startswith("patch_proj.")]
    if left:
        raise WeightsMismatchError(
            f"this Aggregator is on the meta device and the checkpoint lacks {len(left)} of its tensors "
            f"({', '.join(left[:4])}{', ...' if len(left) > 4 else ''}): they cannot keep an initialisation. Build "
            "it on a device (Aggregator(...) without device='meta'); Aggregator.from_vggt(..., strict=False) does."
        )
    if module.patch_proj is not proj:
        own = {k: v for k, v in own.items() if not k.startswith("patch_proj.")}
    assign_state_dict(module, kept, strict=False, device=device, owner="Aggregator.from_vggt", own=own)


def mismatch_message(report: StateDictMismatch) -> str:
    """The hub's one mismatch summary (:mod:`dinov3_integration.hub.mismatch`, up to 40 keys per kind by name) and
    what to check."""
    lines = [f"the checkpoint does not match this Aggregator: {report.summary(limit=_MAX_LISTED_KEYS)}"]
    if report.wrong_shape:
        lines.append("Check embed_dim, num_heads, mlp_ratio, num_register_tokens and img_size/patch_size.")
    if any(k.startswith("patch_embed.") for k in report.missing + report.unexpected):
        lines.append(
            "Check that patch_embed matches the checkpoint (VGGT-1B uses 'dinov2_vitl14_reg'), or keep the "
            "backbone's own weights with skip_patch_embed=True (from_vggt: patch_embed_weights=...)."
        )
    return "\n".join(lines)
