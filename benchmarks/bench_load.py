"""Time to a loaded model against the bare minimum (issue 15.1): the ViT, VGGT's Aggregator, the integrated model.

For every target (``--targets``), a random checkpoint is written once to a temporary folder, then in interleaved
rounds (``--repeats``), in one process:

- ``vit`` (each of ``--models``): ``create_model(name, weights=file)`` with an official-layout file (``--format``);
- ``aggregator``: ``Aggregator.from_vggt(file, **--aggregator-kwargs)`` (default: VGGT-1B's Aggregator, DINOv2
  ViT-L/14 patch embedding + 24 + 24 blocks, 909 M parameters) with a full-VGGT-style file (``aggregator.*`` keys
  and a head; ``model.pt`` or ``model.safetensors``);
- ``integrated``: ``DINOv3IntegratedModel.from_pretrained(folder)`` of a ``save_pretrained`` folder (``config.json``
  + ``model.safetensors``) of the packaged variant ``--variant`` (default ``high_performance``: ViT-L/16 + a 24 + 24
  block Aggregator, 908 M parameters).

Each is timed against ``bare``: the file read (``torch.load(mmap=True, weights_only=True)`` or
``safetensors.torch.load_file``), the module built on ``meta`` and ``load_state_dict(assign=True)``, nothing else;
and, in the first ``--slow-rounds`` rounds, against ``slow``: what the library did before (build on the CPU with
random initialisation, then copy the weights in). The ratio ``library / bare`` is the median over rounds of the
per-round ratio (robust to load drifting on a shared machine), in wall-clock and in process CPU time; the target is
<= 1.3. Never run in the unit tests (timing).

Example::

    python benchmarks/bench_load.py --models vits16 vitb16 vitl16 --repeats 5
    python benchmarks/bench_load.py --targets aggregator integrated --repeats 5 --slow-rounds 1
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinov3_integration.config import load_config  # noqa: E402
from dinov3_integration.factory import create_model  # noqa: E402
from dinov3_integration.hub.checkpoint_io import save_state_dict_file  # noqa: E402
from dinov3_integration.integrated import DINOv3IntegratedModel  # noqa: E402
from dinov3_integration.models import DinoVisionTransformer, get_model_spec  # noqa: E402
from dinov3_integration.vggt_compat import Aggregator  # noqa: E402

TARGET = 1.3
Build = Callable[[], torch.nn.Module]


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, mmap=True, weights_only=True)


def _fill_(module: torch.nn.Module) -> torch.nn.Module:
    """Random values in every floating tensor of a module materialised with ``to_empty`` (fast: no init)."""
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.normal_(0.0, 0.02)
    return module


# ------------------------------------------------------------------------------------------------ targets
def vit_runs(name: str, folder: Path, suffix: str) -> dict[str, Build]:
    source = create_model(name, pretrained=False)
    path = save_state_dict_file(source.state_dict(), folder / f"{name}{suffix}")
    del source
    kwargs = get_model_spec(name).kwargs()

    def bare() -> torch.nn.Module:
        model = DinoVisionTransformer(**kwargs, device="meta")
        model.load_state_dict(_read(path), assign=True)
        return model.eval()

    def slow() -> torch.nn.Module:
        model = DinoVisionTransformer(**kwargs)
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
        return model.eval()

    return {"bare": bare, "library": lambda: create_model(name, weights=path), "slow": slow}


def aggregator_runs(folder: Path, suffix: str, kwargs: dict[str, Any]) -> dict[str, Build]:
    with torch.device("meta"):
        source = Aggregator(**kwargs)
    _fill_(source.to_empty(device="cpu"))
    state = {f"aggregator.{k}": v for k, v in source.state_dict().items()}
    state["camera_head.trunk.0.norm1.weight"] = torch.ones(2048)  # a VGGT head, ignored
    path = folder / ("model.safetensors" if suffix == ".safetensors" else "model.pt")
    if suffix == ".safetensors":
        save_state_dict_file(state, path)
    else:
        torch.save(state, path)
    del source, state

    def bare() -> torch.nn.Module:
        sd = _read(path)
        sd = {k[len("aggregator.") :]: v for k, v in sd.items() if k.startswith("aggregator.")}
        with torch.device("meta"):
            model = Aggregator(**kwargs)
        model.load_state_dict(sd, assign=True)
        return model.eval()

    def slow() -> torch.nn.Module:
        model = Aggregator(**kwargs)
        model.load_vggt_state_dict(_read(path))
        return model.eval()

    return {"bare": bare, "library": lambda: Aggregator.from_vggt(path, **kwargs), "slow": slow}


def integrated_runs(folder: Path, variant: str) -> dict[str, Build]:
    config = load_config(variant)
    source = DINOv3IntegratedModel.from_config(config, device="meta")
    _fill_(source.to_empty(device="cpu"))
    saved = Path(source.save_pretrained(folder / f"integrated_{variant}"))
    del source
    weights = saved / "model.safetensors"

    def rebuilt_config() -> dict[str, Any]:
        cfg = json.loads((saved / "config.json").read_text())["config"]
        cfg["model"]["backbone"].update(pretrained=False, weights=None)
        return cfg

    def bare() -> torch.nn.Module:
        model = DINOv3IntegratedModel.from_config(rebuilt_config(), device="meta")
        model.load_state_dict(_read(weights), assign=True)
        return model.eval()

    def slow() -> torch.nn.Module:
        model = DINOv3IntegratedModel.from_config(rebuilt_config())
        model.load_state_dict(_read(weights))
        return model.eval()

    return {"bare": bare, "library": lambda: DINOv3IntegratedModel.from_pretrained(saved), "slow": slow}


# ------------------------------------------------------------------------------------------------ timing
def _timed(fn: Build) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    model = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del model
    gc.collect()
    return wall, cpu


def bench(runs: dict[str, Build], repeats: int, slow_rounds: int) -> dict[str, float]:
    """Interleaved rounds (the order rotates each round); medians of the times and of the per-round ratios."""
    _timed(runs["library"])  # warm the page cache and the imports
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(repeats):
        keys = [k for k in runs if k != "slow" or i < slow_rounds]
        order = keys[i % len(keys) :] + keys[: i % len(keys)]
        for key in order:
            w, c = _timed(runs[key])
            wall[key].append(w)
            cpu[key].append(c)
    out = {f"{k} s": statistics.median(v) for k, v in wall.items() if v}
    out["ratio"] = statistics.median(lib / b for lib, b in zip(wall["library"], wall["bare"]))
    out["cpu ratio"] = statistics.median(lib / b for lib, b in zip(cpu["library"], cpu["bare"]))
    if wall["slow"]:
        out["speed-up"] = statistics.median(s / lib for s, lib in zip(wall["slow"], wall["library"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["vit"], choices=["vit", "aggregator", "integrated"])
    parser.add_argument("--models", nargs="+", default=["vits16", "vitb16", "vitl16"], help="ViTs for --targets vit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--format", choices=[".safetensors", ".pth"], default=".pth", help="ViT and VGGT files")
    parser.add_argument("--slow-rounds", type=int, default=1, help="rounds that also time the old path (0: none)")
    parser.add_argument("--no-slow", action="store_true", help="same as --slow-rounds 0")
    parser.add_argument("--aggregator-kwargs", type=json.loads, default={}, help="JSON, e.g. '{\"depth\": 12}'")
    parser.add_argument("--variant", default="high_performance", help="packaged config for --targets integrated")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    slow_rounds = 0 if args.no_slow else args.slow_rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.format}, {args.repeats} rounds")
    print(
        f"{'target':<36} {'bare s':>8} {'library s':>10} {'ratio':>7} {'cpu ratio':>10} {'target':>7} "
        f"{'slow s':>8} {'speed-up':>9}"
    )
    for target in args.targets:
        names = [m if m.startswith("dinov3_") else f"dinov3_{m}" for m in args.models] if target == "vit" else [target]
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                if target == "vit":
                    runs, label = vit_runs(name, Path(tmp), args.format), name
                elif target == "aggregator":
                    runs = aggregator_runs(Path(tmp), args.format, args.aggregator_kwargs)
                    label = "Aggregator.from_vggt" + (" (VGGT-1B)" if not args.aggregator_kwargs else "")
                else:
                    runs, label = integrated_runs(Path(tmp), args.variant), f"from_pretrained ({args.variant})"
                r = bench(runs, args.repeats, slow_rounds)
                del runs
            ok = "ok" if r["ratio"] <= TARGET else "MISS"
            slow = f"{r['slow s']:8.2f} {r['speed-up']:8.1f}x" if "slow s" in r else f"{'-':>8} {'-':>9}"
            print(
                f"{label:<36} {r['bare s']:8.2f} {r['library s']:10.2f} {r['ratio']:7.2f} {r['cpu ratio']:10.2f} "
                f"{ok:>7} {slow}",
                flush=True,
            )


if __name__ == "__main__":
    main()
