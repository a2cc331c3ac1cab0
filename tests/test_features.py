"""The feature-file format (``dinov3_integration.features``): round trip, public reader, damage detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dinov3_integration.features import (
    FORMAT,
    FeatureFileError,
    read_features,
    read_metadata,
    tensors_digest,
    verify_features,
    write_features,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "cls.1": torch.randn(8, generator=g),
        "patch.1": torch.randn(2, 3, 8, generator=g).to(torch.bfloat16),
        "frame_indices": torch.arange(3, dtype=torch.int64),
    }


def test_round_trip_and_public_names(tmp_path: Path) -> None:
    import dinov3_integration
    from dinov3_integration.cli import extract

    path = tmp_path / "a" / "x.png.safetensors"
    tensors = _tensors()
    write_features(path, tensors, {"model": "m", "grid": [2, 3], "source": "/x.png"})
    got, meta = read_features(path)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype
    assert meta["format"] == FORMAT and meta["grid"] == [2, 3] and meta["model"] == "m"
    assert meta["data_digest"] == tensors_digest(tensors)
    assert verify_features(path)["source"] == "/x.png"
    # One reader, three names: the library's, the package's top level, the old CLI path.
    assert dinov3_integration.read_features is read_features and extract.read_features is read_features
    # Plain-open permissions (not mkstemp's 0o600).
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_zeroed_data_section_is_detected(tmp_path: Path) -> None:
    """Issue 14 item 13: an intact header over a zeroed data section is not "complete"."""
    path = tmp_path / "x.safetensors"
    write_features(path, _tensors(), {"source": "s"})
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header:] = bytes(len(raw) - header)
    path.write_bytes(bytes(raw))
    read_metadata(path)  # the header still reads
    with pytest.raises(FeatureFileError, match="data_digest"):
        verify_features(path)
    path.write_bytes(b"not safetensors")
    with pytest.raises(FeatureFileError, match="readable"):
        verify_features(path)


def test_other_format_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "y.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(FeatureFileError, match="format"):
        verify_features(path)
    _, meta = read_features(path)
    assert meta == {"format": "pt"}
    assert json.loads(json.dumps(meta)) == meta


def test_file_sink_find_reads_each_header_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FileSink.find verifies a file and takes its metadata and names from one header read; same results."""
    from types import SimpleNamespace

    import dinov3_integration.features as features
    from dinov3_integration.extraction.sinks import FileSink

    sink, item = FileSink(tmp_path), SimpleNamespace(key="a/x.png")
    write_features(sink.path(item), _tensors(), {"source": "/x.png"})
    raw, names = read_metadata(sink.path(item))
    reads: list[str] = []
    real = features._read_header
    monkeypatch.setattr(features, "_read_header", lambda p: reads.append(os.fspath(p)) or real(p))
    stored = sink.find(item)
    assert reads == [os.fspath(sink.path(item))]
    assert (stored.state, stored.meta, stored.keys) == ("present", raw, frozenset(names))
    assert stored.meta == verify_features(sink.path(item))
    assert sink.find(SimpleNamespace(key="missing.png")).state == "missing"
    sink.path(item).write_bytes(sink.path(item).read_bytes()[:-1])  # data section cut short
    damaged = sink.find(item)
    assert damaged.state == "damaged" and "data section" in damaged.error
