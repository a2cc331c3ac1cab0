"""``dinov3 pca``: ``--from-features`` on a 16-frame file, and the whole command against the model forward (15.3).

Two measurements, in paired, interleaved rounds (median of ``--repeats``):

- ``from-features``: ``python -m dinov3_integration pca --from-features clip.safetensors`` in a fresh process, on a
  16-frame clip file (``--frames`` x ``--grid`` x ``--grid`` patches of width ``--dim``, float32; what
  ``dinov3 extract`` writes for a folder of 16 frames at 768 px with ViT-S/16), with its 16 source frames on disk
  (drawn beside their colours) and without them (colours only). Wall time and the child's CPU time (user + sys);
  target <= 2 s. With ``--before SRC`` (a copy of an older ``src/``, e.g. ``git archive <commit> src | tar -x -C
  /tmp/before``) the same commands run on that code too, in the same rounds, and the pictures are compared pixel
  for pixel. ``import torch, torchvision`` alone is timed in the same rounds for scale.
- ``pca-vs-forward``: ``dinov3 pca IMAGE`` in this process with the model already built (what is left of the
  command: decoding, resizing, the forward, the PCA, the picture, the PNG) against the bare
  ``get_intermediate_layers`` forward on the same input; target: command <= 1.2 x forward.

Example::

    python benchmarks/bench_pca.py --repeats 3 --before /tmp/before/src
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
ASSET = SRC / "dinov3_integration" / "assets" / "images" / "astronaut.jpg"


def make_clip(root: Path, frames: int, grid: int, dim: int) -> Path:
    """16 source frames (800 x 800 JPEGs) and their feature file (low-rank + noise features, clip metadata)."""
    from PIL import Image
    from safetensors.numpy import save_file

    clip = root / "clip"
    clip.mkdir()
    src = Image.open(ASSET).convert("RGB").resize((800, 800))
    names = []
    for t in range(frames):
        names.append(f"frame_{t:03d}.jpg")
        src.rotate(3 * t).save(clip / names[-1], quality=90)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((frames, grid * grid, 24)) @ rng.standard_normal((24, dim))
    patch = (base + 0.3 * rng.standard_normal((frames, grid * grid, dim))).astype(np.float32)
    import json

    meta = {
        "format": "dinov3_integration.features/1",
        "model": "dinov3_vits16",
        "depth": "12",
        "weights": "lvd1689m",
        "kind": "clip",
        "source": str(clip),
        "frame_names": json.dumps(names),
        "patch_size": "16",
        "grid": json.dumps([grid, grid]),
        "preprocessing": json.dumps({"interpolation": "bilinear"}),
    }
    path = root / "clip.safetensors"
    save_file({"patch.11": patch.reshape(frames, grid, grid, dim)}, str(path), metadata=meta)
    gone = dict(meta, source=str(root / "moved-away"))
    save_file(
        {"patch.11": patch.reshape(frames, grid, grid, dim)}, str(root / "colours_only.safetensors"), metadata=gone
    )
    return path


def run_child(cmd: list[str], src: Path) -> tuple[float, float]:
    """``(wall s, CPU s of the child)`` of one fresh process with ``src`` first on ``PYTHONPATH``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_from_features(args: argparse.Namespace) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_clip(root, args.frames, args.grid, args.dim)
        codes = {"new": SRC} | ({"before": Path(args.before).resolve()} if args.before else {})
        # with sources first: the file as `extract` leaves it (benchmarks/bench_job.py reads the first "new" figure)
        cases = {"with sources": "clip.safetensors", "colours only": "colours_only.safetensors"}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        imports = []
        for _ in range(args.repeats):
            imports.append(run_child([sys.executable, "-c", "import torch, torchvision"], SRC))
            for case, file in cases.items():
                for code, src in codes.items():
                    out = root / f"{code}_{file}.png"
                    cmd = [sys.executable, "-m", "dinov3_integration", "pca", "--from-features", str(root / file)]
                    times.setdefault((case, code), []).append(run_child([*cmd, "--out", str(out), "-q"], src))
        wall, cpu = (statistics.median(x) for x in zip(*imports))
        print(f"import torch, torchvision alone: {wall:.2f} s wall, {cpu:.2f} s CPU")
        for case, file in cases.items():
            for code in codes:
                wall, cpu = (statistics.median(x) for x in zip(*times[(case, code)]))
                verdict = "met" if cpu <= 2 else "NOT met"
                print(
                    f"from-features {case} ({args.frames} frames of {args.grid}x{args.grid} x {args.dim}): {code} "
                    f"{cpu:.2f} s CPU ({wall:.2f} s wall); target <= 2 s (CPU): {verdict}"
                )
            if "before" in codes:
                with Image.open(root / f"new_{file}.png") as a, Image.open(root / f"before_{file}.png") as b:
                    same = np.array_equal(np.asarray(a), np.asarray(b))
                print(f"  pictures of new and before: {'identical' if same else 'DIFFERENT'}")


def bench_vs_forward(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(SRC))
    import torch

    from dinov3_integration.cli._common import build_model
    from dinov3_integration.cli.main import main, parse_args
    from dinov3_integration.data.preprocess import load_image, normalize, parse_resolution, resize_uint8, target_size

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["pca", str(ASSET), "--out", str(Path(tmp) / "p.png"), "--model", args.model, "--random-weights"]
        argv += ["--resolution", str(args.resolution), "-q"]
        loaded = build_model(parse_args(argv), torch.device("cpu"))  # built once: the command reuses it
        model = loaded.model
        image = load_image(ASSET)
        size = target_size(*image.shape[-2:], parse_resolution(str(args.resolution)), model.patch_size)
        from dinov3_integration.data.preprocess import choose_normalization

        x = normalize(resize_uint8(image, size), choose_normalization("auto", loaded.weights_tag))[None]
        ratios, fwd, cmd = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                model.get_intermediate_layers(x, n=[model.n_blocks - 1], norm=True)
            fwd.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert main(argv) == 0
            cmd.append(time.perf_counter() - start)
            ratios.append(cmd[-1] / fwd[-1])
    ratio = statistics.median(ratios)
    print(
        f"pca-vs-forward ({args.model} at {size[0]}x{size[1]}): forward {statistics.median(fwd):.2f} s, whole command "
        f"(model built) {statistics.median(cmd):.2f} s, ratio {ratio:.2f}; PCA step / forward = {max(0.0, 100 * (ratio - 1)):.1f}%"
        f"; target <= 20%: {'met' if ratio <= 1.2 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov3_vits16")
    parser.add_argument("--resolution", type=int, default=768)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=48, help="patches per side of each frame (768 px / 16)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, help="an older src/ folder to time in the same rounds")
    parser.add_argument("--only", choices=("from-features", "pca-vs-forward"), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for pca-vs-forward")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.only in (None, "from-features"):
        bench_from_features(args)
    if args.only in (None, "pca-vs-forward"):
        bench_vs_forward(args)


if __name__ == "__main__":
    main()
