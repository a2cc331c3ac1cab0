"""Shared test helpers: the reference fixtures and small random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"


def load_fixture(name: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Return ``(metadata, tensors)`` of ``tests/data/reference/<name>.safetensors``."""
    with safe_open(REFERENCE_DIR / f"{name}.safetensors", "pt") as fh:
        return fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}


def fixture_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``state_dict.*`` entries of a fixture, prefix removed."""
    return {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


def fixture_config(meta: dict[str, str]) -> dict:
    return json.loads(meta["config"])


# The models in these tests are tiny: one thread avoids oversubscribing the 2-core CI machine (measured 10-40x
# faster per forward when other processes compete for the cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Fill every parameter with N(0, std) (so biases, LayerScale and tokens are all non-trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module
