"""Writing many small feature rows: shards (``--format shards``) against one file per input (issue 16).

Each round writes ``--rows`` feature rows (``cls.L`` ``[D]`` and ``patch.L`` ``[g, g, D]`` per image, ``--dtype``,
with the metadata ``dinov3 extract`` records) twice, into fresh folders on the same disk:

- ``files``: :func:`dinov3_integration.features.write_features` per row (what ``--format files`` does);
- ``shards``: :class:`dinov3_integration.feature_shards.ShardWriter` with ``--shard-size``, then
  :func:`dinov3_integration.feature_shard_index.write_index` (what ``--format shards`` does).

Both commit every file atomically with an ``fsync`` (temporary + rename). The order of the two alternates every
round; the table gives the median wall and CPU (``time.process_time``) seconds over the rounds, the median of the
per-round ratios files/shards, the number of files and bytes written, and the time to read every row's CLS token
back into the ``[N, D]`` matrix (per-file: ``read_features`` per file; shards: ``FeatureShards.stack``, and plain
``safetensors.numpy`` over the shards with the index's offsets).

Example::

    python benchmarks/bench_shards.py --rows 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinov3_integration.feature_shard_index import write_index  # noqa: E402
from dinov3_integration.feature_shard_reader import FeatureShards  # noqa: E402
from dinov3_integration.feature_shards import ShardWriter  # noqa: E402
from dinov3_integration.features import read_features, write_features  # noqa: E402


def make_rows(n: int, dim: int, grid: int, dtype: torch.dtype) -> list[tuple[str, dict, dict]]:
    g = torch.Generator().manual_seed(0)
    base = {
        "library_version": "0.1.0",
        "model": "dinov3_vits16",
        "model_kwargs": {},
        "depth": 12,
        "weights": "lvd1689m",
        "weights_digest": "sha256:" + "0" * 64,
        "kind": "image",
        "resolution": "256",
        "patch_size": 16,
        "num_frames": 1,
        "preprocessing": {"resize": "torchvision v2 resize, antialias=True", "interpolation": "bicubic"},
        "layers": [11],
        "save": ["cls", "patch"],
        "save_dtype": str(dtype).removeprefix("torch."),
        "compute_dtype": "float32",
        "config_digest": "sha256:" + "1" * 64,
        "request_digest": "sha256:" + "2" * 64,
    }
    rows = []
    for i in range(n):
        source = f"/data/photos/{i // 100:03d}/img_{i:06d}.jpg"
        tensors = {
            "cls.11": torch.randn(dim, generator=g).to(dtype),
            "patch.11": torch.randn(grid, grid, dim, generator=g).to(dtype),
        }
        meta = {
            **base,
            "source": source,
            "source_signature": f":{100_000 + i}:{1_700_000_000_000_000_000 + i}",
            "original_size": [480, 640],
            "size": [grid * 16, grid * 16],
            "grid": [grid, grid],
        }
        rows.append((source, tensors, meta))
    return rows


def write_files(out: Path, rows: list[tuple[str, dict, dict]]) -> None:
    for source, tensors, meta in rows:
        write_features(out / (source.lstrip("/") + ".safetensors"), tensors, meta)


def write_shards(out: Path, rows: list[tuple[str, dict, dict]], shard_size: str) -> None:
    writer = ShardWriter(out, max_bytes=shard_size)
    for source, tensors, meta in rows:
        writer.add(source, tensors, meta, key=source.lstrip("/"))
    writer.close()
    write_index(out)


def read_cls_files(out: Path, rows: list[tuple[str, dict, dict]]) -> torch.Tensor:
    return torch.stack([read_features(out / (s.lstrip("/") + ".safetensors"))[0]["cls.11"] for s, _, _ in rows])


def read_cls_numpy(out: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    index = json.loads((out / "index.json").read_text())
    shards = {s["file"]: load_file(str(out / s["file"]))["cls.11"] for s in index["shards"]}
    return np.stack([shards[r["shard"]][r["tensors"]["cls.11"]["offset"]] for r in index["rows"]])


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - w0, time.process_time() - c0, value


def folder_stats(out: Path) -> tuple[int, int]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=384, help="feature width D (384: ViT-S/16)")
    ap.add_argument("--grid", type=int, default=4, help="patch grid g x g per row")
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    ap.add_argument("--shard-size", default="1GB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder to write in (default: a temporary folder)")
    args = ap.parse_args(argv)
    rows = make_rows(args.rows, args.dim, args.grid, getattr(torch, args.dtype))
    base = Path(tempfile.mkdtemp(prefix="bench_shards_", dir=args.dir))
    res: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "read": []} for k in ("files", "shards")}
    numpy_read: list[float] = []
    stats: dict[str, tuple[int, int]] = {}
    try:
        for r in range(args.rounds):
            order = ("files", "shards") if r % 2 == 0 else ("shards", "files")
            for kind in order:
                out = base / f"{kind}-{r}"
                if kind == "files":
                    wall, cpu, _ = timed(lambda out=out: write_files(out, rows))
                    read, _, cls = timed(lambda out=out: read_cls_files(out, rows))
                else:
                    wall, cpu, _ = timed(lambda out=out: write_shards(out, rows, args.shard_size))
                    read, _, cls = timed(lambda out=out: FeatureShards(out).stack("cls.11"))
                    numpy_read.append(timed(lambda out=out: read_cls_numpy(out))[0])
                assert cls.shape == (args.rows, args.dim)
                res[kind]["wall"].append(wall)
                res[kind]["cpu"].append(cpu)
                res[kind]["read"].append(read)
                stats[kind] = folder_stats(out)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratio = statistics.median(f / s for f, s in zip(res["files"]["wall"], res["shards"]["wall"]))
    ratio_cpu = statistics.median(f / s for f, s in zip(res["files"]["cpu"], res["shards"]["cpu"]))
    row_bytes = sum(t.numel() * t.element_size() for t in rows[0][1].values())
    print(
        f"{args.rows} rows of {row_bytes} tensor bytes (cls [{args.dim}] + patch [{args.grid}, {args.grid}, "
        f"{args.dim}], {args.dtype}); --shard-size {args.shard_size}; {args.rounds} rounds, alternating order"
    )
    print(f"{'format':8} {'write s':>8} {'cpu s':>7} {'files':>6} {'MB':>8} {'read CLS [N,D] s':>17}")
    for kind in ("files", "shards"):
        n, size = stats[kind]
        med = {k: statistics.median(v) for k, v in res[kind].items()}
        print(f"{kind:8} {med['wall']:8.2f} {med['cpu']:7.2f} {n:6d} {size / 1e6:8.1f} {med['read']:17.3f}")
    print(f"files/shards, median of per-round ratios: wall {ratio:.1f}x, cpu {ratio_cpu:.1f}x")
    print(f"reading the shards with safetensors.numpy + index.json: {statistics.median(numpy_read):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
