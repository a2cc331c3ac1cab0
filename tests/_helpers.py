"""Set-up shared by several test modules: the ``dinov3`` command in a subprocess, small input files, cache listings.

Imports neither torch nor the package at the top (each helper imports what it needs), so a module that spawns
child processes (``test_hub_download.py``, ``test_hostile_hub.py``) stays quick to import. Helpers and fixtures
that need torch live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def cli_env(*paths: Path, **extra: str) -> dict[str, str]:
    """``os.environ`` for a child process of the package: ``src`` (then ``paths``) first on ``PYTHONPATH``, no
    inherited torchrun ``WORLD_SIZE``, and the variables ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *map(str, paths), env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_dinov3(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, module: str = "dinov3_integration"
) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` (``env`` or :func:`cli_env`), output captured as text."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


_MAIN_PROBE = """
import json, sys
from dinov3_integration.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in ("torch", "torchvision", "safetensors") if m in sys.modules)}))
"""


def main_in_subprocess(args: list[str], timeout: float = 120) -> dict:
    """``dinov3 ARGS`` (``cli.main.main``) in a fresh interpreter: ``{"rc", "loaded", "stderr"}``, where ``loaded``
    lists which of torch, torchvision and safetensors it imported (for the torch-free complete rerun). The
    interpreter itself must exit 0."""
    cmd = [sys.executable, "-c", _MAIN_PROBE, *args]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def manifest(out: Path) -> list[dict]:
    """The records of ``out/manifest.jsonl`` (``dinov3 extract``), in file order."""
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def write_images(root: Path, images: Iterable[tuple[str, int, int]], seed: int = 0) -> None:
    """Save random RGB images ``root/rel`` of ``h x w`` for each ``(rel, h, w)``, in order, from one generator
    seeded with ``seed`` (folders created as needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for rel, h, w in images:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / rel)


def make_video(path: Path, n: int = 8, h: int = 48, w: int = 64) -> None:
    """Write an ``n``-frame ``h x w`` MPEG-4 video of random frames (10 fps) to ``path`` (needs PyAV)."""
    import av
    import numpy as np

    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (locks and partial files included), relative, sorted; ``[]`` if it is absent."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def fetch(url: str, **kwargs: object) -> Path:
    """:func:`dinov3_integration.hub.download.download_url` without a progress bar or retry back-off."""
    from dinov3_integration.hub.download import download_url

    kwargs.setdefault("progress", False)
    kwargs.setdefault("backoff", 0.0)
    return download_url(url, **kwargs)  # type: ignore[arg-type]
