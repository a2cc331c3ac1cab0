"""Every code block of README.md runs as a newcomer would run it (issue 13 Done-when; issue 12 item 8).

How the README is tested (keep this and the README in step):

- The README's fenced ``python`` and ``bash`` blocks are parsed. A Python block runs in a fresh interpreter; a bash
  block runs line by line (``dinov3 ...`` through the installed entry point's module, ``torchrun ...`` through the
  environment's ``torchrun``), each in a temporary folder that holds the inputs the commands name (``photos/``,
  ``clip.mp4``, ``photo.jpg``, ``data/``, a checkpoint for ``SRC``), offline (``HF_HUB_OFFLINE=1``, empty caches).
- Where a command needs released weights, :data:`SUBSTITUTIONS` replaces a README text by what runs here (e.g.
  ``--weights lvd1689m`` by ``--random-weights`` and a tiny architecture): the same code path without the
  download. Blocks that cannot run here (package installation, the recursive ``make test``, files that only Meta
  distributes) are in :data:`SKIPPED` with the reason and the test that covers them instead.
- Every substitution and every skip must match the README exactly once, and every block must run or be skipped,
  so neither list can go stale when the README changes.
- Python blocks run on the CPU with at most 2 threads; each must finish within :data:`TIMEOUT_S`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _helpers import make_video, write_images

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT_S = 600
TINY = "--random-weights --model-kwargs depth=4,embed_dim=64,num_heads=4"

# README text -> what runs here (applied to the block that contains it; each must occur exactly once).
SUBSTITUTIONS: dict[str, str] = {
    "--out feats --weights lvd1689m --layers -4,-1 --save cls,patch": f"--out feats {TINY} --layers -4,-1 "
    "--save cls,patch --resolution 64 --frames 4 --num-workers 0",
    "--nproc_per_node 8 -m dinov3_integration extract data/ --out feats --weights lvd1689m": "--nproc_per_node 2 "
    f"-m dinov3_integration extract data/ --out feats_dist {TINY} --resolution 64 --num-workers 0",
    "--out shards --format shards --shard-size 1GB --weights lvd1689m": f"--out shards --format shards "
    f"--shard-size 1GB {TINY} --resolution 64 --num-workers 0",
    "dinov3 pca photo.jpg --out photo_pca.png --weights lvd1689m": f"dinov3 pca photo.jpg --out photo_pca.png {TINY} "
    "--resolution 64",
    "dinov3 export dinov3_vits16 vit.onnx --weights lvd1689m": "dinov3 export dinov3_vits16 vit.onnx "
    "--model-kwargs depth=2,embed_dim=64,num_heads=4 --example-size 32 32",
    'weights="dinov3_vits16_pretrain_lvd1689m-08c60483.pth", layers=[-4, -1], resolution=224': "random_weights=True, "
    'model_kwargs={"depth": 4, "embed_dim": 64, "num_heads": 4}, layers=[-4, -1], resolution=64, num_workers=0',
    'torch.hub.load("path/to/dinov3-integration"': f'torch.hub.load("{ROOT}"',
    "dinov3 demo              #": "dinov3 demo --model-kwargs depth=2,embed_dim=64,num_heads=4  #",
    "dinov3 convert SRC DST --to {official,hf,safetensors,timm}": "\n".join(
        f"dinov3 convert src.pth dst_{to}{'' if to == 'hf' else '.pth' if to == 'official' else '.safetensors'} "
        f"--to {to}"
        for to in ("official", "hf", "safetensors", "timm")
    ),
}

# Blocks that do not run here: a text that identifies the block -> why, and what covers it instead.
SKIPPED: dict[str, str] = {
    "make demo   #": "creates a virtual environment and installs from PyPI; `dinov3 demo` runs below",
    'pip install -e ".[test]"': "installs packages; the declared dependencies are checked by the test suite",
    'create_model("dinov3_vitl16", pretrained=True)': "needs Meta's released weights (and the network for hub ids "
    "and URLs); each kind of source is loaded from files made in tests/test_hub_sources.py and test_hub_download.py",
    "dinov3 convert dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth": "needs the released file; `dinov3 convert` runs on "
    "a checkpoint made here (the SRC DST block) and in tests/test_hub_convert.py",
    "make lint     #": "runs through make's virtual environment (installs from PyPI); ruff runs in the lint step",
    'Aggregator.from_vggt("model.pt")': "needs VGGT-1B's checkpoint (5 GB); tests/test_aggregator.py runs from_vggt "
    "on VGGT-layout checkpoints made in the test",
}


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence


def readme_blocks() -> list[Block]:
    blocks, lang, start, lines = [], None, 0, []
    for i, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1) or "text", i, []
        elif line.startswith("```") and lang is not None:
            blocks.append(Block(lang, "\n".join(lines) + "\n", start))
            lang = None
        elif lang is not None:
            lines.append(line)
    return [b for b in blocks if b.lang in ("python", "bash")]


BLOCKS = readme_blocks()


def _skip_reason(block: Block) -> str | None:
    return next((why for key, why in SKIPPED.items() if key in block.text), None)


def _substituted(block: Block) -> str:
    text = block.text
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new)
    return text


def test_lists_match_the_readme_exactly_once():
    text = README.read_text(encoding="utf-8")
    for key in [*SUBSTITUTIONS, *SKIPPED]:
        assert text.count(key) == 1, f"{key!r} occurs {text.count(key)} times in README.md: update tests/test_readme.py"
    assert sum(_skip_reason(b) is None for b in BLOCKS) >= 5  # most blocks run


def test_readme_gflops_table_matches_dinov3_models():
    """``dinov3 models`` and the README's table come from one computation (issue 13 item 13: 166.1, not 166.2)."""
    from dinov3_integration.cli.models_cmd import format_gflops, rows

    table = {r["name"]: r for r in rows()}
    seen = 0
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] in table:
            assert cells[6] == format_gflops(table[cells[0]]["flops"]), line
            seen += 1
    assert seen == len(table)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs the README's commands name, in one folder."""
    from dinov3_integration.factory import create_model

    root = tmp_path_factory.mktemp("readme")
    names = ("photos/a.jpg", "photos/b.png", "photo.jpg", "data/x.jpg", "data/y.jpg", "data/z.jpg")
    write_images(root, [(rel, 48, 64) for rel in names])
    pytest.importorskip("av")  # the extract command reads clip.mp4
    make_video(root / "clip.mp4", n=6, h=48, w=64)
    import torch

    torch.manual_seed(0)
    torch.save(create_model("dinov3_vits16").state_dict(), root / "src.pth")
    return root


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT / "src"),
        OMP_NUM_THREADS="2",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(workdir / "hf"),
        TORCH_HOME=str(workdir / "torch"),
        DINOV3_CACHE=str(workdir / "cache"),
        DINOV3_WEIGHTS_DIR=str(workdir / "weights"),
    )
    return env


def _command(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    if words[0] == "dinov3":
        return [sys.executable, "-m", "dinov3_integration", *words[1:]]
    if words[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    raise AssertionError(f"README command {line!r}: unknown program {words[0]!r}")


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.lang}-line{b.line}")
def test_readme_block_runs(block: Block, workdir: Path):
    reason = _skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    text = _substituted(block)
    env = _env(workdir)
    if block.lang == "python":
        proc = subprocess.run(
            [sys.executable, "-c", "import torch; torch.set_num_threads(2)\n" + text],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert proc.returncode == 0, f"README line {block.line}:\n{text}\n{proc.stdout}\n{proc.stderr}"
        return
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        proc = subprocess.run(_command(line), cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, f"README line {block.line}: {line}\n{proc.stdout}\n{proc.stderr}"
