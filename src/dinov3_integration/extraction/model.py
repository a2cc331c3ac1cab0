"""The model an extraction runs: built from the options (``model``, ``weights``, ``random_weights``,
``model_kwargs``, ``seed``), identified by a digest of its state dict; compute dtypes."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..utils.redact import redact_text
from .errors import ExtractionError
from .options import parse_model_kwargs, weights_identity

__all__ = ["LoadedModel", "autocast", "build_model", "compute_dtype", "state_dict_digest"]


@dataclass
class LoadedModel:
    """A model ready for inference plus what identifies its weights (``digest``: :func:`state_dict_digest`,
    computed on first use and kept: hashing every weight costs seconds for the large models, and ``dinov3 pca``
    never asks)."""

    model: Any
    name: str
    weights: str
    weights_tag: str | None
    model_kwargs: dict[str, Any]
    _digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = state_dict_digest(self.model)
        return self._digest


def state_dict_digest(model: Any) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): identifies the weights that ran."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


_MODEL_CACHE: dict[str, LoadedModel] = {}


def build_model(args: argparse.Namespace, device: Any, *, allow_random: bool | None = None) -> LoadedModel:
    """Create ``args.model`` with ``args.weights`` (or random weights when allowed) on ``device``, in eval mode.

    The last model built is reused when a later call in the same process asks for the same one (``dinov3 demo``
    runs several sub-commands); models are only used for inference, so sharing is safe.
    """
    import torch

    from ..models import create_model

    kwargs = parse_model_kwargs(getattr(args, "model_kwargs", None))
    random = args.random_weights if allow_random is None else allow_random
    cache_key = json.dumps(
        [args.model, args.weights, weights_identity(args), random, args.seed, kwargs, str(device)],
        sort_keys=True,
        default=str,
    )
    if cache_key in _MODEL_CACHE:
        return _MODEL_CACHE[cache_key]
    try:
        if args.weights is None and random:
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
                torch.manual_seed(args.seed)
                model = create_model(args.model, pretrained=False, **kwargs)
            label = f"random(seed={args.seed})"
        else:
            model = create_model(args.model, pretrained=True, weights=args.weights, **kwargs)
            label = redact_text(str(args.weights)) if args.weights is not None else f"{args.model} default"
    except (TypeError, ValueError) as exc:
        raise ExtractionError(redact_text(str(exc))) from exc
    except Exception as exc:  # weights not found, download refused, bad checkpoint ...
        if args.weights is None:
            raise ExtractionError(
                f"could not load default weights for {args.model}: {redact_text(str(exc))}\n"
                "Pass --weights FILE|URL|hf-hub:ID (see `dinov3 models` for the released weights), "
                "or --random-weights to run with random weights (testing only)."
            ) from exc
        raise ExtractionError(
            f"could not load weights {redact_text(str(args.weights))!r} for {args.model}: {redact_text(str(exc))}"
        ) from exc
    model = model.to(device).eval()
    _MODEL_CACHE.clear()
    _MODEL_CACHE[cache_key] = loaded = LoadedModel(
        model=model,
        name=getattr(model, "model_name", args.model),
        weights=label,
        weights_tag=getattr(model, "weights_tag", None),
        model_kwargs=kwargs,
    )
    return loaded


def compute_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: Any, dtype: Any):  # noqa: ANN201
    """Autocast to ``dtype`` on ``device`` (a no-op for float32)."""
    import contextlib

    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
