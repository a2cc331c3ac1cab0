"""End-to-end tests of ``dinov3 pca``, ``models``, ``demo`` and ``selftest`` (subprocesses, tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_pca_picture_sizes(images: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    one = tmp_path / "one.png"
    proc = dinov3("pca", str(images[0]), "--out", str(one), *TINY, "--resolution", "48")
    assert proc.returncode == 0, proc.stderr
    with Image.open(one) as im:
        # 48x80 at short side 48 -> 48x80 model input (3x5 patches); input panel + PCA panel side by side.
        assert im.size == (2 * 80, 48) and im.mode == "RGB"
        left, right = np.asarray(im)[:, :80], np.asarray(im)[:, 80:]
    assert left.std() > 0 and right.std() > 0
    assert len(np.unique(right.reshape(-1, 3), axis=0)) <= 3 * 5  # nearest upsampling of a 3x5 grid

    grid = tmp_path / "grid.png"
    proc = dinov3("pca", *map(str, images), "--out", str(grid), *TINY, "--resolution", "32", "--joint", "--no-mask")
    assert proc.returncode == 0, proc.stderr
    with Image.open(grid) as im:
        # rows: 32x(80*32/48 = 53 -> 48) and (64*32/48 = 43 -> 48)x32: widths 96 and 64, heights 32 + 48
        assert im.size == (96, 32 + 48)
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
        assert im.size == (2 * 32, 48)  # the source image is found through the file's metadata
    assert main(["pca", "--from-features", str(tmp_path / "nope.safetensors"), "--out", str(picture)]) == 2
    assert main(["pca", str(images[0]), "--out", str(tmp_path / "x.jpg"), *TINY]) == 2  # not a .png
    assert main(["pca", "--out", str(picture)]) == 2  # nothing to draw


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
    records = [json.loads(line) for line in (out / "features/manifest.jsonl").read_text().splitlines()]
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
