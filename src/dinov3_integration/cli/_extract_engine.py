"""The ``dinov3 extract`` engine: one process's share of a run (resume check, decode, batch, compute, write)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..features import FORMAT, FeatureFileError, verify_features, write_features
from ..utils.redact import redact_text
from ._common import (
    CLIError,
    DistContext,
    build_model,
    compute_dtype,
    library_version,
    state_dict_digest,
)
from ._extract_options import parse_layers, parse_save_kinds, request_digest
from ._extract_runners import AggregateRunner, BackboneRunner, Progress, build_aggregator

log = get_logger("extract")

DEFAULT_VIDEO_FRAMES = 16
# Test hook: exit abruptly (like a kill) after this many outputs were written.
EXIT_AFTER_ENV = "DINOV3_EXTRACT_EXIT_AFTER"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def source_signature(path: str, frames: tuple[str, ...] | list[str] = ()) -> str | None:
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
    """Everything that determines an output file's content (hashed into ``config_digest``).

    ``weights`` is only the (redacted) label the user gave; the weights are identified by ``weights_digest`` (so
    ``w.pth`` and ``./w.pth``, or a refreshed signed link to the same file, are the same weights).
    """

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
        content = {k: v for k, v in self.__dict__.items() if k != "weights"}
        blob = json.dumps({"format": FORMAT, **content}, sort_keys=True, default=str)
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
    def discover(self) -> None:
        """Find the inputs (and this rank's share); problems with them are :class:`CLIError`."""
        from ..data.inputs import InputError, discover_inputs, shard

        try:
            items = discover_inputs(
                self.args.inputs, clips=self.args.aggregate, exclude=[self.out_dir], problems=(problems := [])
            )
        except InputError as exc:
            raise CLIError(str(exc)) from exc
        self.total_inputs = len(items)
        self.items = shard(items, self.ctx.rank, self.ctx.world_size)
        self.request_digest = request_digest(self.args, self.resolution)
        # Folders that could not be searched: reported once (rank 0) and recorded as failed inputs.
        self.problems = problems if self.ctx.is_main else []

    def setup(self) -> None:
        from ..data.loader import LoadSpec
        from ..data.preprocess import choose_normalization

        args = self.args
        self.kinds = parse_save_kinds(args.save)
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
            weights=redact_text(self.loaded.weights),
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

    def existing_output(self, item: Any) -> tuple[str, dict[str, str] | None]:
        """What the item's output file holds now: ``("missing" | "damaged" | "other" | "stale" | "complete", meta)``.

        ``other``: a complete feature file made from another source path (another input with the same key, from
        an earlier run into the same ``--out``); ``stale``: the same source, but other settings or a changed file.
        """
        path = self.output_path(item)
        if not path.is_file():
            return "missing", None
        try:
            meta = verify_features(path)
        except FeatureFileError as exc:
            log.warning("%s is unreadable or damaged (%s); extracting it again", path, exc)
            return "damaged", None
        if meta.get("source") != item.path:
            return "other", meta
        sig = source_signature(item.path, item.frames)
        ok = (
            meta.get("config_digest") == self.config_digest
            and sig is not None
            and meta.get("source_signature") == sig
            and set(self.expected_keys(item)) <= set(self._keys_of(path))
        )
        return ("complete" if ok else "stale"), meta

    @staticmethod
    def _keys_of(path: Path) -> set[str]:
        from ..features import read_metadata

        return read_metadata(path)[1]

    def record(
        self,
        item: Any,
        status: str,
        *,
        error: str | None = None,
        frames: int | None = None,
        warning: str | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "input": item.path,
            "kind": item.kind,
            "output": f"{item.key}.safetensors" if status != "failed" else None,
            "status": status,
            "error": error,
            "frames": frames,
        }
        if warning:
            rec["warning"] = warning
        self.records[item.path] = rec

    def metadata(self, item: Any, loaded: Any) -> dict[str, Any]:
        from ..data.preprocess import SCALE_RULE

        info = loaded.info
        size = [int(v) for v in info["size"]]
        p = self.loaded.model.patch_size
        meta: dict[str, Any] = {
            "library_version": library_version(),
            "model": self.settings.model,
            "model_kwargs": self.settings.model_kwargs,
            "depth": int(getattr(self.loaded.model, "n_blocks", 0)),
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
                "scale": SCALE_RULE,
                "normalization": self.settings.normalization if not self.args.aggregate else "inside the Aggregator",
            },
            "layers": self.settings.layers,
            "save": self.settings.save,
            "save_dtype": self.settings.save_dtype,
            "compute_dtype": self.settings.compute_dtype,
            "config_digest": self.config_digest,
            "request_digest": self.request_digest or "",
        }
        if item.kind == "video":
            meta["sampling"] = (
                {"frames": self.settings.frames} if self.settings.fps is None else {"fps": self.settings.fps}
            )
            meta["video_fps"] = info.get("video_fps")
            if info.get("warning"):
                meta["decode_warning"] = info["warning"]
        if item.kind == "clip":
            meta["frame_names"] = info.get("frame_names", [])
        if self.args.aggregate:
            meta["aggregator"] = self.settings.aggregate
            meta["patch_start_idx"] = self.runner.patch_start_idx
        return meta

    def write(self, item: Any, loaded: Any, tensors: dict[str, Any]) -> None:
        """Save one output atomically (called from the writer thread)."""
        import torch

        if item.kind == "video":
            tensors["frame_indices"] = loaded.info["frame_indices"].to(dtype=torch.int64)
            tensors["frame_times"] = loaded.info["frame_times"].double()
        write_features(self.output_path(item), tensors, self.metadata(item, loaded))

    # ------------------------------------------------------------------------------------------- main loop
    def resume_without_model(self) -> bool:
        """With ``--resume``: when every output of this rank is complete (checksum), comes from its own unchanged
        source and was made by the same command line (``request_digest``: same settings and the same weights file
        by path, size, time and content hash), record them all as cached and return True: the model is never
        built. Otherwise False (nothing recorded; the full check runs after the model is built)."""
        if not self.args.resume or self.request_digest is None or self.problems:
            return False
        metas = []
        for item in self.items:
            path = self.output_path(item)
            if not path.is_file():
                return False
            try:
                meta = verify_features(path)
            except FeatureFileError:
                return False
            sig = source_signature(item.path, item.frames)
            if meta.get("request_digest") != self.request_digest or meta.get("source") != item.path:
                return False
            if sig is None or meta.get("source_signature") != sig:
                return False
            metas.append(meta)
        for item, meta in zip(self.items, metas):
            self.record(item, "cached", frames=int(meta.get("num_frames", "0")) or None)
        log.info("resume: all %d inputs are already complete; the model is not built", len(self.items))
        return True

    def plan(self) -> list[Any]:
        """Record the inputs whose output is complete (``--resume``) or belongs to another input; return the rest."""
        args = self.args
        todo = []
        for item in self.items:
            state, meta = self.existing_output(item) if args.resume or not args.overwrite else ("missing", None)
            if state == "complete" and args.resume:
                assert meta is not None
                self.record(item, "cached", frames=int(meta.get("num_frames", "0")) or None)
            elif state == "other" and not args.overwrite:
                assert meta is not None
                error = (
                    f"its output {self.output_path(item)} holds the features of another input "
                    f"({meta.get('source')}); use another --out, or pass --overwrite to replace it"
                )
                log.error("failed: %s: %s", item.path, error)
                self.record(item, "failed", error=error)
            else:
                todo.append(item)
        return todo

    def run(self) -> None:
        args = self.args
        for problem in self.problems:
            log.error("failed: %s: %s", problem.path, problem.error)
            self.records[problem.path] = {
                "input": problem.path,
                "kind": "folder",
                "output": None,
                "status": "failed",
                "error": problem.error,
                "frames": None,
            }
        todo = self.plan()
        cached = sum(r["status"] == "cached" for r in self.records.values())
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
                if loaded.info.get("warning"):
                    log.warning("%s: %s", item.path, loaded.info["warning"])
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
                self.record(item, "ok", frames=loaded.info["num_frames"], warning=loaded.info.get("warning"))
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
