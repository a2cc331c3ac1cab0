"""Preprocessing: sizes, normalisation choice, and bit-equality with the DINOv3 README transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3_integration.data.preprocess import (
    NORMALIZATIONS,
    Resolution,
    choose_normalization,
    load_image,
    normalize,
    parse_resolution,
    reference_transform,
    resize_uint8,
    target_size,
)


def test_parse_resolution() -> None:
    assert parse_resolution("256") == Resolution(short_side=256)
    assert parse_resolution("480x640") == Resolution(size=(480, 640))
    assert parse_resolution(224) == Resolution(short_side=224)
    assert str(parse_resolution("480X640")) == "480x640"
    for bad in ("big", "0", "-3", "12x"):
        with pytest.raises(ValueError, match="resolution"):
            parse_resolution(bad)


@pytest.mark.parametrize(
    ("hw", "res", "expected"),
    [
        ((480, 640), "224", (224, 304)),  # 298.7 -> nearest multiple of 16
        ((640, 480), "224", (304, 224)),
        ((100, 100), "230", (224, 224)),  # the short side is rounded too
        ((10, 1000), "16", (16, 1600)),
        ((480, 640), "100x50", (96, 48)),
        ((480, 640), "4", (16, 16)),  # never below one patch
    ],
)
def test_target_size(hw: tuple[int, int], res: str, expected: tuple[int, int]) -> None:
    assert target_size(*hw, parse_resolution(res), 16) == expected


def test_normalization_choice() -> None:
    assert choose_normalization("auto", None).name == "imagenet"
    assert choose_normalization("auto", "lvd1689m").name == "imagenet"
    sat = choose_normalization("auto", "sat493m")
    assert sat.mean == (0.430, 0.411, 0.296) and sat.std == (0.213, 0.156, 0.143)
    assert choose_normalization("sat493m", None).name == "sat493m"
    with pytest.raises(ValueError):
        choose_normalization("cifar", None)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_matches_readme_transform_bit_for_bit(tmp_path, interpolation: str) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (75, 101, 3), dtype=np.uint8)).save(path)
    norm = NORMALIZATIONS["imagenet"]
    ours = normalize(resize_uint8(load_image(path), (48, 64), interpolation), norm)
    with Image.open(path) as im:
        ref = reference_transform((48, 64), norm, interpolation)(im.convert("RGB"))
    assert ours.dtype == torch.float32 and ours.shape == (3, 48, 64)
    assert torch.equal(ours, ref)


def test_load_image_handles_modes_and_orientation(tmp_path) -> None:
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(gray)
    assert load_image(gray).shape == (3, 5, 7)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 7, 4), np.uint8)).save(rgba)
    assert load_image(rgba).shape == (3, 5, 7)
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(rotated, exif=exif)
    assert load_image(rotated).shape == (3, 7, 5)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(Exception, match="cannot identify"):
        load_image(bad)
