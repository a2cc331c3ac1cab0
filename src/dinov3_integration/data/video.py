"""Video decoding with PyAV and frame sampling.

Two sampling modes (``dinov3 extract --frames N`` / ``--fps F``):

* ``frames=N``: ``N`` frames spread uniformly over the whole video (first and last included;
  ``round(linspace(0, n - 1, N))``, duplicates removed when the video is shorter than ``N``);
* ``fps=F``: one frame every ``1 / F`` seconds of presentation time, starting at the first frame
  (works for variable-frame-rate files because it uses the decoded timestamps).

Frames are returned in presentation order with their index (the position in decode output order) and time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .._logging import get_logger

log = get_logger("data.video")


class VideoError(RuntimeError):
    """A video cannot be opened or holds no decodable frames."""


def _av():  # noqa: ANN202
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VideoError(
            "reading videos needs PyAV: pip install 'dinov3-integration[video]' (or pip install av)"
        ) from exc
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass(frozen=True)
class SampledFrames:
    """Decoded frames: ``frames`` uint8 ``[T, h, w, 3]``, ``indices`` ``[T]`` int64, ``times`` ``[T]`` seconds.

    ``warning`` says why fewer frames than asked for could be used (a stream corrupt in the middle), else None.
    """

    frames: np.ndarray
    indices: np.ndarray
    times: np.ndarray
    info: VideoInfo
    warning: str | None = None


def _open(path: str | os.PathLike[str]):  # noqa: ANN202
    av = _av()
    try:
        container = av.open(os.fspath(path))
    except Exception as exc:  # PyAV raises several error types (FileNotFoundError, InvalidDataError, ...)
        raise VideoError(f"cannot open video: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoError("the file has no video stream")
    return container


def probe_video(path: str | os.PathLike[str], *, count: bool = True) -> VideoInfo:
    """Frame count, frame rate, duration and size of a video.

    When the container does not store a frame count (``stream.frames == 0``) and ``count`` is true, frames are
    counted by demuxing packets (no decoding).
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        n = int(stream.frames or 0)
        if n <= 0 and count:
            n = sum(1 for packet in container.demux(stream) if packet.size)
        return VideoInfo(n, fps, duration, stream.codec_context.width, stream.codec_context.height)
    finally:
        container.close()


def uniform_indices(num_frames: int, count: int) -> list[int]:
    """``count`` indices spread over ``[0, num_frames)``, first and last included, no duplicates."""
    if num_frames <= 0 or count <= 0:
        return []
    if count == 1:
        return [0]
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, count)})


def read_frames(path: str | os.PathLike[str], *, frames: int | None = None, fps: float | None = None) -> SampledFrames:
    """Decode the sampled frames of a video (``frames`` uniform or every ``1 / fps`` seconds; all when both None).

    Raises:
        VideoError: unreadable file, no video stream, or no decodable frame.
    """
    if frames is not None and fps is not None:
        raise ValueError("give either frames or fps, not both")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    info = probe_video(path, count=frames is not None)
    wanted: set[int] | None = None
    if frames is not None:
        wanted = set(uniform_indices(info.num_frames, frames))
    container = _open(path)
    out: list[np.ndarray] = []
    indices: list[int] = []
    times: list[float] = []
    warning: str | None = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time: float | None = None
        index = -1
        last_needed = max(wanted) if wanted else None
        for frame in container.decode(stream):
            index += 1
            t = float(frame.time) if frame.time is not None else (index / info.fps if info.fps else float(index))
            if wanted is not None:
                keep = index in wanted
            elif fps is not None:
                if next_time is None:
                    next_time = t
                # Half a native frame of tolerance absorbs timestamp rounding.
                tol = (0.5 / info.fps if info.fps else 0.0) + 1e-9
                keep = t + tol >= next_time
                while next_time <= t + tol:
                    next_time += 1.0 / fps
            else:
                keep = True
            if keep:
                out.append(frame.to_ndarray(format="rgb24"))
                indices.append(index)
                times.append(t)
            if last_needed is not None and index >= last_needed:
                break
    except VideoError:
        raise
    except Exception as exc:  # corrupt streams raise av.error.* in the middle of decoding
        if not out:
            raise VideoError(f"cannot decode video: {exc}") from exc
        warning = f"decoding stopped early after frame {index} ({exc}); {len(out)} sampled frames used"
        log.debug("%s: %s", path, warning)
    finally:
        container.close()
    if not out:
        raise VideoError("the video has no decodable frames")
    if wanted is not None and len(out) < len(wanted):
        short = f"the container announced {info.num_frames} frames but only {index + 1} could be decoded"
        warning = f"{warning}; {short}" if warning else short
        log.debug("%s: %s", path, short)
    arrays = np.asarray(indices, dtype=np.int64), np.asarray(times, dtype=np.float64)
    return SampledFrames(np.stack(out), *arrays, info, warning)
