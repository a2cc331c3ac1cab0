"""Input discovery: turn command-line paths into a sorted, de-duplicated list of work items.

An input argument may be

* an image file (``.jpg``, ``.png``, ... see :data:`IMAGE_EXTENSIONS`),
* a video file (``.mp4``, ``.mov``, ... see :data:`VIDEO_EXTENSIONS`),
* a folder, searched recursively for images and videos (hidden files and folders are skipped),
* a text file (``.txt`` / ``.lst`` / ``.list``) listing one path per line (blank lines and ``#`` comments
  skipped; relative paths are relative to the list file's folder). Listed folders are searched too.

With ``clips=True`` (``dinov3 extract --aggregate``) every folder that directly holds images becomes one
*clip* (its images, sorted by name, are the frames of one sequence) and videos are clips too.

Each item gets a ``key``: the relative path used to name its output file (``<key>.safetensors``). Keys mirror the
input layout from each folder argument down, folder name included (``photos/`` holding ``a/b.jpg`` gives
``photos/a/b.jpg``; a clip folder ``scenes/s1/`` gives ``scenes/s1``); files given directly keep their base name.
Colliding keys get a short hash of the absolute path appended so every item has its own output file.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .._logging import get_logger

log = get_logger("data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})

ItemKind = Literal["image", "video", "clip"]


class InputError(ValueError):
    """A command-line input cannot be used (missing path, empty folder, unreadable list file)."""


@dataclass(frozen=True)
class InputItem:
    """One unit of work: one output file.

    Attributes:
        path: absolute path of the image, the video or (for a clip) the folder.
        kind: ``"image"``, ``"video"`` or ``"clip"`` (a folder of frames, ``--aggregate`` only).
        key: relative output name without the ``.safetensors`` suffix (POSIX separators).
        frames: the frame files of a clip, sorted; empty for images and videos.
    """

    path: str
    kind: ItemKind
    key: str
    frames: tuple[str, ...] = field(default=())


def kind_of(path: str | os.PathLike[str]) -> ItemKind | None:
    """``"image"``, ``"video"`` or None from a file name's extension (case-insensitive)."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass(frozen=True)
class InputProblem:
    """A path found while searching the inputs that could not be searched (e.g. a folder without read permission)."""

    path: str
    error: str


def _walk(
    folder: Path, exclude: Sequence[Path], problems: list[InputProblem] | None = None
) -> Iterable[tuple[Path, list[str]]]:
    """``(dirpath, sorted file names)`` for ``folder`` and every non-hidden, non-excluded subfolder.

    Folders that cannot be listed are appended to ``problems`` (never skipped silently).
    """

    def onerror(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else str(folder)
        text = f"cannot search folder: {exc.strerror or exc}"
        log.warning("%s: %s; its files are not extracted", where, text)
        if problems is not None:
            problems.append(InputProblem(str(where), text))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and not any(_same(here / d, ex) for ex in exclude))
        yield here, sorted(f for f in filenames if not _hidden(f))


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _safe_key(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string; the base name when ``path`` is not below ``root``."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return path.name
    key = rel.as_posix()
    return key if key not in ("", ".") else (path.name or "input")


@dataclass
class _Collector:
    clips: bool
    exclude: tuple[Path, ...]
    found: list[InputItem] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    seen_lists: set[Path] = field(default_factory=set)

    def add_path(self, raw: str | os.PathLike[str], *, from_list: Path | None = None) -> None:
        text = os.path.expanduser(os.fspath(raw))
        path = Path(text)
        if from_list is not None and not path.is_absolute():
            path = from_list.parent / path
        path = Path(os.path.abspath(path))
        if path.is_dir():
            self._add_folder(path)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            self._add_list(path)
        elif path.is_file() or from_list is not None:
            # Entries of a list file that do not exist are kept: extraction reports them as failed inputs.
            self._add_file(path, root=path.parent)
        else:
            where = f" (listed in {from_list})" if from_list else ""
            raise InputError(f"input {text!r}{where} does not exist: pass an image, a video, a folder or a .txt list")

    def _add_file(self, path: Path, root: Path) -> None:
        kind = kind_of(path) or "image"  # unknown extensions are tried as images (Pillow reads many formats)
        if self.clips and kind == "image":
            self.found.append(InputItem(str(path), "clip", _safe_key(path, root), (str(path),)))
        else:
            self.found.append(InputItem(str(path), kind, _safe_key(path, root)))

    def _add_folder(self, folder: Path) -> None:
        before = len(self.found)
        root = folder.parent  # keys keep the folder's own name: photos/a.jpg, photos/sub/b.jpg
        for dirpath, names in _walk(folder, self.exclude, self.problems):
            frames = []
            for name in names:
                file = dirpath / name
                kind = kind_of(name)
                if kind == "video":
                    self.found.append(InputItem(str(file), "video", _safe_key(file, root)))
                elif kind == "image":
                    if self.clips:
                        frames.append(str(file))
                    else:
                        self.found.append(InputItem(str(file), "image", _safe_key(file, root)))
            if frames:
                key = _safe_key(dirpath, root)
                self.found.append(InputItem(str(dirpath), "clip", key, tuple(frames)))
        if len(self.found) == before and not self.problems:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
            raise InputError(f"folder {str(folder)!r} holds no images or videos (searched recursively for {exts})")

    def _add_list(self, list_file: Path) -> None:
        if list_file in self.seen_lists:
            raise InputError(f"list file {str(list_file)!r} includes itself")
        self.seen_lists.add(list_file)
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read list file {str(list_file)!r}: {exc}") from exc
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not entries:
            raise InputError(f"list file {str(list_file)!r} names no inputs (one path per line expected)")
        for entry in entries:
            self.add_path(entry, from_list=list_file)


def discover_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    clips: bool = False,
    exclude: Sequence[str | os.PathLike[str]] = (),
    problems: list[InputProblem] | None = None,
) -> list[InputItem]:
    """Expand command-line inputs into work items, sorted by path, duplicates removed, unique keys.

    Args:
        inputs: image / video / folder / list-file paths.
        clips: group folders of frames into clips (``--aggregate``); single images become one-frame clips.
        exclude: folders never searched (the output folder, when it lies inside an input folder).
        problems: when given, folders that could not be searched are appended to it (they are also logged).

    Returns:
        The items sorted by ``path`` (the order that defines the torchrun shards).

    Raises:
        InputError: a path that does not exist, a folder without images or videos, an unreadable list file.
    """
    if not inputs:
        raise InputError("no inputs given: pass image files, videos, folders or a .txt file listing paths")
    collector = _Collector(clips=clips, exclude=tuple(Path(os.path.abspath(e)) for e in exclude))
    for raw in inputs:
        collector.add_path(raw)
    if problems is not None:
        problems.extend(collector.problems)
    unique: dict[str, InputItem] = {}
    for item in collector.found:
        unique.setdefault(item.path, item)
    items = sorted(unique.values(), key=lambda it: it.path)
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_key[item.key].append(i)
    for indices in by_key.values():
        if len(indices) > 1:
            for i in indices:
                digest = hashlib.sha1(items[i].path.encode("utf-8")).hexdigest()[:8]
                items[i] = InputItem(items[i].path, items[i].kind, f"{items[i].key}-{digest}", items[i].frames)
    log.debug("discovered %d inputs", len(items))
    return items


def shard(items: Sequence[InputItem], rank: int, world_size: int) -> list[InputItem]:
    """The deterministic share of ``rank``: items ``i`` with ``i % world_size == rank`` (items already sorted)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    return [item for i, item in enumerate(items) if i % world_size == rank]
