"""The shard format (``dinov3_integration.feature_shards``): read back with safetensors/numpy alone, size bound,
atomic commits, resume after kills at random points, and an index that always equals the shards' own headers."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov3_integration.feature_shard_index import build_index, load_index, scan_shards, write_index
from dinov3_integration.feature_shards import (
    INDEX_NAME,
    ShardWriter,
    parse_size,
    remove_stale_shard_temps,
    shard_files,
    shard_name,
)
from dinov3_integration.features import FeatureShards, read_features

D = 8


def features(i: int, *, video: bool = False, version: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Input ``i``'s tensors (per-file shapes; the grid depends on ``i``) and metadata, deterministic."""
    g = torch.Generator().manual_seed(1000 * version + i)
    h, w = 1 + i % 3, 2 + i % 2
    t = 3 if video else None
    lead = (t,) if t else ()
    tensors = {
        "cls.1": torch.randn(*lead, D, generator=g),
        "patch.1": torch.randn(*lead, h, w, D, generator=g),
        "storage.1": torch.randn(*lead, 2, D, generator=g).to(torch.float16),
    }
    if video:
        tensors["frame_indices"] = torch.tensor([0, 4, 7])
        tensors["frame_times"] = torch.tensor([0.0, 0.4, 0.7], dtype=torch.float64)
    meta = {
        "model": "dinov3_vits16",
        "config_digest": "sha256:c",
        "source": f"/data/{i}.png",
        "source_signature": f"{i}:{version}",
        "kind": "video" if video else "image",
        "grid": [h, w],
        "num_frames": t or 1,
        "resolution": "256",
    }
    return tensors, meta


def write_all(folder: Path, ids: list[int], **kwargs) -> ShardWriter:
    writer = ShardWriter(folder, **kwargs)
    for i in ids:
        tensors, meta = features(i, video=i % 7 == 6)
        writer.add(f"/data/{i}.png", tensors, meta, key=f"{i}.png")
    writer.close()
    return writer


def test_read_back_with_safetensors_numpy_only(tmp_path: Path) -> None:
    """What the README promises: index.json + safetensors.numpy give the CLS matrix and each patch grid."""
    from safetensors.numpy import load_file

    ids = list(range(12))
    write_all(tmp_path, ids, max_bytes="3KB")
    write_index(tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(index["shards"]) > 2 and len(index["rows"]) == len(ids)
    shards = {s["file"]: load_file(str(tmp_path / s["file"])) for s in index["shards"]}

    def get(row: dict, name: str) -> np.ndarray:
        slot = row["tensors"][name]
        return shards[row["shard"]][name][slot["offset"] : slot["offset"] + slot["length"]].reshape(slot["shape"])

    images = [r for r in index["rows"] if r["kind"] == "image"]
    cls = np.stack([get(r, "cls.1") for r in images])
    assert cls.shape == (len(images), D)
    for n, r in enumerate(images):
        i = int(Path(r["input"]).stem)
        tensors, meta = features(i)
        assert np.array_equal(cls[n], tensors["cls.1"].numpy())
        patch = get(r, "patch.1")
        assert patch.shape == (*meta["grid"], D) and r["grid"] == meta["grid"]
        assert np.array_equal(patch, tensors["patch.1"].numpy())
        assert get(r, "storage.1").dtype == np.float16
    video = next(r for r in index["rows"] if r["kind"] == "video")
    expected, _ = features(int(Path(video["input"]).stem), video=True)
    assert get(video, "patch.1").shape == tuple(expected["patch.1"].shape)  # [T, h, w, D], one row per video
    for name, value in expected.items():
        assert np.array_equal(get(video, name), value.numpy())
    # Without the index: the shard's own header says where the rows are.
    from safetensors import safe_open

    with safe_open(str(tmp_path / video["shard"]), framework="np") as fh:
        rows = json.loads(fh.metadata()["rows"])
    assert rows[video["row"]]["tensors"] == video["tensors"]


def test_library_reader_equals_what_was_written(tmp_path: Path) -> None:
    ids = list(range(9))
    write_all(tmp_path, ids, max_bytes="4KB")
    write_index(tmp_path)
    for path in (tmp_path, tmp_path / INDEX_NAME):
        shards = read_features(path)
        assert isinstance(shards, FeatureShards) and len(shards) == len(ids)
        for i in ids:
            expected, meta = features(i, video=i % 7 == 6)
            got, got_meta = shards[f"{i}.png"]  # by key; by input path too
            assert set(got) == set(expected)
            assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in expected.items())
            assert {k: got_meta[k] for k in meta} == {**meta, "resolution": 256}  # decoded like a feature file
            assert shards.row(f"/data/{i}.png") == shards.row(f"{i}.png")
    one = read_features(tmp_path / shard_name(0, 0))
    assert isinstance(one, FeatureShards) and 0 < len(one) < len(ids)
    images = [i for i in ids if i % 7 != 6]
    cls = FeatureShards(tmp_path).stack("cls.1", [f"{i}.png" for i in images])
    assert torch.equal(cls, torch.stack([features(i)[0]["cls.1"] for i in images]))
    with pytest.raises(ValueError, match="different shapes"):  # the video's cls.1 is [T, D]
        FeatureShards(tmp_path).stack("patch.1")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1GB", 10**9), ("1 gb", 10**9), ("2GiB", 2 * 2**30), ("500MB", 5 * 10**8), ("1.5KB", 1500), ("4096", 4096)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "big", "1XB", "-1GB", "0", "1e9", "GB"])
def test_parse_size_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. .*1GB"):
        parse_size(text)


def test_shard_size_bound(tmp_path: Path) -> None:
    bound = 6000
    write_all(tmp_path, list(range(60)), max_bytes=bound)
    sizes = {name: (tmp_path / name).stat().st_size for name in shard_files(tmp_path)}
    scan = scan_shards(tmp_path)
    assert len(scan.rows) == 60 and scan.superseded == 0
    for name, size in sizes.items():
        assert size <= bound or len(scan.shards[name].rows) == 1
    # Filled, not one row each: every shard but the last holds at least half the bound.
    assert sum(size >= bound / 2 for size in sizes.values()) >= len(sizes) - 1 and len(sizes) < 30
    # A row larger than the bound gets a shard of its own.
    big = tmp_path / "big"
    writer = ShardWriter(big, max_bytes=3000)
    committed = writer.add("/big.png", {"cls.1": torch.zeros(1000)}, {"source": "/big.png"})
    assert committed == [shard_name(0, 0)] and writer.pending == 0 and writer.shard_of("/big.png") == shard_name(0, 0)
    writer.add("/small.png", {"cls.1": torch.zeros(1)}, {"source": "/small.png"})
    assert writer.shard_of("/small.png") == shard_name(0, 1) and writer.pending == 1  # where it will be committed
    with pytest.raises(ValueError, match="already in the shard"):
        writer.add("/small.png", {"cls.1": torch.zeros(1)}, {"source": "/small.png"})
    assert writer.close() == [shard_name(0, 0), shard_name(0, 1)] and writer.shard_of("/small.png") == shard_name(0, 1)


def test_commit_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    writer = ShardWriter(tmp_path, max_bytes="1MB")
    tensors, meta = features(0)
    writer.add("/data/0.png", tensors, meta)

    def failing(tensors: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"half a shard")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="No space"):
        writer.flush()
    assert os.listdir(tmp_path) == [] and writer.pending == 1  # nothing under any name; the row is kept
    monkeypatch.undo()
    assert writer.flush() == shard_name(0, 0)
    assert sorted(os.listdir(tmp_path)) == [shard_name(0, 0)]


def _run_killed(folder: Path, ids: list[int], kill: tuple[str, int]) -> None:
    """In a forked child: resume the job like ``dinov3 extract --resume`` and die abruptly at ``kill``."""
    mode, after = kill
    pid = os.fork()
    if pid == 0:  # the child never returns
        try:
            import safetensors.torch

            if mode in ("in_save", "torn_save"):
                real = safetensors.torch.save_file
                calls = []

                def dying(tensors: dict, path: str, metadata: dict) -> None:
                    calls.append(1)
                    if len(calls) > after:
                        real(tensors, path, metadata=metadata)
                        if mode == "torn_save":
                            Path(path).write_bytes(Path(path).read_bytes()[:100])
                        os._exit(9)  # the temporary is left behind, never renamed
                    real(tensors, path, metadata=metadata)

                safetensors.torch.save_file = dying
            resume(folder, ids, exit_after=after if mode == "after_add" else None)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the forked writer hung")
        time.sleep(0.01)


def resume(folder: Path, ids: list[int], *, exit_after: int | None = None, rank: int = 0) -> None:
    """What an extraction run does: skip the inputs in committed, verified shards; write the rest."""
    remove_stale_shard_temps(folder)
    inputs = [f"/data/{i}.png" for i in ids]
    done = scan_shards(folder, verify=inputs).rows
    writer = ShardWriter(folder, rank=rank, max_bytes=5000)
    added = 0
    for i, name in zip(ids, inputs):
        if name in done:
            continue
        tensors, meta = features(i, video=i % 7 == 6)
        writer.add(name, tensors, meta, key=f"{i}.png")
        added += 1
        if exit_after is not None and added >= exit_after:
            os._exit(9)  # buffered rows are lost, like a kill
    writer.close()
    write_index(folder)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_resume_after_kills_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(16)
    ids = list(range(60))
    modes = ["after_add", "in_save", "torn_save", "after_add", "in_save", "torn_save"]
    for mode in modes:  # die after 2..10 new rows, or while writing the 2nd..4th shard
        _run_killed(tmp_path, ids, (mode, rng.randint(2, 10) if mode == "after_add" else rng.randint(1, 3)))
        assert 0 < len(scan_shards(tmp_path).rows) < len(ids)  # each run died with work left
    resume(tmp_path, ids)  # the last, complete run
    # Nothing lost: every input once in the index, with exactly the tensors written.
    shards = FeatureShards(tmp_path)
    assert shards.inputs == sorted(f"/data/{i}.png" for i in ids)
    for i in ids:
        expected, _ = features(i, video=i % 7 == 6)
        got = shards.tensors(f"/data/{i}.png")
        assert set(got) == set(expected) and all(torch.equal(got[k], v) for k, v in expected.items())
    # Nothing duplicated: across every shard file on disk, each input appears once.
    scan = scan_shards(tmp_path, verify=True)
    all_rows = [rec["input"] for info in scan.shards.values() for rec in info.rows]
    assert sorted(all_rows) == sorted(set(all_rows)) and len(all_rows) == len(ids) and not scan.excluded
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")], "temporaries left behind"


def test_index_rebuilt_equals_incremental_record_and_follows_the_shards(tmp_path: Path) -> None:
    """Two ranks write interleaved; the index rank 0 writes equals one rebuilt from scratch and the writers' own
    account of where each row went; a new shard makes the old index stale for readers."""
    writers = [ShardWriter(tmp_path, rank=r, max_bytes=3000) for r in (0, 1)]
    where: dict[str, str] = {}
    pending: dict[int, list[str]] = {0: [], 1: []}
    for i in range(30):
        r = i % 2
        tensors, meta = features(i)
        pending[r].append(f"/data/{i}.png")
        for committed in writers[r].add(f"/data/{i}.png", tensors, meta):
            for name in pending[r][:-1] if writers[r].pending else pending[r]:
                where[name] = committed
            pending[r] = pending[r][-1:] if writers[r].pending else []
    for r, w in enumerate(writers):
        last = w.flush()
        for name in pending[r]:
            where[name] = last
    index = write_index(tmp_path)
    assert {row["input"]: row["shard"] for row in index["rows"]} == where
    assert {s["file"] for s in index["shards"]} == set(shard_files(tmp_path))
    assert {s["rank"] for s in index["shards"]} == {0, 1}
    (tmp_path / INDEX_NAME).unlink()
    assert build_index(scan_shards(tmp_path)) == index
    write_index(tmp_path)
    assert load_index(tmp_path) == index
    # Input 0 extracted again (its source changed): a newer shard supersedes its old row.
    late = ShardWriter(tmp_path, rank=0, max_bytes=3000)
    tensors, meta = features(0, version=1)
    late.add("/data/0.png", tensors, meta)
    late.close()
    assert load_index(tmp_path) is None  # a shard the index does not list: readers rebuild
    shards = FeatureShards(tmp_path)
    assert torch.equal(shards.tensors("/data/0.png")["cls.1"], tensors["cls.1"])
    assert shards.metadata("/data/0.png")["source_signature"] == "0:1" and len(shards) == 30
    assert scan_shards(tmp_path).superseded == 1


def test_superseded_shards_are_pruned_and_damaged_ones_redone(tmp_path: Path) -> None:
    write_all(tmp_path, [0, 1], max_bytes="1MB")  # shard 0: inputs 0, 1
    write_all(tmp_path, [2], max_bytes="1MB")  # shard 1: input 2
    writer = ShardWriter(tmp_path, max_bytes="1MB")  # shard 2: inputs 0 and 1 again
    for i in (0, 1):
        tensors, meta = features(i, version=1)
        writer.add(f"/data/{i}.png", tensors, meta)
    writer.close()
    index = write_index(tmp_path)
    assert sorted(shard_files(tmp_path)) == [shard_name(0, 1), shard_name(0, 2)]  # shard 0 had no newest row
    assert [s["file"] for s in index["shards"]] == [shard_name(0, 1), shard_name(0, 2)]
    # Damage shard 1's data (intact header): verification excludes it, so input 2 is extracted again.
    path = tmp_path / shard_name(0, 1)
    raw = bytearray(path.read_bytes())
    raw[-8:] = bytes(8)
    path.write_bytes(bytes(raw))
    scan = scan_shards(tmp_path, verify=["/data/2.png"])
    assert "/data/2.png" not in scan.rows and shard_name(0, 1) in scan.excluded and "/data/2.png" in scan.lost
    assert "/data/0.png" in scan.rows  # shard 2 was not needed for input 2, so not read
    with pytest.raises(ValueError, match="damaged"):
        FeatureShards(tmp_path).verify()


def test_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_shards.py (figures in benchmarks/README.md) still runs; a tiny size, no timing checked."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_shards

    assert bench_shards.main(["--rows", "12", "--rounds", "1", "--dim", "8", "--shard-size", "8KB"]) == 0
    out = capsys.readouterr().out
    files = {
        line.split()[0]: int(line.split()[3]) for line in out.splitlines() if line.startswith(("files ", "shards "))
    }
    assert files["files"] == 12 and 2 < files["shards"] < 12  # several shards of 8 KB, plus index.json
