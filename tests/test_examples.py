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
