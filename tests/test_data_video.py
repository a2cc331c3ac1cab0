"""Video decoding and frame sampling (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from dinov3_integration.data.video import VideoError, probe_video, read_frames, uniform_indices  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_uniform_indices() -> None:
    assert uniform_indices(12, 4) == [0, 4, 7, 11]
    assert uniform_indices(3, 10) == [0, 1, 2]
    assert uniform_indices(5, 1) == [0]
    assert uniform_indices(0, 4) == []


def test_probe(video: Path) -> None:
    info = probe_video(video)
    assert (info.num_frames, info.fps, info.width, info.height) == (12, 10.0, 32, 16)
    assert info.duration == pytest.approx(1.2, abs=0.11)


def test_uniform_frames(video: Path) -> None:
    s = read_frames(video, frames=4)
    assert s.frames.shape == (4, 16, 32, 3) and s.frames.dtype == np.uint8
    assert s.indices.tolist() == [0, 4, 7, 11]
    np.testing.assert_allclose(s.times, [0.0, 0.4, 0.7, 1.1])
    # frames are the right ones: the encoded grey level grows by 20 per frame
    assert [int(round(f.mean() / 20)) for f in s.frames] == [0, 4, 7, 11]


def test_fps_sampling(video: Path) -> None:
    assert read_frames(video, fps=5).indices.tolist() == [0, 2, 4, 6, 8, 10]
    assert read_frames(video, fps=3).indices.tolist() == [0, 3, 7, 10]
    assert read_frames(video, fps=100).indices.tolist() == list(range(12))  # never more than the video has
    assert read_frames(video).indices.tolist() == list(range(12))  # neither: every frame


def test_bad_videos(tmp_path: Path, video: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="cannot open video"):
        read_frames(bad, frames=2)
    with pytest.raises(ValueError):
        read_frames(video, frames=2, fps=1.0)
