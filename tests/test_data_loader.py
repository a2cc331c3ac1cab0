"""The dataset (never raises) and batching frames by shape."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dinov3_integration.data.inputs import InputItem
from dinov3_integration.data.loader import InputDataset, LoadSpec, ShapeBatcher, make_loader
from dinov3_integration.data.preprocess import parse_resolution


def test_dataset_loads_and_reports_errors(tmp_path) -> None:
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"no")
    frames = tmp_path / "clip"
    frames.mkdir()
    for i, size in enumerate([(40, 60), (20, 30)]):  # a clip takes its first frame's size for every frame
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(frames / f"{i}.png")
    items = [
        InputItem(str(good), "image", "a.png"),
        InputItem(str(tmp_path / "bad.jpg"), "image", "bad.jpg"),
        InputItem(str(tmp_path / "gone.png"), "image", "gone.png"),
        InputItem(str(frames), "clip", "clip", (str(frames / "0.png"), str(frames / "1.png"))),
    ]
    ds = InputDataset(items, LoadSpec(parse_resolution("32"), 16))
    loaded = list(make_loader(ds, num_workers=0))
    assert [x.index for x in loaded] == [0, 1, 2, 3]
    assert loaded[0].frames.shape == (1, 3, 32, 48) and loaded[0].frames.dtype == torch.uint8
    assert loaded[0].info["original_size"] == (40, 60) and loaded[0].info["size"] == (32, 48)
    assert loaded[1].frames is None and "cannot identify" in loaded[1].error
    assert loaded[2].frames is None and "not found" in loaded[2].error
    assert loaded[3].frames.shape == (2, 3, 32, 48) and loaded[3].info["frame_names"] == ["0.png", "1.png"]


def test_shape_batcher_groups_by_shape() -> None:
    b = ShapeBatcher(batch_size=3, max_pending=100)
    small, big = torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.ones(1, 3, 32, 16, dtype=torch.uint8)
    assert b.add(0, small) == []
    assert b.add(1, big) == []
    ready = b.add(2, small)  # 4 small frames queued: one full batch of 3
    assert len(ready) == 1 and ready[0].pixels.shape == (3, 3, 16, 16)
    assert ready[0].owners == [(0, 0), (0, 1), (2, 0)]
    rest = b.flush()
    assert sorted(tuple(x.pixels.shape[-2:]) for x in rest) == [(16, 16), (32, 16)]
    assert sorted(o for x in rest for o in x.owners) == [(1, 0), (2, 1)]
    assert b.flush() == []


def test_shape_batcher_bounds_memory() -> None:
    b = ShapeBatcher(batch_size=4, max_pending=4)
    out = []
    for i, side in enumerate([16, 32, 48, 64, 80, 96]):
        out += b.add(i, torch.zeros(1, 3, side, side, dtype=torch.uint8))
    assert sum(len(x.owners) for x in out) >= 2  # the oldest shapes were flushed early
    out += b.flush()
    assert sorted(o for x in out for o in x.owners) == [(i, 0) for i in range(6)]
