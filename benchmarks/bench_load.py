"""Time to a loaded model: ``create_model(name, weights=<local file>)`` against the bare minimum (issue 15.1).

For every model (``--models``), a random official-layout checkpoint is written once to a temporary folder
(``.safetensors`` and ``.pth``), then in interleaved rounds (``--repeats``), in one process:

- ``bare``: ``torch.load(mmap=True, weights_only=True)`` (``.pth``) or ``safetensors.torch.load_file``
  (``.safetensors``), ``DinoVisionTransformer(**kwargs, device="meta")`` and ``load_state_dict(assign=True)``;
- ``create_model``: ``create_model(name, weights=file)`` (the library's path: resolution, layout detection,
  strict check, meta build, ``assign=True``);
- ``slow``: what the library did before: build on the CPU (random init), then ``load_state_dict`` (copy).

The ratio ``create_model / bare`` is the median over rounds of the per-round ratio (robust to load drifting on a
shared machine); the target is <= 1.3. Never run in the unit tests (timing).

Example::

    python benchmarks/bench_load.py --models vits16 vitb16 vitl16 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinov3_integration.factory import create_model  # noqa: E402
from dinov3_integration.hub.checkpoint_io import save_state_dict_file  # noqa: E402
from dinov3_integration.models import DinoVisionTransformer, get_model_spec  # noqa: E402

TARGET = 1.3


def _bare(name: str, path: Path) -> torch.nn.Module:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, mmap=True, weights_only=True)
    model = DinoVisionTransformer(**get_model_spec(name).kwargs(), device="meta")
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


def _slow(name: str, path: Path) -> torch.nn.Module:
    model = DinoVisionTransformer(**get_model_spec(name).kwargs())
    model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
    return model.eval()


def _timed(fn: Callable[[], torch.nn.Module]) -> float:
    gc.collect()
    start = time.perf_counter()
    model = fn()
    elapsed = time.perf_counter() - start
    del model
    return elapsed


def bench(name: str, repeats: int, suffix: str, with_slow: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        source = create_model(name, pretrained=False)
        path = save_state_dict_file(source.state_dict(), Path(tmp) / f"{name}{suffix}")
        del source
        runs: dict[str, Callable[[], torch.nn.Module]] = {
            "bare": lambda: _bare(name, path),
            "create_model": lambda: create_model(name, weights=path),
        }
        if with_slow:
            runs["slow"] = lambda: _slow(name, path)
        _timed(runs["create_model"])  # warm the page cache and the imports
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(repeats):
            order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
            for key in order:
                times[key].append(_timed(runs[key]))
    ratios = [c / b for c, b in zip(times["create_model"], times["bare"])]
    out = {f"{k} s": statistics.median(v) for k, v in times.items()}
    out["ratio"] = statistics.median(ratios)
    if with_slow:
        out["slow / create_model"] = statistics.median(s / c for s, c in zip(times["slow"], times["create_model"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vits16", "vitb16", "vitl16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--format", choices=[".safetensors", ".pth"], default=".pth")
    parser.add_argument("--no-slow", action="store_true", help="skip the build-then-copy path (slow for ViT-L)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.format}, {args.repeats} rounds")
    header = (
        f"{'model':<18} {'bare s':>8} {'create_model s':>15} {'ratio':>7} {'target':>7} {'slow s':>8} {'speed-up':>9}"
    )
    print(header)
    for short in args.models:
        name = short if short.startswith("dinov3_") else f"dinov3_{short}"
        r = bench(name, args.repeats, args.format, not args.no_slow)
        ok = "ok" if r["ratio"] <= TARGET else "MISS"
        slow = f"{r['slow s']:8.2f} {r['slow / create_model']:8.1f}x" if "slow s" in r else f"{'-':>8} {'-':>9}"
        print(f"{name:<18} {r['bare s']:8.2f} {r['create_model s']:15.2f} {r['ratio']:7.2f} {ok:>7} {slow}")


if __name__ == "__main__":
    main()
