"""The extraction engine: one process's share of a job (resume check, decode, batch, compute, hand to the sink).

Two ways to consume it: :meth:`Extraction.run` writes every result through a :class:`~.sinks.Sink` (writer threads
off the compute path); :meth:`Extraction.results` yields them in memory (nothing written). Both go through
:meth:`Extraction.compute`, so the tensors are the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .._logging import get_logger
from ..utils.redact import redact_text
from .dist import DistContext
from .errors import ExtractionError
from .model import build_model, compute_dtype, state_dict_digest
from .options import library_version, parse_layers, parse_save_kinds, request_digest
from .results import ExtractionResult
from .runners import AggregateRunner, BackboneRunner, Progress, build_aggregator
from .settings import DEFAULT_VIDEO_FRAMES, Settings, source_signature
from .sinks import Sink

log = get_logger("extract")

# Test hook: exit abruptly (like a kill) after this many outputs were written.
EXIT_AFTER_ENV = "DINOV3_EXTRACT_EXIT_AFTER"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@dataclass
class _Pending:
    """Features of one item being gathered frame by frame."""

    item: Any
    loaded: Any
    rows: list[dict[str, Any] | None]
    remaining: int


@dataclass
class Computed:
    """One input finished by :meth:`Extraction.compute`: its tensors (``error`` None) or why it failed."""

    item: Any
    loaded: Any = None
    tensors: dict[str, Any] | None = None
    error: str | None = None


class Extraction:
    """One process's share of an extraction job; ``sink`` None: results in memory only (:meth:`results`)."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, sink: Sink | None, resolution: Any) -> None:
        self.args = args
        self.ctx = ctx
        self.sink = sink
        self.resolution = resolution
        self.records: dict[str, dict[str, Any]] = {}
        self.written = 0
        self.start = time.monotonic()
        exit_after = os.environ.get(EXIT_AFTER_ENV)
        self.exit_after = int(exit_after) if exit_after else None

    # ------------------------------------------------------------------------------------------- setup
    def discover(self) -> None:
        """Find the inputs (and this rank's share); problems with them are :class:`ExtractionError`."""
        from ..data.inputs import InputError, discover_inputs, shard

        exclude = [self.sink.root] if self.sink is not None else []
        try:
            items = discover_inputs(self.args.inputs, clips=self.args.aggregate, exclude=exclude, problems=(p := []))
        except InputError as exc:
            raise ExtractionError(str(exc)) from exc
        self.total_inputs = len(items)
        self.items = shard(items, self.ctx.rank, self.ctx.world_size)
        self.request_digest = request_digest(self.args, self.resolution)
        # Folders that could not be searched: reported once (rank 0) and recorded as failed inputs.
        self.problems = p if self.ctx.is_main else []

    def setup(self, device: Any) -> None:
        """Build the model (and the Aggregator), the loading spec and the settings; ``device`` a torch device."""
        from ..data.loader import LoadSpec
        from ..data.preprocess import choose_normalization

        args = self.args
        self.device = device
        self.kinds = parse_save_kinds(args.save)
        self.loaded = build_model(args, device)
        model = self.loaded.model
        self.norm = choose_normalization(args.normalization, self.loaded.weights_tag)
        self.frames = args.frames if args.frames is not None or args.fps is not None else DEFAULT_VIDEO_FRAMES
        self.spec = LoadSpec(self.resolution, model.patch_size, args.interpolation, self.frames, args.fps)
        dtype = compute_dtype(args.dtype)
        save_dtype = _torch_dtype(args.save_dtype)
        aggregate_cfg = None
        if args.aggregate:
            aggregator, agg_kwargs = build_aggregator(args, self.loaded, device)
            aggregate_cfg = {"kwargs": agg_kwargs, "weights_digest": state_dict_digest(aggregator)}
            self.layers = parse_layers(args.layers, aggregator.depth)
            self.runner: Any = AggregateRunner(aggregator, self.layers, device, dtype, save_dtype)
        else:
            self.layers = parse_layers(args.layers, model.n_blocks)
            self.runner = BackboneRunner(self.loaded, self.layers, self.kinds, self.norm, device, dtype, save_dtype)
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
    def expected_keys(self, item: Any) -> list[str]:
        keys = list(self.runner.keys())
        if item.kind == "video":
            keys += ["frame_indices", "frame_times"]
        return keys

    def existing_output(self, item: Any) -> tuple[str, dict[str, str] | None, str]:
        """What the sink holds for the item: ``("missing" | "damaged" | "other" | "stale" | "complete", meta,
        where)``.

        ``other``: a complete output made from another source path (another input with the same key, from an
        earlier run into the same ``out``); ``stale``: the same source, but other settings or a changed file.
        """
        assert self.sink is not None
        stored = self.sink.find(item)
        if stored.state == "missing":
            return "missing", None, stored.where
        if stored.state == "damaged":
            log.warning("%s is unreadable or damaged (%s); extracting it again", stored.where, stored.error)
            return "damaged", None, stored.where
        meta = stored.meta or {}
        if meta.get("source") != item.path:
            return "other", meta, stored.where
        sig = source_signature(item.path, item.frames)
        ok = (
            meta.get("config_digest") == self.config_digest
            and sig is not None
            and meta.get("source_signature") == sig
            and set(self.expected_keys(item)) <= stored.keys
        )
        return ("complete" if ok else "stale"), meta, stored.where

    def record(
        self, item: Any, status: str, *, error: str | None = None, frames: int | None = None, warning: str | None = None
    ) -> None:
        out = self.sink.output_name(item) if self.sink is not None and status != "failed" else None
        rec: dict[str, Any] = {
            "input": item.path,
            "kind": item.kind,
            "output": out,
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

    @staticmethod
    def finish_tensors(item: Any, loaded: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Add a video's ``frame_indices`` ``[T]`` (int64) and ``frame_times`` ``[T]`` (float64)."""
        import torch

        if item.kind == "video":
            tensors["frame_indices"] = loaded.info["frame_indices"].to(dtype=torch.int64)
            tensors["frame_times"] = loaded.info["frame_times"].double()
        return tensors

    def write(self, item: Any, loaded: Any, tensors: dict[str, Any]) -> None:
        """Hand one output to the sink (called from a writer thread)."""
        assert self.sink is not None
        self.sink.write(item, self.finish_tensors(item, loaded, tensors), self.metadata(item, loaded))

    # ------------------------------------------------------------------------------------------- resume
    def resume_without_model(self) -> bool:
        """With ``resume``: when every output of this rank is complete (checksum), comes from its own unchanged
        source and was made by the same options (``request_digest``: same settings and the same weights file by
        path, size, time and content hash), record them all as cached and return True: the model is never built.
        Otherwise False (nothing recorded; the full check runs after the model is built)."""
        if self.sink is None or not self.args.resume or self.request_digest is None or self.problems:
            return False
        metas = []
        for item in self.items:
            stored = self.sink.find(item)
            if stored.state != "present" or stored.meta is None:
                return False
            meta = stored.meta
            if meta.get("request_digest") != self.request_digest or meta.get("source") != item.path:
                return False
            sig = source_signature(item.path, item.frames)
            if sig is None or meta.get("source_signature") != sig:
                return False
            metas.append(meta)
        for item, meta in zip(self.items, metas):
            self.record(item, "cached", frames=int(meta.get("num_frames", "0")) or None)
        log.info("resume: all %d inputs are already complete; the model is not built", len(self.items))
        return True

    def plan(self) -> list[Any]:
        """Record the inputs whose output is complete (``resume``) or belongs to another input; return the rest."""
        args = self.args
        todo = []
        for item in self.items:
            state, meta, where = (
                self.existing_output(item) if args.resume or not args.overwrite else ("missing", None, "")
            )
            if state == "complete" and args.resume:
                assert meta is not None
                self.record(item, "cached", frames=int(meta.get("num_frames", "0")) or None)
            elif state == "other" and not args.overwrite:
                assert meta is not None
                error = (
                    f"its output {where} holds the features of another input "
                    f"({meta.get('source')}); use another --out, or pass --overwrite to replace it"
                )
                log.error("failed: %s: %s", item.path, error)
                self.record(item, "failed", error=error)
            else:
                todo.append(item)
        return todo

    # ------------------------------------------------------------------------------------------- compute
    def _record_problems(self) -> None:
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

    def _progress(self, total: int) -> Progress:
        show_bar = sys.stderr.isatty() and self.ctx.is_main
        return Progress(total, quiet=self.args.quiet, show_bar=show_bar, interval=self.args.log_interval)

    def compute(self, todo: list[Any]) -> Iterator[Computed]:
        """Decode, batch (frames of one shape across inputs) and run ``todo``; yield each input when complete."""
        from ..data.loader import InputDataset, ShapeBatcher, make_loader

        dataset = InputDataset(todo, self.spec)
        # Two batches of images decoded ahead, so a batch never waits for decoding (clips: 4 per worker, as before).
        ahead = 4 * max(1, self.args.num_workers) if self.args.aggregate else 2 * self.args.batch_size
        loader = make_loader(
            dataset, num_workers=self.args.num_workers, pin_memory=self.device.type == "cuda", prefetch_items=ahead
        )
        pending: dict[int, _Pending] = {}
        batcher = ShapeBatcher(self.args.batch_size)
        for loaded in loader:
            item = todo[loaded.index]
            if loaded.error is not None:
                yield Computed(item, error=loaded.error)
                continue
            if loaded.info.get("warning"):
                log.warning("%s: %s", item.path, loaded.info["warning"])
            if self.args.aggregate:
                try:
                    tensors = self.runner(loaded.frames)
                except Exception as exc:
                    yield Computed(item, error=_compute_error(exc))
                    continue
                yield _done(item, loaded, tensors)
                continue
            pending[loaded.index] = _Pending(item, loaded, [None] * loaded.frames.shape[0], loaded.frames.shape[0])
            for batch in batcher.add(loaded.index, loaded.frames):
                yield from self._run_batch(batch, pending)
        for batch in batcher.flush():
            yield from self._run_batch(batch, pending)

    def _run_batch(self, batch: Any, pending: dict[int, _Pending]) -> Iterator[Computed]:
        try:
            out = self.runner(batch.pixels)
        except Exception as exc:
            error = _compute_error(exc)
            for index in sorted({owner for owner, _ in batch.owners}):
                entry = pending.pop(index, None)
                if entry is not None:
                    yield Computed(entry.item, error=error)
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
                yield _done(entry.item, entry.loaded, tensors)

    # ------------------------------------------------------------------------------------------- in memory
    def results(self) -> Iterator[ExtractionResult]:
        """Every input of this rank as an :class:`ExtractionResult`, in the order they finish (nothing written)."""
        self._record_problems()
        for problem in self.problems:
            yield ExtractionResult(problem.path, "folder", status="failed", error=problem.error)
        progress = self._progress(len(self.items))
        try:
            for done in self.compute(list(self.items)):
                item = done.item
                if done.error is not None:
                    log.error("failed: %s: %s", item.path, done.error)
                    self.record(item, "failed", error=done.error)
                    progress.update(failed=True)
                    yield ExtractionResult(item.path, item.kind, status="failed", error=done.error)
                    continue
                tensors = self.finish_tensors(item, done.loaded, done.tensors or {})
                warning = done.loaded.info.get("warning")
                self.record(item, "ok", frames=done.loaded.info["num_frames"], warning=warning)
                progress.update()
                yield ExtractionResult(item.path, item.kind, tensors, self.metadata(item, done.loaded), warning=warning)
        finally:
            progress.close()

    # ------------------------------------------------------------------------------------------- to the sink
    def run(self) -> None:
        """Plan (resume), compute and write this rank's inputs through the sink; every input gets a record."""
        self._record_problems()
        todo = self.plan()
        cached = sum(r["status"] == "cached" for r in self.records.values())
        if cached:
            log.info("resume: %d of %d inputs are already complete and are skipped", cached, len(self.items))
        self.progress = self._progress(len(todo))
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dinov3-writer")
        self._futures: list[tuple[Future, Any, Any]] = []
        try:
            for done in self.compute(todo):
                if done.error is not None:
                    self._fail(done.item, done.error)
                else:
                    self._submit(pool, done)
                self._drain(block=False)
            self._drain(block=True)
        finally:
            pool.shutdown(wait=True)
            self.progress.close()

    def _fail(self, item: Any, error: str) -> None:
        log.error("failed: %s: %s", item.path, error)
        self.record(item, "failed", error=error)
        self.progress.update(failed=True)

    def _submit(self, pool: ThreadPoolExecutor, done: Computed) -> None:
        """Queue one write; wait only when more than two batches of outputs are still being written.

        A batch finishes ``--batch-size`` outputs at once: a smaller bound (it was 8) made the model wait for the
        writes (each ends with an fsync) after every batch.
        """
        self._futures.append((pool.submit(self.write, done.item, done.loaded, done.tensors), done.item, done.loaded))
        backlog = max(8, 2 * self.args.batch_size)
        while len(self._futures) > backlog:
            self._drain(block=True, limit=len(self._futures) - backlog)

    def _drain(self, *, block: bool, limit: int | None = None) -> None:
        kept = []
        handled = 0
        for future, item, loaded in self._futures:
            if (block and (limit is None or handled < limit)) or future.done():
                handled += 1
                try:
                    future.result()
                except Exception as exc:
                    assert self.sink is not None
                    self._fail(item, f"cannot write {self.sink.output_name(item)} in {self.sink.root}: {exc}")
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


def _done(item: Any, loaded: Any, tensors: dict[str, Any]) -> Computed:
    loaded.info["num_frames"] = int(loaded.frames.shape[0])
    loaded.frames = None  # free the pixels
    return Computed(item, loaded, tensors)


def _compute_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower():
        text += " (lower --batch-size or --resolution)"
    return text
