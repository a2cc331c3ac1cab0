"""Loading work items in DataLoader workers and batching their frames by size.

:class:`InputDataset` decodes one item (an image, the sampled frames of a video, or the frames of a clip) and
resizes it on the CPU to uint8 ``[T, 3, H, W]``; it never raises, a failure comes back as ``error``. A
``torch.utils.data.DataLoader`` with workers runs it ahead of the model, so decoding overlaps compute.

:class:`ShapeBatcher` then packs frames of *equal resized shape* into batches of up to ``batch_size`` frames
(inputs of different sizes are never padded or mixed), and tells when every frame of an item has been computed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .inputs import InputItem
from .preprocess import Resolution, array_to_uint8, load_image, resize_uint8, target_size


@dataclass(frozen=True)
class LoadSpec:
    """How items are decoded and resized (picklable: sent to the workers)."""

    resolution: Resolution
    patch_size: int
    interpolation: str = "bilinear"
    frames: int | None = None
    fps: float | None = None


@dataclass
class LoadedItem:
    """A decoded item.

    Attributes:
        index: position of the item in the dataset.
        frames: uint8 ``[T, 3, H, W]`` (T = 1 for an image), or None on error.
        error: why the item could not be read, or None.
        info: ``original_size`` ``(h, w)``, ``size`` ``(H, W)`` and, for videos, ``frame_indices``, ``frame_times``
            and ``video_fps``.
    """

    index: int
    frames: torch.Tensor | None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


class InputDataset(torch.utils.data.Dataset):
    """Map-style dataset over work items; ``dataset[i]`` is a :class:`LoadedItem` (never raises)."""

    def __init__(self, items: Sequence[InputItem], spec: LoadSpec) -> None:
        self.items = list(items)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedItem:
        item = self.items[index]
        try:
            return self._load(index, item)
        except Exception as exc:  # one bad input must not stop the run
            return LoadedItem(index, None, _describe(exc))

    def _resize(self, image: torch.Tensor, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = image.shape[-2:]
        size = size or target_size(h, w, self.spec.resolution, self.spec.patch_size)
        return resize_uint8(image, size, self.spec.interpolation), size

    def _load(self, index: int, item: InputItem) -> LoadedItem:
        spec = self.spec
        if item.kind == "image":
            if not os.path.exists(item.path):
                raise FileNotFoundError(f"file not found: {item.path}")
            image = load_image(item.path)
            resized, size = self._resize(image)
            info = {"original_size": tuple(image.shape[-2:]), "size": size}
            return LoadedItem(index, resized.unsqueeze(0).contiguous(), None, info)
        if item.kind == "video":
            from .video import read_frames

            if not os.path.exists(item.path):
                raise FileNotFoundError(f"file not found: {item.path}")
            sampled = read_frames(item.path, frames=spec.frames, fps=spec.fps)
            # Frame by frame, laid out like v2.ToImage, so a frame gets exactly an image's preprocessing.
            size = None
            outs = []
            for frame in sampled.frames:
                resized, size = self._resize(array_to_uint8(frame), size)
                outs.append(resized)
            info = {
                "original_size": tuple(sampled.frames.shape[1:3]),
                "size": size,
                "frame_indices": torch.from_numpy(sampled.indices),
                "frame_times": torch.from_numpy(sampled.times),
                "video_fps": sampled.info.fps,
                "warning": sampled.warning,
            }
            return LoadedItem(index, torch.stack(outs).contiguous(), None, info)
        if item.kind == "clip":
            outs = []
            size: tuple[int, int] | None = None
            original = None
            for frame_path in item.frames:
                try:
                    image = load_image(frame_path)
                except Exception as exc:
                    raise ValueError(f"frame {os.path.basename(frame_path)}: {_describe(exc)}") from exc
                original = original or tuple(image.shape[-2:])
                # Every frame of a clip takes the size of the first one (the Aggregator needs one shape).
                resized, size = self._resize(image, size)
                outs.append(resized)
            info = {"original_size": original, "size": size, "frame_names": [os.path.basename(p) for p in item.frames]}
            return LoadedItem(index, torch.stack(outs).contiguous(), None, info)
        raise ValueError(f"unknown item kind {item.kind!r}")


def _identity(x: Any) -> Any:
    return x


# Items the workers keep decoded ahead of the model by default: two batches of the CLI's default 16 frames.
DEFAULT_PREFETCH_ITEMS = 32


def make_loader(
    dataset: InputDataset,
    *,
    num_workers: int,
    pin_memory: bool = False,
    prefetch_items: int | None = None,
) -> Iterator[LoadedItem]:
    """Iterate ``dataset`` in order with ``num_workers`` background workers (0: in this process).

    ``prefetch_items`` (default :data:`DEFAULT_PREFETCH_ITEMS`) is how many items all workers together keep decoded
    ahead of the consumer. It should cover at least one batch: the consumer takes a whole batch of items at once
    after every forward, and whatever was not decoded ahead is decoded while it waits (with 4 items per worker
    and one worker, as before, 12 of every 16 images were decoded on the critical path).
    """
    if len(dataset) == 0:
        return iter(())
    ahead = DEFAULT_PREFETCH_ITEMS if prefetch_items is None else prefetch_items
    if ahead < 1:
        raise ValueError(f"prefetch_items must be at least 1, got {prefetch_items}")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        prefetch_factor=max(2, -(-ahead // num_workers)) if num_workers > 0 else None,
        persistent_workers=False,
    )
    return iter(loader)


@dataclass
class Batch:
    """Frames of one shape: ``pixels`` uint8 ``[B, 3, H, W]`` and, for each row, ``(item index, frame index)``."""

    pixels: torch.Tensor
    owners: list[tuple[int, int]]


class ShapeBatcher:
    """Group frames by shape into batches of at most ``batch_size``; at most ``max_pending`` frames are held."""

    def __init__(self, batch_size: int, max_pending: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_pending = max_pending or 4 * batch_size
        self._queues: OrderedDict[tuple[int, int], list[tuple[torch.Tensor, int, int]]] = OrderedDict()
        self._pending = 0

    def add(self, index: int, frames: torch.Tensor) -> list[Batch]:
        """Queue the ``[T, 3, H, W]`` frames of item ``index``; return the batches now full."""
        shape = (int(frames.shape[-2]), int(frames.shape[-1]))
        queue = self._queues.setdefault(shape, [])
        for t in range(frames.shape[0]):
            queue.append((frames[t], index, t))
        self._pending += frames.shape[0]
        ready: list[Batch] = []
        while len(self._queues.get(shape, ())) >= self.batch_size:
            ready.append(self._take(shape, self.batch_size))
        while self._pending > self.max_pending:
            oldest = next(iter(self._queues))
            ready.append(self._take(oldest, self.batch_size))
        return ready

    def flush(self) -> list[Batch]:
        """Every queued frame, in batches."""
        ready = []
        while self._queues:
            ready.append(self._take(next(iter(self._queues)), self.batch_size))
        return ready

    def _take(self, shape: tuple[int, int], n: int) -> Batch:
        queue = self._queues[shape]
        chunk, rest = queue[:n], queue[n:]
        if rest:
            self._queues[shape] = rest
        else:
            del self._queues[shape]
        self._pending -= len(chunk)
        return Batch(torch.stack([c[0] for c in chunk]), [(c[1], c[2]) for c in chunk])
