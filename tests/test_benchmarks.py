"""The benchmarks' own plumbing still runs (figures in benchmarks/README.md); tiny sizes, no timing checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_job_load_item_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """bench_job's load item drives bench_load's interleaved rounds (it once called an older signature)."""
    import bench_job

    result = bench_job.bench_load_item(argparse.Namespace(load_models=["vits16"], load_repeats=1))
    row = result["models"]["dinov3_vits16"]
    assert (
        row["bare_s"] > 0
        and row["create_model_s"] > 0
        and row["ratio"] == pytest.approx(row["create_model_s"] / row["bare_s"])
    )
    assert result["ratio"] == row["ratio"] and "load dinov3_vits16: bare" in capsys.readouterr().out
