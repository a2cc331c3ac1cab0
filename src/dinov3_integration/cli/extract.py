"""``dinov3 extract``: batch feature extraction to one safetensors file per input.

Outputs (under ``--out``):

* ``<key>.safetensors`` per input, where ``<key>`` mirrors the input's path below its argument
  (``photos/a/b.jpg`` -> ``a/b.jpg.safetensors``). Tensors, for each requested block ``L``:

  - ``cls.L`` ``[D]``, ``patch.L`` ``[h, w, D]`` (row-major patch grid), ``storage.L`` ``[R, D]`` for an image;
  - the same with a leading frame axis ``[T, ...]`` for a video or a clip, plus ``frame_indices`` ``[T]``
    (int64) and ``frame_times`` ``[T]`` (float64, seconds) for a video;
  - with ``--aggregate``: ``aggregated.L`` ``[S, P, 2C]`` for each kept Aggregator layer ``L`` (``P`` = camera and
    register tokens, then the patches from ``patch_start_idx`` on, which is in the metadata).

  Metadata (strings): model, weights and ``weights_digest`` (SHA-256 of the state dict that ran), resolution,
  size, grid, preprocessing, layers, library version, the source path and a ``config_digest`` used by
  ``--resume``. Read them back with :func:`read_features`.
* ``manifest.jsonl``: one line per input (``input``, ``kind``, ``output``, ``status`` = ok / cached / failed,
  ``error``, ``frames``), sorted by input path.

Files are written atomically (temporary file in the same folder, then ``os.replace``), so a killed run leaves
only complete files; ``--resume`` (the default) skips inputs whose output is readable and was made with the same
settings from the same source file, so restarting the same command finishes the job without duplicates.

Under ``torchrun --nproc_per_node N`` every rank takes inputs ``i % N == rank`` of the sorted list, runs on
``cuda:LOCAL_RANK`` (or the CPU), writes its own outputs and ``manifest.rank<r>.jsonl``; rank 0 merges them into
``manifest.jsonl`` after a barrier.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ._common import (
    CLIError,
    DistContext,
    LoadedModel,
    add_model_args,
    atomic_path,
    autocast,
    build_model,
    compute_dtype,
    dist_env,
    format_seconds,
    init_distributed,
    library_version,
    parse_model_kwargs,
    read_jsonl,
    remove_stale_temps,
    resolve_device,
    setup_logging,
    state_dict_digest,
    write_jsonl,
)

log = get_logger("extract")

FORMAT = "dinov3_integration.features/1"
SAVE_KINDS = ("cls", "patch", "storage")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_VIDEO_FRAMES = 16
MANIFEST = "manifest.jsonl"
# Test hook: exit abruptly (like a kill) after this many outputs were written.
EXIT_AFTER_ENV = "DINOV3_EXTRACT_EXIT_AFTER"

EPILOG = """examples:
  dinov3 extract photos/ --out feats --weights ~/ckpt/dinov3_vits16_pretrain_lvd1689m-08c60483.pth
  dinov3 extract list.txt --out feats --weights lvd1689m --layers -4,-3,-2,-1 --save cls,patch --save-dtype float16
  dinov3 extract clip.mp4 --out feats --weights lvd1689m --fps 2
  torchrun --nproc_per_node 8 -m dinov3_integration extract data/ --out feats --weights lvd1689m
"""


# ---------------------------------------------------------------------------------------------------------- parser
def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "extract",
        help="extract DINOv3 features from images, folders, videos or a list file",
        description="Extract DINOv3 features to one safetensors file per input, plus a manifest.jsonl.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, video files, folders (recursive) or .txt lists"
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_model_args(p, resolution="256")
    f = p.add_argument_group("features")
    f.add_argument(
        "--layers",
        default="-1",
        help="blocks to save, comma separated, 0-based, negatives count from the end (default -1 = last). Each is "
        "normed with the final norm, like get_intermediate_layers(norm=True). With --aggregate: Aggregator layers",
    )
    f.add_argument(
        "--save",
        action="append",
        metavar="KIND[,KIND]",
        help="what to save: cls, patch, storage (repeatable or comma list; default cls,patch)",
    )
    f.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32", help="dtype of the saved tensors")
    v = p.add_argument_group("videos and clips")
    sampling = v.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames", type=int, default=None, help=f"frames per video, spread uniformly (default {DEFAULT_VIDEO_FRAMES})"
    )
    sampling.add_argument("--fps", type=float, default=None, help="sample videos at this many frames per second")
    v.add_argument(
        "--aggregate",
        action="store_true",
        help="run each video, and each folder of frames, as one clip through the VGGT-style Aggregator (the model is "
        "its patch embedding) and save its outputs (aggregated.L) instead of per-frame backbone features",
    )
    v.add_argument(
        "--aggregator-kwargs",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="Aggregator constructor overrides (default: VGGT's, with the model's width and heads; e.g. depth=2)",
    )
    v.add_argument("--aggregator-weights", default=None, help="state dict (.pt/.pth/.safetensors) for the Aggregator")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    r.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data loader processes decoding inputs while the model runs (default: CPU cores per process - 1, max 8)",
    )
    r.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip inputs whose output is complete and made with the same settings (default on)",
    )
    r.add_argument("--quiet", "-q", action="store_true", help="no progress output (errors are still reported)")
    r.add_argument(
        "--log-interval", type=float, default=30.0, help="seconds between progress lines when not on a terminal"
    )
    r.add_argument("--dist-timeout", type=float, default=86400.0, help="torchrun: seconds ranks wait for each other")
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------------------------------------- options
def parse_save_kinds(values: Sequence[str] | None) -> list[str]:
    """``["cls,patch", "storage"]`` -> ``["cls", "patch", "storage"]`` (validated, ordered, unique)."""
    kinds: list[str] = []
    for value in values or ["cls,patch"]:
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SAVE_KINDS:
                raise CLIError(f"--save {part!r} is not one of {', '.join(SAVE_KINDS)}")
            if part not in kinds:
                kinds.append(part)
    if not kinds:
        raise CLIError(f"--save needs at least one of {', '.join(SAVE_KINDS)}")
    return [k for k in SAVE_KINDS if k in kinds]


def parse_layers(text: str | None, n_blocks: int) -> list[int]:
    """``"-1"`` -> ``[n_blocks - 1]``; ``"3,7,-1"`` -> sorted unique absolute block indices."""
    text = (text or "-1").strip()
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            i = int(part)
        except ValueError as exc:
            raise CLIError(f"--layers {part!r} is not an integer block index (example: --layers 3,7,11 or -1)") from exc
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise CLIError(
                f"--layers {i} is out of range: the model has {n_blocks} blocks (0..{n_blocks - 1}, or -1..-{n_blocks})"
            )
        if j not in out:
            out.append(j)
    if not out:
        raise CLIError("--layers is empty")
    return sorted(out)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def source_signature(path: str, frames: Sequence[str] = ()) -> str | None:
    """Size and modification time of the source file(s); None when missing. Changes force re-extraction."""
    try:
        files = list(frames) or [path]
        parts = []
        for f in files:
            st = os.stat(f)
            parts.append(f"{os.path.basename(f) if frames else ''}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return None
    text = "|".join(parts)
    return text if not frames else "sha1:" + hashlib.sha1(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- runners
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


def build_aggregator(args: argparse.Namespace, loaded: LoadedModel, device: Any) -> tuple[Any, dict[str, Any]]:
    """The VGGT-style Aggregator with the loaded DINOv3 model (and its weights) as its patch embedding.

    Its blocks are seeded with ``--seed`` and take ``--aggregator-weights`` when given (VGGT-format state dict; the
    checkpoint's ``patch_embed.*`` entries are ignored: the backbone comes from ``--weights``).
    """
    import torch

    try:
        from ..vggt_compat.aggregator import Aggregator
    except ImportError as exc:
        raise CLIError(
            f"--aggregate needs dinov3_integration.vggt_compat.aggregator, which cannot be imported: {exc}"
        ) from exc
    model = loaded.model
    kwargs: dict[str, Any] = {
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        "num_heads": getattr(model, "num_heads", max(1, model.embed_dim // 64)),
    }
    kwargs.update(parse_model_kwargs(args.aggregator_kwargs))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            aggregator = Aggregator(patch_embed=model, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"cannot build the Aggregator with {kwargs}: {exc}") from exc
    if args.normalization != "auto":
        from ..data.preprocess import NORMALIZATIONS

        aggregator.set_normalization(NORMALIZATIONS[args.normalization].mean, NORMALIZATIONS[args.normalization].std)
    if args.aggregator_weights:
        try:
            aggregator.load_vggt_state_dict(
                _load_state_dict(args.aggregator_weights), strict=True, skip_patch_embed=True
            )
        except CLIError:
            raise
        except Exception as exc:
            raise CLIError(f"--aggregator-weights {args.aggregator_weights}: {exc}") from exc
    kwargs["patch_embed"] = loaded.name
    kwargs["normalization"] = [list(v) for v in aggregator.normalization]
    return aggregator.to(device).eval(), kwargs


def _load_state_dict(path: str) -> dict[str, Any]:
    """The hub's safe reader (``weights_only=True`` / safetensors; ``model``/``state_dict`` wrappers unwrapped)."""
    from ..hub.checkpoint_io import load_state_dict_file

    if not os.path.isfile(path):
        raise CLIError(f"--aggregator-weights {path!r} does not exist")
    return load_state_dict_file(path)


# ------------------------------------------------------------------------------------------------------- progress
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


# -------------------------------------------------------------------------------------------------------- engine
@dataclass
class _Pending:
    """Features of one item being gathered frame by frame."""

    item: Any
    loaded: Any
    rows: list[dict[str, Any] | None]
    remaining: int
    error: str | None = None


@dataclass
class Settings:
    """Everything that determines an output file's content (hashed into ``config_digest``)."""

    model: str
    model_kwargs: dict[str, Any]
    weights: str
    weights_digest: str
    resolution: str
    interpolation: str
    normalization: dict[str, Any]
    layers: list[int]
    save: list[str]
    save_dtype: str
    compute_dtype: str
    frames: int | None
    fps: float | None
    aggregate: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        blob = json.dumps({"format": FORMAT, **self.__dict__}, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


class Extraction:
    """One process's share of an extraction run."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, device: Any) -> None:
        self.args = args
        self.ctx = ctx
        self.device = device
        self.out_dir = Path(args.out).resolve()
        self.records: dict[str, dict[str, Any]] = {}
        self.written = 0
        self.start = time.monotonic()
        exit_after = os.environ.get(EXIT_AFTER_ENV)
        self.exit_after = int(exit_after) if exit_after else None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:

        from ..data.inputs import InputError, discover_inputs, shard
        from ..data.loader import LoadSpec
        from ..data.preprocess import choose_normalization, parse_resolution

        args = self.args
        if args.frames is not None and args.frames < 1:
            raise CLIError(f"--frames must be at least 1, got {args.frames}")
        if args.fps is not None and args.fps <= 0:
            raise CLIError(f"--fps must be positive, got {args.fps}")
        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
        if not args.aggregate and (args.aggregator_kwargs or args.aggregator_weights):
            raise CLIError("--aggregator-kwargs / --aggregator-weights only apply with --aggregate")
        if args.aggregate and args.save:
            log.warning("--save is ignored with --aggregate: the Aggregator outputs (aggregated.L) are saved")
        try:
            self.resolution = parse_resolution(args.resolution)
        except ValueError as exc:
            raise CLIError(f"--resolution: {exc}") from exc
        self.kinds = parse_save_kinds(args.save)
        try:
            items = discover_inputs(args.inputs, clips=args.aggregate, exclude=[self.out_dir])
        except InputError as exc:
            raise CLIError(str(exc)) from exc
        self.total_inputs = len(items)
        self.items = shard(items, self.ctx.rank, self.ctx.world_size)
        self.loaded = build_model(args, self.device)
        model = self.loaded.model
        self.norm = choose_normalization(args.normalization, self.loaded.weights_tag)
        self.frames = args.frames if args.frames is not None or args.fps is not None else DEFAULT_VIDEO_FRAMES
        self.spec = LoadSpec(self.resolution, model.patch_size, args.interpolation, self.frames, args.fps)
        dtype = compute_dtype(args.dtype)
        save_dtype = _torch_dtype(args.save_dtype)
        aggregate_cfg = None
        if args.aggregate:
            aggregator, agg_kwargs = build_aggregator(args, self.loaded, self.device)
            aggregate_cfg = {"kwargs": agg_kwargs, "weights_digest": state_dict_digest(aggregator)}
            self.layers = parse_layers(args.layers, aggregator.depth)
            self.runner: Any = AggregateRunner(aggregator, self.layers, self.device, dtype, save_dtype)
        else:
            self.layers = parse_layers(args.layers, model.n_blocks)
            self.runner = BackboneRunner(
                self.loaded, self.layers, self.kinds, self.norm, self.device, dtype, save_dtype
            )
        self.settings = Settings(
            model=self.loaded.name,
            model_kwargs=self.loaded.model_kwargs,
            weights=self.loaded.weights,
            weights_digest=self.loaded.digest,
            resolution=str(self.resolution),
            interpolation=args.interpolation,
            normalization={"name": self.norm.name, "mean": list(self.norm.mean), "std": list(self.norm.std)},
            layers=self.layers,
            save=self.kinds if not args.aggregate else ["aggregated"],
            save_dtype=args.save_dtype,
            compute_dtype=args.dtype,
            frames=self.frames,
            fps=args.fps,
            aggregate=aggregate_cfg,
        )
        self.config_digest = self.settings.digest()
        if args.num_workers is None:
            cores = (os.cpu_count() or 1) // max(1, self.ctx.local_world_size)
            args.num_workers = max(0, min(8, cores - 1))

    # ------------------------------------------------------------------------------------------- helpers
    def output_path(self, item: Any) -> Path:
        return self.out_dir / f"{item.key}.safetensors"

    def expected_keys(self, item: Any) -> list[str]:
        keys = list(self.runner.keys())
        if item.kind == "video":
            keys += ["frame_indices", "frame_times"]
        return keys

    def complete_output(self, item: Any) -> dict[str, str] | None:
        """The metadata of the item's output when it exists, is a readable safetensors file with the expected
        tensors, and was made with the same settings from the same source file(s); None otherwise."""
        from safetensors import safe_open

        path = self.output_path(item)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                keys = set(fh.keys())
        except Exception as exc:
            log.warning("%s is unreadable (%s); extracting it again", path, exc)
            return None
        sig = source_signature(item.path, item.frames)
        ok = (
            meta.get("format") == FORMAT
            and meta.get("config_digest") == self.config_digest
            and sig is not None
            and meta.get("source_signature") == sig
            and set(self.expected_keys(item)) <= keys
        )
        return meta if ok else None

    def record(self, item: Any, status: str, *, error: str | None = None, frames: int | None = None) -> None:
        self.records[item.path] = {
            "input": item.path,
            "kind": item.kind,
            "output": f"{item.key}.safetensors" if status != "failed" else None,
            "status": status,
            "error": error,
            "frames": frames,
        }

    def metadata(self, item: Any, loaded: Any) -> dict[str, str]:
        info = loaded.info
        size = [int(v) for v in info["size"]]
        p = self.loaded.model.patch_size
        meta: dict[str, Any] = {
            "format": FORMAT,
            "library_version": library_version(),
            "model": self.settings.model,
            "model_kwargs": self.settings.model_kwargs,
            "weights": self.settings.weights,
            "weights_digest": self.settings.weights_digest,
            "kind": item.kind,
            "source": item.path,
            "source_signature": source_signature(item.path, item.frames) or "",
            "original_size": [int(v) for v in info["original_size"]],
            "resolution": self.settings.resolution,
            "size": size,
            "grid": [size[0] // p, size[1] // p],
            "patch_size": p,
            "num_frames": int(info["num_frames"]),
            "preprocessing": {
                "resize": "torchvision v2 resize of the uint8 RGB image, antialias=True (DINOv3 README transform)",
                "interpolation": self.settings.interpolation,
                "exif_transpose": True,
                "scale": "x / 255",
                "normalization": self.settings.normalization if not self.args.aggregate else "inside the Aggregator",
            },
            "layers": self.settings.layers,
            "save": self.settings.save,
            "save_dtype": self.settings.save_dtype,
            "compute_dtype": self.settings.compute_dtype,
            "config_digest": self.config_digest,
        }
        if item.kind == "video":
            meta["sampling"] = (
                {"frames": self.settings.frames} if self.settings.fps is None else {"fps": self.settings.fps}
            )
            meta["video_fps"] = info.get("video_fps")
        if item.kind == "clip":
            meta["frame_names"] = info.get("frame_names", [])
        if self.args.aggregate:
            meta["aggregator"] = self.settings.aggregate
            meta["patch_start_idx"] = self.runner.patch_start_idx
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}

    def write(self, item: Any, loaded: Any, tensors: dict[str, Any]) -> None:
        """Save one output atomically (called from the writer thread)."""
        import torch
        from safetensors.torch import save_file

        dst = self.output_path(item)
        remove_stale_temps(dst)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        if item.kind == "video":
            tensors["frame_indices"] = loaded.info["frame_indices"].to(dtype=torch.int64)
            tensors["frame_times"] = loaded.info["frame_times"].double()
        with atomic_path(dst) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata(item, loaded))

    # ------------------------------------------------------------------------------------------- main loop
    def run(self) -> None:
        args = self.args
        todo = []
        for item in self.items:
            meta = self.complete_output(item) if args.resume else None
            if meta is not None:
                self.record(item, "cached", frames=int(meta.get("num_frames", "0")) or None)
            else:
                todo.append(item)
        cached = len(self.items) - len(todo)
        if cached:
            log.info("resume: %d of %d inputs are already complete and are skipped", cached, len(self.items))
        self.progress = Progress(
            len(todo),
            quiet=args.quiet,
            show_bar=sys.stderr.isatty() and self.ctx.is_main,
            interval=args.log_interval,
        )
        try:
            self._loop(todo)
        finally:
            self.progress.close()

    def _fail(self, item: Any, error: str) -> None:
        log.error("failed: %s: %s", item.path, error)
        self.record(item, "failed", error=error)
        self.progress.update(failed=True)

    def _loop(self, todo: list[Any]) -> None:
        from ..data.loader import InputDataset, ShapeBatcher, make_loader

        dataset = InputDataset(todo, self.spec)
        loader = make_loader(dataset, num_workers=self.args.num_workers, pin_memory=self.device.type == "cuda")
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dinov3-writer")
        self._futures: list[tuple[Future, Any, Any]] = []
        pending: dict[int, _Pending] = {}
        batcher = ShapeBatcher(self.args.batch_size)
        try:
            for loaded in loader:
                item = todo[loaded.index]
                if loaded.error is not None:
                    self._fail(item, loaded.error)
                    continue
                if self.args.aggregate:
                    try:
                        tensors = self.runner(loaded.frames)
                    except Exception as exc:
                        self._fail(item, _compute_error(exc))
                        continue
                    self._submit(pool, item, loaded, tensors)
                    continue
                pending[loaded.index] = _Pending(item, loaded, [None] * loaded.frames.shape[0], loaded.frames.shape[0])
                for batch in batcher.add(loaded.index, loaded.frames):
                    self._run_batch(batch, pending, pool)
                self._drain(block=False)
            for batch in batcher.flush():
                self._run_batch(batch, pending, pool)
            self._drain(block=True)
        finally:
            pool.shutdown(wait=True)

    def _run_batch(self, batch: Any, pending: dict[int, _Pending], pool: ThreadPoolExecutor) -> None:
        try:
            out = self.runner(batch.pixels)
        except Exception as exc:
            error = _compute_error(exc)
            for index in {owner for owner, _ in batch.owners}:
                entry = pending.pop(index, None)
                if entry is not None:
                    self._fail(entry.item, error)
            return
        for row, (index, t) in enumerate(batch.owners):
            entry = pending.get(index)
            if entry is None:  # an earlier batch of this item failed
                continue
            entry.rows[t] = {k: v[row].clone() for k, v in out.items()}
            entry.remaining -= 1
            if entry.remaining == 0:
                del pending[index]
                rows = entry.rows
                if entry.item.kind == "image":
                    tensors = dict(rows[0])  # type: ignore[arg-type]
                else:
                    import torch

                    tensors = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # type: ignore[index]
                self._submit(pool, entry.item, entry.loaded, tensors)

    def _submit(self, pool: ThreadPoolExecutor, item: Any, loaded: Any, tensors: dict[str, Any]) -> None:
        loaded.info["num_frames"] = int(loaded.frames.shape[0])
        loaded.frames = None  # free the pixels
        self._futures.append((pool.submit(self.write, item, loaded, tensors), item, loaded))
        while len(self._futures) > 8:
            self._drain(block=True, limit=len(self._futures) - 8)

    def _drain(self, *, block: bool, limit: int | None = None) -> None:
        kept = []
        handled = 0
        for future, item, loaded in self._futures:
            if (block and (limit is None or handled < limit)) or future.done():
                handled += 1
                try:
                    future.result()
                except Exception as exc:
                    self._fail(item, f"cannot write {self.output_path(item)}: {exc}")
                    continue
                self.record(item, "ok", frames=loaded.info["num_frames"])
                self.progress.update()
                self.written += 1
                if self.exit_after is not None and self.written >= self.exit_after:
                    log.warning("%s=%d reached: exiting abruptly (test hook)", EXIT_AFTER_ENV, self.exit_after)
                    os._exit(75)
            else:
                kept.append((future, item, loaded))
        self._futures = kept


def _compute_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower():
        text += " (lower --batch-size or --resolution)"
    return text


# ---------------------------------------------------------------------------------------------------------- output
def _rank_manifest(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"manifest.rank{rank}-of-{world}.jsonl"


def finish(ext: Extraction) -> int:
    """Write this rank's manifest; rank 0 merges all of them into ``manifest.jsonl``. Returns the exit status."""
    ctx = ext.ctx
    records = sorted(ext.records.values(), key=lambda r: r["input"])
    if ctx.world_size > 1:
        write_jsonl(_rank_manifest(ext.out_dir, ctx.rank, ctx.world_size), records)
        ctx.barrier()
        failed_total = ctx.all_sum(sum(r["status"] == "failed" for r in records))
        if not ctx.is_main:
            return 0
        merged: list[dict[str, Any]] = []
        for r in range(ctx.world_size):
            path = _rank_manifest(ext.out_dir, r, ctx.world_size)
            merged.extend(read_jsonl(path))
        records = sorted(merged, key=lambda rec: rec["input"])
        write_jsonl(ext.out_dir / MANIFEST, records)
        for r in range(ctx.world_size):
            _rank_manifest(ext.out_dir, r, ctx.world_size).unlink(missing_ok=True)
        assert failed_total == sum(r["status"] == "failed" for r in records)
    else:
        write_jsonl(ext.out_dir / MANIFEST, records)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "cached", "failed")}
    elapsed = time.monotonic() - ext.start
    summary = (
        f"extract: {len(records)} inputs: {counts['ok']} written, {counts['cached']} already complete, "
        f"{counts['failed']} failed in {format_seconds(elapsed)}; manifest: {ext.out_dir / MANIFEST}"
    )
    if counts["failed"]:
        log.warning("%s", summary)
        for rec in [r for r in records if r["status"] == "failed"][:10]:
            log.warning("  failed: %s: %s", rec["input"], rec["error"])
        return 1
    log.info("%s", summary)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 extract``."""
    ctx = dist_env()
    setup_logging(verbose=getattr(args, "verbose", 0), quiet=args.quiet, rank=ctx.rank if ctx.world_size > 1 else None)
    device = resolve_device(args.device, ctx)
    init_distributed(ctx, device, args.dist_timeout)
    try:
        ext = Extraction(args, ctx, device)
        ext.setup()
        ext.out_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            log.info(
                "extract: %d inputs%s, model %s (%s), resolution %s, device %s",
                ext.total_inputs,
                f" over {ctx.world_size} ranks" if ctx.world_size > 1 else "",
                ext.loaded.name,
                ext.loaded.weights,
                ext.settings.resolution,
                device,
            )
        ext.run()
        return finish(ext)
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------------------- reading
def read_features(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load an output file: ``(tensors, metadata)`` with JSON metadata values decoded."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(os.fspath(path), framework="pt") as fh:
        raw = fh.metadata() or {}
        for key in fh.keys():
            tensors[key] = fh.get_tensor(key)
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value
    return tensors, meta
