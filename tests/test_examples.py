"""Every script in examples/ runs (tiny default sizes, CPU) and prints what it did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))

# A phrase each example must print (proof it did its job, not just that it exited 0).
EXPECTED = {
    "single_image_features.py": "patch_tokens   (4, 16, 64)",
    "video_aggregator.py": "features       (1, 4, 21, 128)",
    "config_driven.py": "identical config = True",
    "finetune_aggregator.py": "mean loss of the first 3 steps",
}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    assert EXPECTED[script.name] in result.stdout, result.stdout


@pytest.mark.parametrize("extra", [[], ["--variant", ""]], ids=["no-variant", "empty-variant"])
def test_config_driven_with_a_users_file(tmp_path: Path, extra: list[str]):
    """Issue 13 item 6: ``--config my.yaml`` (a file without the packaged variants) must not apply ``video``."""
    (tmp_path / "my.yaml").write_text("model:\n  backbone:\n    dinov3_model: dinov3_vits16\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "config_driven.py"), "--config", str(tmp_path / "my.yaml"), *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"loaded: {tmp_path / 'my.yaml'} + 5 override(s)" in result.stdout
    assert "identical config = True" in result.stdout and "did you mean 'depth'" in result.stdout
