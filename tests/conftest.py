"""Shared test helpers and fixtures: the reference fixtures, small random models, one CPU thread, isolated weights
places (``weights_cache``, ``isolated``) and the local HTTP server (``server``). Torch-free helpers: ``_helpers.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from _http_server import LocalHTTPServer

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


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One thread during every test, restored after it (a test that changes it does not slow the others)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$DINOV3_CACHE`` set to ``tmp_path/cache`` (not created)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("DINOV3_CACHE", str(folder))
    return folder


@pytest.fixture
def server() -> Iterator[LocalHTTPServer]:
    """A started 127.0.0.1 server of ``_http_server`` (files are added with ``server.add``)."""
    with LocalHTTPServer() as srv:
        yield srv


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty weights cache, no $DINOV3_WEIGHTS_DIR, an empty Hugging Face cache in offline mode.

    Returns the (created, empty) folders: ``cache`` ($DINOV3_CACHE), ``hf`` (the Hugging Face cache) and ``dir``
    (for tests that set $DINOV3_WEIGHTS_DIR). Modules that resolve weights use it for every test
    (``pytestmark = pytest.mark.usefixtures("isolated")``).
    """
    import huggingface_hub.constants as hf_constants

    folders = {"cache": tmp_path / "cache", "hf": tmp_path / "hf", "dir": tmp_path / "weights_dir"}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("DINOV3_CACHE", str(folders["cache"]))
    monkeypatch.delenv("DINOV3_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(folders["hf"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(folders["hf"]))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return folders


def randomize_(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Fill every parameter with N(0, std) (so biases, LayerScale and tokens are all non-trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module
