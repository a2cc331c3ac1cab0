"""Tests for reading/writing checkpoint files: safetensors, weights_only pickles, unwrapping, HF folders."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from dinov3_integration.hub import checkpoint_io
from dinov3_integration.hub.checkpoint_io import (
    hf_weight_files,
    is_hf_model_folder,
    load_hf_model_folder,
    load_state_dict_file,
    read_safetensors_metadata,
    save_state_dict_file,
    unwrap_state_dict,
)
from dinov3_integration.hub.errors import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)


class CustomPayload:
    """A class the weights_only unpickler does not know: loading it would need arbitrary code."""

    def __init__(self) -> None:
        self.value = 1


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "cls_token": torch.randn(1, 1, 8, generator=gen),
        "blocks.0.attn.qkv.weight": torch.randn(24, 8, generator=gen),
        "blocks.0.attn.qkv.bias": torch.randn(24, generator=gen),
        "norm.weight": torch.ones(8),
        "rope_embed.periods": torch.arange(4, dtype=torch.bfloat16),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    sd = tiny_state_dict()
    path = save_state_dict_file(sd, tmp_path / f"w{suffix}")
    assert_same(load_state_dict_file(path), sd)
    assert files_in(tmp_path) == [f"w{suffix}"]  # no temporary file left behind


def test_safetensors_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    sd = {"a": base, "tied": base, "t": base.t(), "view": base[2:4], "empty": torch.empty(0)}
    path = save_state_dict_file(sd, tmp_path / "w.safetensors", metadata={"mean": [0.485, 0.456, 0.406], "tag": "x"})
    loaded = load_state_dict_file(path)
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    meta = read_safetensors_metadata(path)
    assert meta["format"] == "pt" and meta["tag"] == "x" and json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert sd["t"].is_contiguous() is False  # the caller's tensors are not modified


def test_pth_view_saved_compactly(tmp_path: Path) -> None:
    big = torch.zeros(1000, 1000)
    path = save_state_dict_file({"row": big[0]}, tmp_path / "w.pth")
    assert path.stat().st_size < 100_000  # not the whole 4 MB base storage


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_state_dict_file(tiny_state_dict(0), tmp_path / "w.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict_file(tiny_state_dict(1), path)
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["w.safetensors"]


def test_save_rejects_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="not a tensor"):
        save_state_dict_file({"a": 1}, tmp_path / "w.safetensors")  # type: ignore[dict-item]


# --------------------------------------------------------------------------------------------- refusals


def test_pickle_needing_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "obj": CustomPayload()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "CustomPayload" in message and "arbitrary code" in message and "safetensors" in message
    assert isinstance(info.value, WeightsError)


class _RunsCode:
    """Unpickling this creates the folder ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_is_refused_as_unsafe_not_damaged(tmp_path: Path, protocol: int) -> None:
    # A raw pickle (pickle.dump, not torch.save) that runs code when unpickled: refused as unsafe, never run.
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _RunsCode(marker)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "unsafe" in message and "damaged or truncated" not in message
    assert "save_state_dict_file" in message and ".safetensors" in message  # how to convert it safely
    assert not marker.exists()


def test_html_error_page_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    path.write_text("<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>")
    with pytest.raises(CheckpointFormatError, match="HTML/XML page"):
        load_state_dict_file(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_explained(tmp_path: Path, suffix: str) -> None:
    path = save_state_dict_file(tiny_state_dict(), tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="damaged or truncated"):
        load_state_dict_file(path)


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        load_state_dict_file(tmp_path / "missing.pth")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"\x00" * 32)
    with pytest.raises(CheckpointFormatError, match="Unsupported"):
        load_state_dict_file(odd)


def test_content_sniffed_when_suffix_unknown(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    for name in ("a.safetensors", "b.pth"):
        path = save_state_dict_file(sd, tmp_path / name)
        path.rename(tmp_path / f"{name}.download")
        assert_same(load_state_dict_file(tmp_path / f"{name}.download"), sd)


# --------------------------------------------------------------------------------------------- unwrapping


def test_training_checkpoint_prefers_teacher(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = tiny_state_dict()
    teacher = {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.mlp.0.weight": torch.zeros(2)}
    student = {f"backbone.{k}": v + 1 for k, v in sd.items()}
    path = tmp_path / "train.pth"
    torch.save({"model": {"teacher": teacher, "student": student}, "iteration": 10}, path)
    with caplog.at_level(logging.DEBUG, logger="dinov3.hub"):
        loaded = load_state_dict_file(path)
    assert_same({k: loaded[k] for k in sd}, sd)
    assert "dino_head.mlp.0.weight" in loaded  # keys without the prefix are left as they are
    assert "model -> teacher" in caplog.text


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "model_state_dict"])
def test_plain_wrappers_and_ddp_prefix(wrapper: str) -> None:
    sd = tiny_state_dict()
    wrapped = {wrapper: {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "optimizer": {"state": {}}}
    assert_same(unwrap_state_dict(wrapped), sd)


def test_stacked_prefixes_are_all_removed() -> None:
    sd = tiny_state_dict()
    assert_same(unwrap_state_dict({f"module._orig_mod.backbone.{k}": v for k, v in sd.items()}), sd)


def test_plain_state_dict_untouched() -> None:
    sd = tiny_state_dict()
    assert_same(unwrap_state_dict(sd), sd)


def test_student_only_is_used_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sd = tiny_state_dict()
    with caplog.at_level(logging.WARNING, logger="dinov3.hub"):
        assert_same(unwrap_state_dict({"student": {f"backbone.{k}": v for k, v in sd.items()}}), sd)
    assert "student" in caplog.text


def test_prefix_collision_is_an_error() -> None:
    with pytest.raises(CheckpointFormatError, match="both"):
        unwrap_state_dict({"backbone.norm.weight": torch.ones(1), "norm.weight": torch.ones(1)})


def test_not_a_dict_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointFormatError, match="state_dict"):
        load_state_dict_file(path)


def test_non_tensor_entries_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2), "note": "hello", "step": 5}, path)
    assert list(load_state_dict_file(path)) == ["w"]


# --------------------------------------------------------------------------------------------- HF folders


def write_hf_folder(folder: Path, sd: dict[str, torch.Tensor], shards: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "hidden_size": 8}))
    if shards == 1:
        save_state_dict_file(sd, folder / "model.safetensors")
        return
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_state_dict_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_folder(tmp_path: Path, shards: int) -> None:
    sd = tiny_state_dict()
    write_hf_folder(tmp_path / "repo", sd, shards)
    assert is_hf_model_folder(tmp_path / "repo")
    loaded, config = load_hf_model_folder(tmp_path / "repo")
    assert_same(loaded, sd)
    assert config["model_type"] == "dinov3_vit"
    assert len(hf_weight_files(tmp_path / "repo")) == shards


def test_hf_folder_missing_shard_and_config(tmp_path: Path) -> None:
    write_hf_folder(tmp_path / "repo", tiny_state_dict(), shards=2)
    (tmp_path / "repo" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="missing"):
        load_hf_model_folder(tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    assert not is_hf_model_folder(tmp_path / "empty")
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        load_hf_model_folder(tmp_path / "empty")


def test_public_names_exist() -> None:
    for name in ("load_state_dict_file", "save_state_dict_file", "unwrap_state_dict", "load_hf_model_folder"):
        assert callable(getattr(checkpoint_io, name))
