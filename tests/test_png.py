"""The PNG writer of the pictures (:mod:`dinov3_integration.pca.png`): Pillow reads back the very pixels written."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dinov3_integration.pca import png
from dinov3_integration.pca.pictures import save_png


def _read_back(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _write(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    png.write_png(buf, pixels)
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (9, 1, 3), (37, 53, 3), (37, 53, 4), (37, 53), (37, 53, 1)])
@pytest.mark.parametrize("block_bytes", [64, 1 << 22])
def test_pixels_read_back_equal(shape, block_bytes: int, monkeypatch) -> None:
    """Random and flat pixels, one block or many (the Up filter carries the row above across blocks)."""
    monkeypatch.setattr(png, "_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(sum(shape))
    noisy = rng.integers(0, 256, shape, dtype=np.uint8)
    flat = np.full(shape, 200, dtype=np.uint8)
    flat[shape[0] // 2 :] = 17
    for pixels in (noisy, flat):
        got = _read_back(_write(pixels))
        np.testing.assert_array_equal(got, pixels.reshape(got.shape))


def test_file_layout_and_the_stdlib_zlib_fallback(monkeypatch) -> None:
    """Signature, IHDR, IDATs forming one zlib stream of Up-filtered rows, IEND; the same with stdlib zlib."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 11, 3), dtype=np.uint8)
    outputs = [_write(pixels)]
    monkeypatch.setattr(png, "_deflate", zlib)
    monkeypatch.setattr(png, "_LEVEL", 1)
    outputs.append(_write(pixels))
    for data in outputs:
        assert data[:8] == png.PNG_SIGNATURE
        pos, chunks = 8, []
        while pos < len(data):
            (n,) = struct.unpack(">I", data[pos : pos + 4])
            tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
            (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
            assert crc == zlib.crc32(tag + body)
            chunks.append((tag, body))
            pos += 12 + n
        assert chunks[0] == (b"IHDR", struct.pack(">IIBBBBB", 11, 20, 8, 2, 0, 0, 0))
        assert chunks[-1] == (b"IEND", b"")
        raw = np.frombuffer(zlib.decompress(b"".join(b for t, b in chunks if t == b"IDAT")), dtype=np.uint8)
        raw = raw.reshape(20, 1 + 33)
        assert (raw[:, 0] == 2).all()
        np.testing.assert_array_equal(np.cumsum(raw[:, 1:], axis=0, dtype=np.uint8), pixels.reshape(20, 33))
        np.testing.assert_array_equal(_read_back(data), pixels)


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "not empty"),
        (np.zeros((2, 4, 4, 3), np.uint8), "uint8"),
    ],
)
def test_bad_pixels_are_refused(pixels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        png.write_png(io.BytesIO(), pixels)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16"])
def test_save_png_keeps_every_mode_pixel_for_pixel(tmp_path, mode: str) -> None:
    """RGB, L, RGBA through write_png; other modes through Pillow: the file holds the picture's pixels."""
    rng = np.random.default_rng(5)
    base = Image.fromarray(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        picture = Image.fromarray(np.asarray(base.convert("L")).astype("<u2") * 257)
    else:
        picture = base.convert("RGB").convert("P") if mode == "P" else base.convert(mode)
    save_png(picture, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == picture.mode
        np.testing.assert_array_equal(np.asarray(im), np.asarray(picture))
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind
