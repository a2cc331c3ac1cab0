"""What an extraction gives back: one :class:`ExtractionResult` per input (``out=None``) or an
:class:`ExtractionReport` of the written job (``out=FOLDER``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExtractionReport", "ExtractionResult"]


@dataclass
class ExtractionResult:
    """One input's features, in memory (nothing written).

    Attributes:
        input: absolute path of the image, video or clip folder.
        kind: ``"image"``, ``"video"``, ``"clip"`` (a folder of frames with ``aggregate=True``) or ``"folder"`` (a
            folder that could not be searched: always failed).
        tensors: what the output file would hold (CPU tensors), for each saved block ``L``: ``cls.L`` ``[D]``,
            ``patch.L`` ``[h, w, D]``, ``storage.L`` ``[R, D]`` for an image; ``[T, ...]`` of these for a video, plus
            ``frame_indices`` ``[T]`` (int64) and ``frame_times`` ``[T]`` (float64 s); ``aggregated.L`` ``[S, P, 2C]``
            with ``aggregate=True``. Empty when failed.
        metadata: the file's metadata (model, weights digest, size, grid, preprocessing, layers, ...), values not
            yet encoded as strings; empty when failed.
        status: ``"ok"`` or ``"failed"``.
        error: why it failed (None when ok).
        warning: e.g. a video that could only be decoded in part.
    """

    input: str
    kind: str
    tensors: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ExtractionReport:
    """A written extraction job (what ``manifest.jsonl`` says, plus the summary).

    Attributes:
        out: the output folder.
        records: one dict per input, sorted by input path (``input``, ``kind``, ``output``, ``status`` = ok /
            cached / failed, ``error``, ``frames``, maybe ``warning``): the lines of ``manifest.jsonl``. Under
            torchrun: the whole job's on rank 0, this rank's own on the others.
        counts: ``{"ok": n, "cached": n, "failed": n}``.
        seconds: wall time of the job.
        is_main: False on torchrun ranks other than 0 (they report nothing).
        manifest: path of ``manifest.jsonl``.
    """

    out: Path
    records: list[dict[str, Any]]
    counts: dict[str, int]
    seconds: float
    is_main: bool = True
    manifest: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]

    def summary(self) -> str:
        """The one line ``dinov3 extract`` ends with."""
        from .runners import format_seconds

        c = self.counts
        return (
            f"extract: {len(self.records)} inputs: {c['ok']} written, {c['cached']} already complete, "
            f"{c['failed']} failed in {format_seconds(self.seconds)}; manifest: {self.manifest}"
        )
