"""What an extraction runs on each batch: the backbone's features or a clip through the Aggregator; progress."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .._logging import get_logger
from .errors import ExtractionError
from .model import LoadedModel, autocast
from .options import parse_model_kwargs

log = get_logger("extract")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``3700`` -> ``"1h01m40s"``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class BackboneRunner:
    """Per-frame DINOv3 features: ``cls``/``patch``/``storage`` of the chosen blocks."""

    def __init__(
        self,
        loaded: LoadedModel,
        layers: list[int],
        kinds: list[str],
        norm: Any,
        device: Any,
        dtype: Any,
        save_dtype: Any,
    ) -> None:
        self.model = loaded.model
        self.layers = layers
        self.kinds = kinds
        self.norm = norm
        self.device = device
        self.dtype = dtype
        self.save_dtype = save_dtype

    def keys(self) -> list[str]:
        return [f"{kind}.{layer}" for layer in self.layers for kind in self.kinds]

    def __call__(self, pixels: Any) -> dict[str, Any]:
        """uint8 ``[B, 3, H, W]`` -> ``{"patch.L": [B, h, w, D], "cls.L": [B, D], "storage.L": [B, R, D]}`` (CPU)."""
        import torch

        from ..data.preprocess import normalize

        with torch.inference_mode():
            x = normalize(pixels.to(self.device, non_blocking=True), self.norm)
            B, _, H, W = x.shape
            p = self.model.patch_size
            with autocast(self.device, self.dtype):
                outs = self.model.get_intermediate_layers(
                    x, n=self.layers, return_class_token=True, return_extra_tokens=True, norm=True
                )
            result = {}
            for layer, (patch, cls, storage) in zip(self.layers, outs):
                tensors = {"patch": patch.reshape(B, H // p, W // p, patch.shape[-1]), "cls": cls, "storage": storage}
                for kind in self.kinds:
                    result[f"{kind}.{layer}"] = tensors[kind].to(self.save_dtype).cpu()
            return result


class AggregateRunner:
    """A whole clip through the VGGT-style Aggregator: ``aggregated.J`` ``[S, P, 2C]``."""

    def __init__(self, aggregator: Any, layers: list[int], device: Any, dtype: Any, save_dtype: Any) -> None:
        self.aggregator = aggregator
        self.layers = layers
        self.device = device
        self.dtype = dtype
        self.save_dtype = save_dtype
        self.patch_start_idx: int | None = getattr(aggregator, "patch_start_idx", None)

    def keys(self) -> list[str]:
        return [f"aggregated.{layer}" for layer in self.layers]

    def __call__(self, frames: Any) -> dict[str, Any]:
        """uint8 ``[S, 3, H, W]`` -> ``{"aggregated.L": [S, P, 2C]}`` for each kept layer ``L``, on the CPU (input in
        [0, 1], no normalisation: the Aggregator normalises inside)."""
        import torch

        from ..data.preprocess import to_unit_float

        with torch.inference_mode():
            x = to_unit_float(frames.to(self.device, non_blocking=True))[None]  # [1, S, 3, H, W]
            with autocast(self.device, self.dtype):
                output_list, patch_start_idx = self.aggregator(x, output_layers=self.layers)
            self.patch_start_idx = int(patch_start_idx)
            return {
                f"aggregated.{layer}": out[0].to(self.save_dtype).cpu() for layer, out in zip(self.layers, output_list)
            }


# CLI names of --normalization -> utils.normalization names.
_NORMALIZATION_NAMES = {"auto": "auto", "imagenet": "imagenet", "sat493m": "sat"}


def build_aggregator(args: argparse.Namespace, loaded: LoadedModel, device: Any) -> tuple[Any, dict[str, Any]]:
    """The VGGT-style Aggregator with the loaded DINOv3 model (and its weights) as its patch embedding.

    Assembled by :func:`dinov3_integration.integrated.build_aggregator`. With ``--aggregator-weights`` (a
    VGGT-format state dict; the checkpoint's ``patch_embed.*`` entries are ignored: the backbone comes from
    ``--weights``) its blocks are built on the ``meta`` device and take the checkpoint's tensors with
    ``assign=True`` (:func:`~dinov3_integration.integrated.load_aggregator_checkpoint`: no random initialisation); a ``patch_proj``
    the checkpoint lacks is initialised with ``--seed``, as in a random build. Without, its blocks are seeded with
    ``--seed``.
    """
    import torch

    from ..integrated import build_aggregator as assemble
    from ..integrated import load_aggregator_checkpoint

    overrides = parse_model_kwargs(args.aggregator_kwargs, option="--aggregator-kwargs")
    on_meta = {"device": "meta"} if args.aggregator_weights else {}  # a --aggregator-kwargs device= still wins
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            aggregator = assemble(
                loaded.model,
                normalization=_NORMALIZATION_NAMES.get(args.normalization, args.normalization),
                **{**on_meta, **overrides},
            )
    except (TypeError, ValueError) as exc:
        raise ExtractionError(f"cannot build the Aggregator with --aggregator-kwargs {overrides}: {exc}") from exc
    if args.aggregator_weights:
        try:
            state = _load_state_dict(args.aggregator_weights)
            load_aggregator_checkpoint(aggregator, state, seed=args.seed, device=device)
        except ExtractionError:
            raise
        except Exception as exc:
            raise ExtractionError(f"--aggregator-weights {args.aggregator_weights}: {exc}") from exc
    model = loaded.model
    kwargs: dict[str, Any] = {
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        "num_heads": getattr(model, "num_heads", max(1, model.embed_dim // 64)),
        **overrides,
        "patch_embed": loaded.name,
        "normalization": [list(v) for v in aggregator.normalization],
    }
    return aggregator.to(device).eval(), kwargs


def _load_state_dict(path: str) -> dict[str, Any]:
    """The hub's safe reader (``weights_only=True`` / safetensors; ``model``/``state_dict`` wrappers unwrapped)."""
    from ..hub.checkpoint_io import load_state_dict_file

    if not os.path.isfile(path):
        raise ExtractionError(f"--aggregator-weights {path!r} does not exist")
    return load_state_dict_file(path)


class Progress:
    """A tqdm bar on a terminal (items/s and ETA), periodic log lines otherwise, nothing with ``quiet``."""

    def __init__(self, total: int, *, quiet: bool, show_bar: bool, interval: float, desc: str = "extract") -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.quiet = quiet
        self.interval = interval
        self.start = time.monotonic()
        self.last_log = self.start
        self.desc = desc
        self.bar = None
        if not quiet and show_bar and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def update(self, n: int = 1, *, failed: bool = False) -> None:
        self.done += n
        self.failed += int(failed)
        if self.bar is not None:
            self.bar.update(n)
            if self.failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.monotonic()
        if not self.quiet and (now - self.last_log >= self.interval):
            self.last_log = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = format_seconds(eta) if eta == eta else "?"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.desc}: {self.done}/{self.total} inputs ({pct:.0f}%), {rate:.2f} items/s, ETA {eta_text}{failed}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
