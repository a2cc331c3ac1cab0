"""End-to-end tests of ``dinov3 extract`` (subprocesses of the real command, tiny random models, tiny inputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import cli_env, make_video, manifest, run_dinov3, write_images

TINY_KW = {"depth": 2, "embed_dim": 64, "num_heads": 4}
TINY = ["--random-weights", "--model-kwargs", "depth=2,embed_dim=64,num_heads=4"]
COMMON = [*TINY, "--resolution", "32", "--batch-size", "2", "--save", "cls,patch", "--save", "storage", "--frames", "3"]
# (relative path, height, width); two images share a resized shape so batching by shape is exercised.
IMAGES = [("imgs/a.png", 48, 64), ("imgs/b.jpg", 64, 48), ("imgs/sub/c.png", 40, 40), ("imgs/sub/d.png", 48, 64)]
N_INPUTS = len(IMAGES) + 2  # + broken.jpg + clip.mp4


def dinov3(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m dinov3_integration.cli.main ARGS`` and return the completed process."""
    return run_dinov3(*args, env=env, timeout=timeout, module="dinov3_integration.cli.main")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extract_data")
    write_images(root, IMAGES)
    (root / "imgs/broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    make_video(root / "imgs/clip.mp4")
    return root


@pytest.fixture(scope="module")
def single_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One single-process extraction of the whole dataset (shared by several tests)."""
    out = tmp_path_factory.mktemp("single") / "out"
    proc = dinov3(
        "extract", str(dataset / "imgs"), "--out", str(out), *COMMON, "--num-workers", "1", "--log-interval", "0"
    )
    return out, proc


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def tiny_model() -> torch.nn.Module:
    from dinov3_integration.models import create_model

    torch.manual_seed(0)
    return create_model("dinov3_vits16", **TINY_KW).eval()


def reference(model: torch.nn.Module, image: np.ndarray | object, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The model called directly on the README transform (v2 ToImage/Resize/ToDtype/Normalize) of one image."""
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(list(size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    x = tf(image)[None]
    with torch.inference_mode():
        out = model.forward_features(x)
    h, w = size[0] // 16, size[1] // 16
    return {
        "cls.1": out["x_norm_clstoken"][0],
        "patch.1": out["x_norm_patchtokens"][0].reshape(h, w, -1),
        "storage.1": out["x_storage_tokens"][0],
    }


def test_extract_matches_model_and_reports_failures(dataset: Path, single_run: tuple) -> None:
    from PIL import Image

    out, proc = single_run
    assert proc.returncode == 1, proc.stderr  # broken.jpg failed
    assert "broken.jpg" in proc.stderr and "failed" in proc.stderr
    assert f"{N_INPUTS} inputs: {N_INPUTS - 1} written, 0 already complete, 1 failed" in proc.stderr
    # stderr is not a terminal: plain progress lines instead of a bar
    assert f"extract: {N_INPUTS}/{N_INPUTS} inputs (100%)" in proc.stderr and "items/s, ETA" in proc.stderr

    records = manifest(out)
    assert [r["input"] for r in records] == sorted(r["input"] for r in records)
    assert len(records) == N_INPUTS and len({r["input"] for r in records}) == N_INPUTS
    by_name = {Path(r["input"]).name: r for r in records}
    assert by_name["broken.jpg"]["status"] == "failed" and by_name["broken.jpg"]["output"] is None
    assert "broken.jpg" in by_name["broken.jpg"]["error"] or "identify" in by_name["broken.jpg"]["error"]
    assert all(r["status"] == "ok" for n, r in by_name.items() if n != "broken.jpg")
    assert by_name["clip.mp4"]["frames"] == 3 and by_name["clip.mp4"]["kind"] == "video"

    model = tiny_model()
    expected_sizes = {(48, 64): (32, 48), (64, 48): (48, 32), (40, 40): (32, 32)}
    for rel, h, w in IMAGES:
        tensors, meta = read(out / f"{rel}.safetensors")
        size = expected_sizes[(h, w)]
        with Image.open(dataset / rel) as im:
            ref = reference(model, im.convert("RGB"), size)
        assert set(tensors) == set(ref)
        for key, value in ref.items():
            torch.testing.assert_close(tensors[key], value, rtol=1e-5, atol=1e-5, msg=f"{rel} {key}")
        assert json.loads(meta["size"]) == list(size) and json.loads(meta["grid"]) == [size[0] // 16, size[1] // 16]
        assert meta["model"] == "dinov3_vits16" and meta["weights"] == "random(seed=0)"
        assert meta["weights_digest"].startswith("sha256:") and meta["library_version"]
        assert json.loads(meta["preprocessing"])["normalization"]["name"] == "imagenet"
        assert json.loads(meta["layers"]) == [1] and meta["source"] == str(dataset / rel)

    # The video: 3 uniform frames of 8, each preprocessed exactly like an image.
    import av

    with av.open(str(dataset / "imgs/clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    tensors, meta = read(out / "imgs/clip.mp4.safetensors")
    assert tensors["frame_indices"].tolist() == [0, 4, 7]
    torch.testing.assert_close(tensors["frame_times"], torch.tensor([0.0, 0.4, 0.7], dtype=torch.float64))
    assert tensors["patch.1"].shape == (3, 2, 3, 64) and tensors["cls.1"].shape == (3, 64)
    for t, index in enumerate([0, 4, 7]):
        ref = reference(model, frames[index], (32, 48))
        for key, value in ref.items():
            torch.testing.assert_close(tensors[key][t], value, rtol=1e-5, atol=1e-5)
    assert json.loads(meta["sampling"]) == {"frames": 3}


def test_killed_run_resumes_without_duplicates(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["extract", str(dataset / "imgs"), "--out", str(out), *COMMON, "--num-workers", "0"]
    killed = dinov3(*args, env=cli_env(DINOV3_EXTRACT_EXIT_AFTER="2"))
    assert killed.returncode == 75, killed.stderr  # the hook's abrupt exit, like a kill
    done = sorted(out.rglob("*.safetensors"))
    # The hook fires after 2 recorded writes; writer threads already busy may finish more (timing-dependent, up to
    # every readable input). Either way the run ended before writing its manifest.
    assert 2 <= len(done) <= N_INPUTS - 1 and not (out / "manifest.jsonl").exists()
    # A damaged output (e.g. from a disk problem) must be redone, not trusted.
    damaged = done[0]
    damaged.write_bytes(damaged.read_bytes()[:-7])

    resumed = dinov3(*args)
    assert resumed.returncode == 1, resumed.stderr  # broken.jpg still fails
    cached = len(done) - 1
    assert f"{cached} already complete" in resumed.stderr and "unreadable" in resumed.stderr
    records = manifest(out)
    assert len(records) == N_INPUTS and len({r["input"] for r in records}) == N_INPUTS
    statuses = sorted(r["status"] for r in records)
    assert statuses == sorted(["cached"] * cached + ["ok"] * (N_INPUTS - 1 - cached) + ["failed"])
    assert {r["input"] for r in records if r["status"] == "ok"} >= {
        str(dataset / damaged.relative_to(out).as_posix()[: -len(".safetensors")])
    }
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert outputs == sorted(r["output"] for r in records if r["output"])
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    for path in out.rglob("*.safetensors"):
        read(path)  # every output is complete and readable


def test_torchrun_two_ranks_match_single_process(dataset: Path, single_run: tuple, tmp_path: Path) -> None:
    single_out, _ = single_run
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dinov3_integration.cli.main", "extract", str(dataset / "imgs"), "--out", str(out), *COMMON,
        "--num-workers", "0", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0, proc.stderr  # broken.jpg fails on one rank; the job reports it
    assert f"{N_INPUTS} inputs: {N_INPUTS - 1} written" in proc.stderr, proc.stderr
    assert "[rank 0]" in proc.stderr
    key = ("input", "output", "status", "kind", "frames")
    assert [{k: r[k] for k in key} for r in manifest(out)] == [{k: r[k] for k in key} for r in manifest(single_out)]
    assert not list(out.glob("manifest.rank*"))
    files = sorted(p.relative_to(out) for p in out.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(single_out) for p in single_out.rglob("*.safetensors"))
    for rel in files:
        a, meta_a = read(out / rel)
        b, meta_b = read(single_out / rel)
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
        assert meta_a["config_digest"] == meta_b["config_digest"]


def test_aggregate_clips(dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("dinov3_integration.vggt_compat.aggregator")
    frames = tmp_path / "scene"
    frames.mkdir()
    from PIL import Image

    write_images(frames, [(f"f{i}.png", 32, 48) for i in range(3)], seed=3)
    out = tmp_path / "out"
    proc = dinov3(
        "extract", str(frames), str(dataset / "imgs/clip.mp4"), "--out", str(out), *TINY, "--resolution", "32",
        "--aggregate", "--aggregator-kwargs", "depth=2", "--layers", "0,1", "--frames", "4", "--num-workers", "0",
        "--random-aggregator",  # no --aggregator-weights: random on purpose (issue 13 item 3)
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = {r["kind"]: r for r in manifest(out)}
    assert [(records[k]["status"], records[k]["frames"]) for k in ("clip", "video")] == [("ok", 3), ("ok", 4)]
    tensors, meta = read(out / "scene.safetensors")
    assert meta["patch_start_idx"] == "5"
    assert set(tensors) == {"aggregated.0", "aggregated.1"}
    assert tensors["aggregated.1"].shape == (3, 5 + 2 * 3, 128)  # [S, P, 2C]

    # Same numbers as the Aggregator called directly on the clip in [0, 1].
    from dinov3_integration.vggt_compat.aggregator import Aggregator

    model = tiny_model()
    torch.manual_seed(0)
    agg = Aggregator(patch_embed=model, patch_size=16, embed_dim=64, num_heads=4, depth=2).eval()
    clip = torch.stack(
        [torch.from_numpy(np.array(Image.open(frames / f"f{i}.png"))).permute(2, 0, 1) for i in range(3)]
    )
    with torch.inference_mode():
        outputs, start = agg(clip[None].float() / 255, output_layers=[0, 1])
    assert start == 5
    torch.testing.assert_close(tensors["aggregated.1"], outputs[1][0], rtol=1e-5, atol=1e-5)
    video, _ = read(out / "clip.mp4.safetensors")
    assert video["aggregated.0"].shape[0] == 4 and video["frame_indices"].tolist() == [0, 2, 5, 7]

    # --aggregator-weights: a full VGGT-style checkpoint ("aggregator." prefix, other heads ignored)
    torch.manual_seed(1)
    trained = Aggregator(patch_embed=tiny_model(), patch_size=16, embed_dim=64, num_heads=4, depth=2).eval()
    ckpt = {f"aggregator.{k}": v for k, v in trained.state_dict().items()} | {"camera_head.w": torch.zeros(1)}
    torch.save(ckpt, tmp_path / "vggt.pt")
    out2 = tmp_path / "out2"
    proc = dinov3(
        "extract", str(frames), "--out", str(out2), *TINY, "--resolution", "32", "--aggregate",
        "--aggregator-kwargs", "depth=2", "--layers", "1", "--aggregator-weights", str(tmp_path / "vggt.pt"),
        "--num-workers", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded, _ = read(out2 / "scene.safetensors")
    with torch.inference_mode():
        expected, _ = trained(clip[None].float() / 255, output_layers=[1])
    torch.testing.assert_close(loaded["aggregated.1"], expected[1][0], rtol=1e-5, atol=1e-5)  # layer 1, absolute
    assert (loaded["aggregated.1"] - tensors["aggregated.1"]).abs().max() > 1e-3  # the weights were used


def test_bad_command_lines_exit_2(dataset: Path, tmp_path: Path) -> None:
    from dinov3_integration.cli.main import main

    out = str(tmp_path / "o")
    assert main(["extract", str(tmp_path / "missing.jpg"), "--out", out, *TINY]) == 2
    assert main(["extract", str(dataset / "imgs"), "--out", out, *TINY, "--layers", "7"]) == 2
    assert main(["extract", str(dataset / "imgs"), "--out", out, *TINY, "--save", "logits"]) == 2
    assert main(["extract", str(dataset / "imgs"), "--out", out, *TINY, "--resolution", "big"]) == 2
    assert main(["extract", str(dataset / "imgs"), "--out", out, "--model", "dinov3_vitz16", *TINY]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(dataset / "imgs"), "--out", out, "--frames", "2", "--fps", "1"])
    assert exc.value.code == 2


def test_resume_redoes_outputs_made_with_other_settings(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process: a changed setting (here --save-dtype) invalidates the outputs; the same command skips them."""
    from dinov3_integration.cli.main import main

    image = str(dataset / "imgs/sub")
    out = tmp_path / "out"
    base = ["extract", image, "--out", str(out), *TINY, "--resolution", "32", "--num-workers", "0", "--quiet"]
    assert main(base) == 0
    assert capsys.readouterr().err == ""  # --quiet
    assert [r["status"] for r in manifest(out)] == ["ok", "ok"]
    assert main(base) == 0
    assert [r["status"] for r in manifest(out)] == ["cached", "cached"]
    assert main([*base, "--save-dtype", "bfloat16"]) == 0
    assert [r["status"] for r in manifest(out)] == ["ok", "ok"]
    tensors, meta = read(out / "sub/c.png.safetensors")
    assert tensors["patch.1"].dtype == torch.bfloat16 and meta["save_dtype"] == "bfloat16"
    assert main([*base, "--save-dtype", "bfloat16", "--no-resume"]) == 0
    assert [r["status"] for r in manifest(out)] == ["ok", "ok"]


def test_weights_file_is_passed_to_create_model(dataset: Path, tmp_path: Path) -> None:
    """``--weights FILE`` loads a checkpoint (here the seed-0 tiny model): same features as ``--random-weights``."""
    from safetensors.torch import save_file

    from dinov3_integration.cli.main import main

    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(ckpt))
    image = str(dataset / "imgs/sub/c.png")
    common = ["--model-kwargs", "depth=2,embed_dim=64,num_heads=4", "--resolution", "32", "--num-workers", "0", "-q"]
    assert main(["extract", image, "--out", str(tmp_path / "w"), "--weights", str(ckpt), *common]) == 0
    assert main(["extract", image, "--out", str(tmp_path / "r"), "--random-weights", *common]) == 0
    a, meta_a = read(tmp_path / "w/c.png.safetensors")
    b, meta_b = read(tmp_path / "r/c.png.safetensors")
    assert meta_a["weights"] == str(ckpt) and meta_a["weights_digest"] == meta_b["weights_digest"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert main(["extract", image, "--out", str(tmp_path / "x"), "--weights", str(tmp_path / "nope.pth"), *common]) == 2


def test_progress_bar_and_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from dinov3_integration.cli.extract import Progress

    bar = Progress(4, quiet=False, show_bar=True, interval=0)
    for i in range(4):
        bar.update(failed=i == 1)
    bar.close()
    err = capsys.readouterr().err
    assert "4/4" in err and ("item/s" in err or "s/item" in err)
    assert "failed=1" in err
    lines = Progress(10, quiet=False, show_bar=False, interval=0)
    lines.done = 5
    assert lines.line().startswith("extract: 5/10 inputs (50%)") and "ETA" in lines.line()


def test_bfloat16_compute_and_float16_storage(dataset: Path, tmp_path: Path) -> None:
    from dinov3_integration.cli.main import main

    image = str(dataset / "imgs/a.png")
    common = [*TINY, "--resolution", "32", "--num-workers", "0", "-q"]
    assert main(["extract", image, "--out", str(tmp_path / "f32"), *common]) == 0
    assert (
        main(
            [
                "extract",
                image,
                "--out",
                str(tmp_path / "bf16"),
                *common,
                "--dtype",
                "bfloat16",
                "--save-dtype",
                "float16",
            ]
        )
        == 0
    )
    a, _ = read(tmp_path / "f32/a.png.safetensors")
    b, meta = read(tmp_path / "bf16/a.png.safetensors")
    assert b["patch.1"].dtype == torch.float16 and meta["compute_dtype"] == "bfloat16"
    torch.testing.assert_close(b["patch.1"].float(), a["patch.1"], rtol=0.1, atol=0.1)
