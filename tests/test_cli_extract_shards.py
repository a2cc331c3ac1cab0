"""``dinov3 extract --format shards`` (issue 16 items 2-4), run the user's ways: the command in process, killed
subprocesses, ``torchrun`` with 2 ranks, and ``dinov3_integration.extract(..., format="shards")``.

Every comparison is against the default per-file outputs of the same inputs (``torch.equal``: the same code
computes both; only the layout differs). Tiny random models and inputs, as in ``tests/test_cli_extract.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import cli_env, main_in_subprocess, make_video, manifest, write_images
from _helpers import run_dinov3 as dinov3
from dinov3_integration.cli.main import main
from dinov3_integration.feature_shard_index import scan_shards
from dinov3_integration.features import FeatureShards, read_features

TINY = ["--random-weights", "--model-kwargs", "depth=2,embed_dim=32,num_heads=2", "--resolution", "32"]
COMMON = [*TINY, "--batch-size", "2", "--save", "cls,patch,storage", "--frames", "3", "--num-workers", "0", "-q"]
SHARDS = ["--format", "shards", "--shard-size", "8KB"]  # about two rows per shard: several shards per run
IMAGES = [("a.png", 48, 64), ("b.jpg", 64, 48), ("sub/c.png", 40, 40), ("sub/d.png", 48, 64), ("sub/e.png", 32, 32)]
IGNORED_META = {"format", "data_digest", "shard", "row"}  # what names the container, not the content


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards_data") / "imgs"
    write_images(root, IMAGES)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    pytest.importorskip("av")
    make_video(root / "clip.mp4")
    return root


@pytest.fixture(scope="module")
def per_file(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default layout of the dataset: the reference every shard row is compared with."""
    out = tmp_path_factory.mktemp("files") / "out"
    assert main(["extract", str(dataset), "--out", str(out), *COMMON]) == 1  # broken.jpg fails
    return out


def assert_rows_equal_files(shards_out: Path, files_out: Path) -> None:
    """Every per-file output has one shard row with equal tensors (torch.equal) and metadata; nothing more."""
    shards = read_features(shards_out)
    assert isinstance(shards, FeatureShards)
    records = [r for r in manifest(files_out) if r["output"]]
    assert shards.inputs == sorted(r["input"] for r in records)
    for rec in records:
        tensors, meta = read_features(files_out / rec["output"])
        got, got_meta = shards[rec["input"]]
        assert set(got) == set(tensors), rec["input"]
        for k, v in tensors.items():
            assert torch.equal(got[k], v) and got[k].dtype == v.dtype, (rec["input"], k)
        strip = lambda m: {k: v for k, v in m.items() if k not in IGNORED_META}  # noqa: E731
        assert strip(got_meta) == strip(meta), rec["input"]
    # Nothing duplicated anywhere on disk, every shard complete.
    scan = scan_shards(shards_out, verify=True)
    on_disk = [row["input"] for info in scan.shards.values() for row in info.rows]
    assert len(on_disk) == len(set(on_disk)) == len(records) and not scan.excluded
    assert not [p for p in shards_out.iterdir() if p.name.endswith(".tmp")]


def test_shards_equal_per_file_outputs(
    dataset: Path, per_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["extract", str(dataset), "--out", str(out), *COMMON, *SHARDS]) == 1
    assert_rows_equal_files(out, per_file)
    index = json.loads((out / "index.json").read_text())
    assert len(index["shards"]) >= 2 and all(s["bytes"] <= 8000 or s["rows"] == 1 for s in index["shards"])
    video = next(r for r in index["rows"] if r["kind"] == "video")
    assert video["tensors"]["patch.1"]["shape"] == [3, 2, 3, 32]  # item 4: one row per video, [T, h, w, D]
    # The manifest names each input's shard; a rerun finds everything complete.
    records = {r["input"]: r for r in manifest(out)}
    for row in index["rows"]:
        assert records[row["input"]]["output"] == row["shard"] and records[row["input"]]["status"] == "ok"
    assert main(["extract", str(dataset), "--out", str(out), *COMMON, *SHARDS]) == 1
    assert sorted({r["status"] for r in manifest(out)}) == ["cached", "failed"]
    assert json.loads((out / "index.json").read_text()) == index
    assert_pca_equals_files(out, per_file, tmp_path, capsys)


def _picture(tmp_path: Path, *paths: Path | str) -> np.ndarray:
    """The pixels of ``dinov3 pca --from-features PATHS`` (which must succeed)."""
    from PIL import Image

    out = tmp_path / f"pca{len(list(tmp_path.glob('pca*.png')))}.png"
    assert main(["pca", "--from-features", *map(str, paths), "--out", str(out), "-q"]) == 0
    with Image.open(out) as im:
        return np.asarray(im)


def assert_pca_equals_files(out: Path, files_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pca --from-features`` of the shard folder, its index.json and one shard: the picture of the per-file
    outputs of the same inputs in the same (sorted) order, pixel for pixel; a folder of files is a clear error."""
    outputs = {r["input"]: files_out / r["output"] for r in manifest(files_out) if r["output"]}
    inputs = read_features(out).inputs
    assert any(i.endswith(".mp4") for i in inputs) and len(inputs) == 6  # the video: one row per frame
    want = _picture(tmp_path, *(outputs[i] for i in inputs))
    np.testing.assert_array_equal(_picture(tmp_path, out), want)
    np.testing.assert_array_equal(_picture(tmp_path, out / "index.json"), want)
    index = json.loads((out / "index.json").read_text())
    shard = max(index["shards"], key=lambda s: s["rows"])["file"]  # one shard: its inputs only
    held = [r["input"] for r in index["rows"] if r["shard"] == shard]
    np.testing.assert_array_equal(_picture(tmp_path, out / shard), _picture(tmp_path, *(outputs[i] for i in held)))
    capsys.readouterr()
    assert main(["pca", "--from-features", str(files_out), "--out", str(tmp_path / "no.png")]) == 2
    assert "is a folder but not a shard folder" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
    # A shard whose header cannot be read (and no index.json to trust): its inputs are left out, loudly (exit 1).
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "index.json").unlink()
    (damaged / shard).write_bytes(b"\xff" * 64)
    kept = [r["input"] for r in index["rows"] if r["shard"] != shard]
    from PIL import Image

    assert main(["pca", "--from-features", str(damaged), "--out", str(tmp_path / "d.png"), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{damaged / shard}: a damaged shard, its inputs are not drawn" in err
    with Image.open(tmp_path / "d.png") as im:
        np.testing.assert_array_equal(np.asarray(im), _picture(tmp_path, *(outputs[i] for i in kept)))


def test_killed_shard_runs_resume_without_loss_or_duplicates(dataset: Path, per_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["extract", str(dataset), "--out", str(out), *COMMON, *SHARDS]
    committed = []
    for exit_after in ("3", "3"):  # killed twice, each time after a few more rows
        killed = dinov3(*args, env=cli_env(DINOV3_EXTRACT_EXIT_AFTER=exit_after))
        assert killed.returncode == 75, killed.stderr  # the hook's abrupt exit, like a kill
        assert not (out / "manifest.jsonl").exists()
        committed.append(len(scan_shards(out).rows))
    # Each kill kept what was committed and left work (the rows still buffered are redone).
    assert committed == sorted(committed) and 1 <= committed[0] and committed[-1] < len(IMAGES) + 1
    # A shard damaged behind an intact header (e.g. by the disk) is set aside and its inputs redone.
    first = out / sorted(scan_shards(out).shards)[0]
    lost = {row["input"] for row in scan_shards(out).shards[first.name].rows}
    raw = bytearray(first.read_bytes())
    raw[-4:] = bytes(4)
    first.write_bytes(bytes(raw))
    assert main(args) == 1  # broken.jpg still fails
    statuses = {r["input"]: r["status"] for r in manifest(out)}
    assert sorted(statuses.values()).count("cached") == committed[-1] - len(lost)
    assert all(statuses[i] == "ok" for i in lost) and (out / (first.name + ".damaged")).is_file()
    assert_rows_equal_files(out, per_file)


def test_torchrun_two_ranks_give_the_rows_of_one_process(dataset: Path, per_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dinov3_integration", "extract", str(dataset), "--out", str(out), *COMMON, *SHARDS, "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "7 inputs: 6 written" in proc.stderr, proc.stderr  # broken.jpg fails on one rank
    index = json.loads((out / "index.json").read_text())
    assert {s["rank"] for s in index["shards"]} == {0, 1}  # disjoint names per rank, one index
    assert not list(out.glob("manifest.rank*"))
    assert_rows_equal_files(out, per_file)


def test_python_api_writes_the_same_shards(dataset: Path, per_file: Path, tmp_path: Path) -> None:
    import dinov3_integration

    out = tmp_path / "out"
    report = dinov3_integration.extract(
        [dataset], random_weights=True, model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2},
        resolution=32, batch_size=2, save="cls,patch,storage", frames=3, num_workers=0, quiet=True,
        out=out, format="shards", shard_size="8KB",
    )  # fmt: skip
    assert report.counts["failed"] == 1
    assert_rows_equal_files(out, per_file)


def test_bad_shard_options_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    base = ["extract", str(image), "--out", str(tmp_path / "out"), *TINY, "-q"]
    assert main([*base, "--format", "shards", "--shard-size", "lots"]) == 2
    assert "--shard-size" in capsys.readouterr().err
    assert main([*base, "--shard-size", "1GB"]) == 2  # files format
    assert "--format shards" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "numpy cannot read bfloat16" in help_text and "float16" in help_text and "--format" in help_text


def test_complete_shard_rerun_imports_no_torch(tmp_path: Path) -> None:
    """Issue 15.2 for shards: a rerun that finds every row complete (verified) never imports torch."""
    write_images(tmp_path / "in", [(f"{i}.png", 40, 48) for i in range(3)], seed=3)
    args = ["extract", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *TINY, "--num-workers", "0", *SHARDS]
    assert main(args) == 0
    result = main_in_subprocess(args)
    assert (result["rc"], result["loaded"]) == (0, []) and "3 already complete" in result["stderr"], result
    assert [r["status"] for r in manifest(tmp_path / "out")] == ["cached"] * 3


def test_pca_from_shards_imports_no_torch(tmp_path: Path) -> None:
    """``pca --from-features <shard folder>`` of images, in a fresh interpreter: no torch (as for feature files),
    and the picture of the per-file outputs of the same images."""
    from PIL import Image

    from dinov3_integration.pca.panels import can_resize_like_torch

    write_images(tmp_path / "in", [(f"{i}.png", 40, 48) for i in range(3)], seed=4)
    args = ["extract", str(tmp_path / "in"), *TINY, "--num-workers", "0", "-q"]
    assert main([*args, "--out", str(tmp_path / "files")]) == 0
    assert main([*args, "--out", str(tmp_path / "shards"), *SHARDS]) == 0
    files = [
        str(tmp_path / "files" / r["output"]) for r in sorted(manifest(tmp_path / "files"), key=lambda r: r["input"])
    ]
    pictures = []
    for name, paths in (("shards", [str(tmp_path / "shards")]), ("files", files)):
        result = main_in_subprocess(["pca", "--from-features", *paths, "--out", str(tmp_path / f"{name}.png"), "-q"])
        assert result["rc"] == 0, result
        if can_resize_like_torch("bilinear"):  # else the input panels are resized by torch
            assert not {"torch", "torchvision"} & set(result["loaded"]), result
        with Image.open(tmp_path / f"{name}.png") as im:
            pictures.append(np.asarray(im))
    assert pictures[0].shape[0] > 3 * 32
    np.testing.assert_array_equal(pictures[0], pictures[1])
