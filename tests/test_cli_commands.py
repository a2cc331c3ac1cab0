"""End-to-end tests of ``dinov3 pca``, ``models``, ``demo`` and ``selftest`` (subprocesses, tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _helpers import make_video, manifest

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--random-weights", "--model-kwargs", "depth=2,embed_dim=64,num_heads=4"]


def dinov3(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "dinov3_integration", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("pca_images")
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in {"wide.png": (48, 80), "tall.png": (64, 48)}.items():
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (250, 30, 30)  # an "object" in the middle
        Image.fromarray(img).save(root / name)
        paths.append(root / name)
    return paths


C = 16  # dinov3_integration.pca.CAPTION_HEIGHT: the name strip above each row and the random-weights banner


def _is_banner(strip: np.ndarray) -> bool:
    """The red "RANDOM WEIGHTS" banner: mostly (190, 0, 0) with white text."""
    return bool((strip == (190, 0, 0)).all(-1).mean() > 0.5)


def test_pca_picture_sizes(images: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    one = tmp_path / "one.png"
    proc = dinov3("pca", str(images[0]), "--out", str(one), *TINY, "--resolution", "48")
    assert proc.returncode == 0, proc.stderr
    with Image.open(one) as im:
        # 48x80 at short side 48 -> 48x80 model input (3x5 patches); input panel + PCA panel side by side, under
        # the random-weights banner and the file name.
        assert im.size == (2 * 80, C + C + 48) and im.mode == "RGB"
        arr = np.asarray(im)
    assert _is_banner(arr[:C]) and not _is_banner(arr[C : 2 * C])
    assert (arr[C : 2 * C] < 128).all(-1).any()  # the caption has dark text on white
    left, right = arr[2 * C :, :80], arr[2 * C :, 80:]
    assert left.std() > 0 and right.std() > 0
    assert len(np.unique(right.reshape(-1, 3), axis=0)) <= 3 * 5  # nearest upsampling of a 3x5 grid

    grid = tmp_path / "grid.png"
    proc = dinov3("pca", *map(str, images), "--out", str(grid), *TINY, "--resolution", "32", "--joint", "--no-mask")
    assert proc.returncode == 0, proc.stderr
    with Image.open(grid) as im:
        # rows: 32x(80*32/48 = 53 -> 48) and (64*32/48 = 43 -> 48)x32: widths 96 and 64; the narrow row is scaled
        # to the common width 96 (height 48 * 96 / 64 = 72): no ragged edge.
        assert im.size == (96, C + (C + 32) + (C + 72))
        second = np.asarray(im)[C + C + 32 + C :]
    assert second.shape[0] == 72 and not (second[:, 64:] == 255).all()  # no white block beside the narrow row
    assert "wrote" in proc.stderr


def test_pca_from_extracted_features(images: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    from dinov3_integration.cli.main import main

    out = tmp_path / "feats"
    assert (
        main(["extract", str(images[1]), "--out", str(out), *TINY, "--resolution", "32", "--num-workers", "0", "-q"])
        == 0
    )
    picture = tmp_path / "from_features.png"
    proc = dinov3("pca", "--from-features", str(out / "tall.png.safetensors"), "--out", str(picture))
    assert proc.returncode == 0, proc.stderr
    with Image.open(picture) as im:
        assert im.size == (2 * 32, C + C + 48)  # the source image is found through the file's metadata
        arr = np.asarray(im)
    assert _is_banner(arr[:C])  # the file says it was made with random weights
    assert arr[2 * C :, :32].std() > 0  # the input panel, not the grey placeholder
    assert main(["pca", "--from-features", str(tmp_path / "nope.safetensors"), "--out", str(picture)]) == 2
    assert main(["pca", str(images[0]), "--out", str(tmp_path / "x.jpg"), *TINY]) == 2  # not a .png
    assert main(["pca", "--out", str(picture)]) == 2  # nothing to draw


def test_pca_skips_an_unreadable_image(images: list[Path], tmp_path: Path) -> None:
    """Issue 13 item 9: one bad image costs its row, not the run: picture of the rest, failures listed, exit 1."""
    from PIL import Image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    picture = tmp_path / "rest.png"
    proc = dinov3("pca", str(images[0]), str(broken), "--out", str(picture), *TINY, "--resolution", "48")
    assert proc.returncode == 1, proc.stderr
    assert "1 input(s) failed" in proc.stderr and f"{broken}: cannot read the image" in proc.stderr
    with Image.open(picture) as im:
        assert im.size == (2 * 80, C + C + 48)  # the readable image alone
    only_bad = tmp_path / "none.png"
    proc = dinov3("pca", str(broken), "--out", str(only_bad), *TINY)
    assert proc.returncode == 1 and "no picture written" in proc.stderr and not only_bad.exists()


def test_pca_from_features_negative_layer_and_depth(images: list[Path], tmp_path: Path) -> None:
    """Issue 13 item 10: ``--layer -4`` on a file resolves against the model's depth."""
    from dinov3_integration.cli.main import main

    deep = ["--random-weights", "--model-kwargs", "depth=4,embed_dim=64,num_heads=4"]
    out = tmp_path / "feats"
    args = ["extract", str(images[1]), "--out", str(out), *deep, "--resolution", "32", "--num-workers", "0", "-q"]
    assert main([*args, "--layers=-4,-1"]) == 0
    file = str(out / "tall.png.safetensors")
    for layer in ("-4", "0", "-1", "3"):
        assert main(["pca", "--from-features", file, "--layer", layer, "--out", str(tmp_path / "a.png"), "-q"]) == 0
    proc = dinov3("pca", "--from-features", file, "--layer", "-3", "--out", str(tmp_path / "b.png"))
    assert proc.returncode == 2 and "--layer -3 (block 1 of 4) is not in" in proc.stderr and "[0, 3]" in proc.stderr
    proc = dinov3("pca", "--from-features", file, "--layer", "-5", "--out", str(tmp_path / "b.png"))
    assert proc.returncode == 2 and "out of range for 4 layers" in proc.stderr


def test_pca_video_features_show_the_frames(tmp_path: Path) -> None:
    """Issue 13 item 14: the video picture shows each frame beside its colours, named by frame."""
    pytest.importorskip("av")
    from PIL import Image

    from dinov3_integration.cli.main import main

    video = tmp_path / "clip.mp4"
    make_video(video, n=6, h=48, w=64)
    out = tmp_path / "feats"
    args = ["extract", str(video), "--out", str(out), *TINY, "--resolution", "32", "--frames", "3"]
    assert main([*args, "--num-workers", "0", "-q"]) == 0
    picture = tmp_path / "video.png"
    assert main(["pca", "--from-features", str(out / "clip.mp4.safetensors"), "--out", str(picture), "-q"]) == 0
    with Image.open(picture) as im:
        assert im.size == (2 * 48, C + 3 * (C + 32))  # 3 frames of 32x48 (short side 32)
        arr = np.asarray(im)
    for t in range(3):
        top = C + t * (C + 32) + C
        frame = arr[top : top + 32, :48].astype(int)
        assert frame.std() > 20  # the decoded (noisy) frame, not the flat grey placeholder


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    from dinov3_integration.cli.main import main

    proc = dinov3("models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "params", "GFLOPs@224", "patch"]
    row = next(line for line in lines if line.startswith("dinov3_vits16 "))
    assert row.split()[1:4] == ["21.6M", "9.4", "16"] and "lvd1689m" in row
    capsys.readouterr()
    assert main(["models", "*vitl16*", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} == {"dinov3_vitl16", "dinov3_vitl16plus"}
    assert next(r for r in rows if r["name"] == "dinov3_vitl16")["weights"] == ["lvd1689m", "sat493m"]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    # A tiny architecture keeps the test fast; the default (dinov3_vits16) is the same code path.
    proc = dinov3("demo", *TINY[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "dinov3-demo-output"
    assert sum("RANDOM weights" in line for line in proc.stdout.splitlines()) == 1
    for name in ("pca_images.png", "pca_sequence.png", "features/manifest.jsonl", "aggregated/sequence.safetensors"):
        assert (out / name).is_file(), name
        assert str(out.relative_to(tmp_path) / name) in proc.stdout or name.split("/")[0] in proc.stdout
    records = manifest(out / "features")
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)


def test_selftest_reports_each_check() -> None:
    proc = dinov3("selftest", timeout=120)
    lines = proc.stdout.splitlines()
    from dinov3_integration.cli.selftest import CHECKS

    for name, _ in CHECKS:
        line = next((ln for ln in lines if ln.strip().startswith(name)), None)
        assert line is not None, f"no line for {name}: {proc.stdout}"
        assert any(word in line for word in ("passed", "failed: ", "skipped: ")), line
    for core in ("model creation", "forward pass", "hub loading", "preprocessing"):
        assert f"{core}" in proc.stdout and "passed" in next(ln for ln in lines if ln.strip().startswith(core))
    failed = any(" failed: " in ln for ln in lines)
    assert proc.returncode == (1 if failed else 0), proc.stdout


def test_demo_finds_local_weights_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dinov3_integration.cli import demo

    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    weights, reason = demo.find_local_weights("dinov3_vits16")
    assert weights is None and "No weights found" in reason  # offline search only: fast, no network

    class Found:
        path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
        source = f"{path} ($DINOV3_WEIGHTS_DIR)"
        tag = "lvd1689m"

    import dinov3_integration.hub.sources as sources

    monkeypatch.setattr(sources, "resolve_weights", lambda *a, **k: Found())
    assert demo.find_local_weights("dinov3_vits16") == (str(Found.path), Found.source)


def test_verbose_anywhere_and_plain_help_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 13: ``-v`` before or after the sub-command; help without reST markup; defaults shown."""
    from dinov3_integration.cli.main import build_parser, main, parse_args

    assert parse_args(["-v", "models"]).verbose == 1
    assert parse_args(["models", "-v"]).verbose == 1
    assert parse_args(["-v", "models", "-vv"]).verbose == 3
    assert main(["models", "*vits16", "-v"]) == 0
    capsys.readouterr()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public accessor
    for name, sub in commands.items():
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, (name, text)
        assert "-v, --verbose" in text, name
    helps = {name: " ".join(sub.format_help().split()) for name, sub in commands.items()}
    assert "how the patch grid is enlarged (default: nearest)" in helps["pca"]
    assert "black out the background (default: on)" in helps["pca"]
    assert "(default: safetensors)" in helps["convert"]
    assert "(default: float32)" in helps["extract"].split("--save-dtype", 2)[-1]  # the --save-dtype help
    assert "dinov3 pca --from-features feats/a.jpg.safetensors --out a_pca.png\n" in commands["pca"].format_help()


def test_models_gflops_are_rounded_once() -> None:
    """Issue 13 item 13: ViT-L+/16 is 166.146 GFLOPs at 224: the table says 166.1 (not 166.15 -> 166.2)."""
    from dinov3_integration.cli.models_cmd import format_table, rows

    table = rows("dinov3_vitl16plus")
    assert table[0]["flops"] == 166_146_441_216
    assert format_table(table, 224).splitlines()[-1].split()[2] == "166.1"
