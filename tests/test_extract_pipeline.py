"""The extraction pipeline's fast paths give the same answer as the plain path (issue 15.4).

- ``load_image`` transposes by EXIF in place and skips ``convert`` for RGB images: the pixels equal Pillow's own
  copying pipeline (``ImageOps.exif_transpose`` + ``convert("RGB")`` + ``pil_to_tensor``) for every orientation
  and the usual modes;
- ``make_loader`` with workers and any prefetch depth yields the same items, in the same order, with the same
  pixels as decoding in this process;
- ``dinov3 extract`` writes bit-identical tensors with ``--num-workers 0`` and with workers, for images of mixed
  sizes that fall into different shape batches (and a batch left incomplete).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file
from torchvision.transforms.functional import pil_to_tensor

from dinov3_integration.cli.main import main
from dinov3_integration.data.inputs import discover_inputs
from dinov3_integration.data.loader import InputDataset, LoadSpec, make_loader
from dinov3_integration.data.preprocess import load_image, parse_resolution

TINY = ["--random-weights", "--model-kwargs", "depth=2,embed_dim=64,num_heads=4"]
# (height, width): 32 short side -> (32, 48), (48, 32), (32, 32) and (32, 64): four shape batches.
SIZES = [(40, 60), (60, 40), (40, 60), (50, 50), (40, 60), (30, 60), (60, 40), (40, 60), (45, 45)]


def _pillow_reference(path: Path) -> torch.Tensor:
    """What ``load_image`` did before: Pillow's copying EXIF transpose and conversion, then ``pil_to_tensor``."""
    with Image.open(path) as im:
        im.load()
        return pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))


def _photos(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=85)
        paths.append(path)
    return paths


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_equals_pillows_copying_pipeline_for_every_orientation(tmp_path: Path, orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    path = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)).save(path, exif=exif)
    ours, ref = load_image(path), _pillow_reference(path)
    assert ours.shape == ref.shape == ((3, 9, 14) if orientation < 5 else (3, 14, 9))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "1"])
def test_load_image_equals_pillows_copying_pipeline_for_each_mode(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (11, 13, 4), dtype=np.uint8), "RGBA")
    image = (rgba.convert("RGB") if mode == "P" else rgba).convert(mode)
    path = tmp_path / ("m.jpg" if mode == "CMYK" else "m.png")
    image.save(path)
    ours, ref = load_image(path), _pillow_reference(path)
    assert ours.shape == (3, 11, 13)
    assert torch.equal(ours, ref)


def test_loader_with_workers_and_any_prefetch_equals_decoding_here(tmp_path: Path) -> None:
    items = discover_inputs([str(p) for p in _photos(tmp_path / "in", SIZES)])
    (tmp_path / "in" / "bad.jpg").write_bytes(b"not an image")
    items += discover_inputs([str(tmp_path / "in" / "bad.jpg")])
    dataset = InputDataset(items, LoadSpec(parse_resolution("32"), 16))
    plain = list(make_loader(dataset, num_workers=0))
    assert [x.index for x in plain] == list(range(len(items)))
    assert len({tuple(x.frames.shape) for x in plain if x.frames is not None}) == 4
    assert plain[-1].frames is None and plain[-1].error
    for workers, ahead in [(1, None), (2, 1), (2, 3), (1, 64)]:
        got = list(make_loader(dataset, num_workers=workers, prefetch_items=ahead))
        assert [x.index for x in got] == [x.index for x in plain]
        for a, b in zip(got, plain):
            assert (a.error, a.info) == (b.error, b.info)
            assert (a.frames is None and b.frames is None) or torch.equal(a.frames, b.frames)


def test_loader_refuses_an_empty_prefetch(tmp_path: Path) -> None:
    items = discover_inputs([str(p) for p in _photos(tmp_path, SIZES[:1])])
    dataset = InputDataset(items, LoadSpec(parse_resolution("32"), 16))
    with pytest.raises(ValueError, match="prefetch_items must be at least 1"):
        make_loader(dataset, num_workers=1, prefetch_items=0)


def test_extract_with_workers_is_bit_identical_to_without(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _photos(folder, SIZES)
    outs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        argv = ["extract", str(folder), "--out", str(out), *TINY, "--resolution", "32", "--batch-size", "2"]
        assert main([*argv, "--save", "cls,patch,storage", "--num-workers", workers, "-q"]) == 0
        outs[workers] = {p.name: load_file(p) for p in sorted(out.rglob("*.safetensors"))}
    assert sorted(outs["0"]) == [f"{i:02d}.jpg.safetensors" for i in range(len(SIZES))]
    assert sorted(outs["0"]) == sorted(outs["2"])
    shapes = {tuple(t["patch.1"].shape[:2]) for t in outs["0"].values()}
    assert shapes == {(2, 3), (3, 2), (2, 2), (2, 4)}
    for name, tensors in outs["0"].items():
        other = outs["2"][name]
        assert sorted(tensors) == sorted(other) == ["cls.1", "patch.1", "storage.1"]
        for key, value in tensors.items():
            assert torch.equal(value, other[key]), (name, key)
