"""Before/after: the DINOv3 ViT of this checkout against the one of another checkout, same weights, interleaved.

For changes to the layers' fast paths: both versions run in one process (the other checkout's package is copied to a
temporary folder as ``dinov3_baseline``; its ``layers`` and ``models.vision_transformer`` use relative imports), are
built from this checkout's model spec with the same state dict (``qkv.bias_mask`` all zeros, the released layout),
are checked to give the same patch tokens, and are timed in rounds that call each once, in an order rotated every
round, under ``torch.inference_mode()``. ``speed`` is the median over rounds of *baseline time / its time* in the same
round (paired: slow drifts of a shared machine's load cancel); > 1 means faster than the baseline. On a machine other
jobs load heavily, ``--cpu-time`` times the CPU seconds of this process (``time.process_time``: user + system, so
page faults count) instead of the wall clock, which being descheduled does not inflate (use it with ``--threads 1``).

Example (the previous commit as the baseline)::

    git worktree add /tmp/dinov3-base HEAD~1
    python benchmarks/ab_backbone.py --baseline /tmp/dinov3-base --models vits16 --resolution 224 --batch 8
    # also this checkout with the fast paths off (model.use_fast_paths = False): --reference
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import interleaved_times, median  # noqa: E402

from dinov3_integration.models import DinoVisionTransformer, get_model_spec  # noqa: E402


def baseline_class(checkout: Path) -> type:
    """The ``DinoVisionTransformer`` class of ``checkout`` (a folder with ``src/dinov3_integration``)."""
    src = checkout / "src" / "dinov3_integration"
    if not src.is_dir():
        raise SystemExit(f"{checkout} has no src/dinov3_integration; pass a checkout of this repository")
    tmp = Path(tempfile.mkdtemp(prefix="dinov3-ab-"))
    shutil.copytree(src, tmp / "dinov3_baseline", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("dinov3_baseline.models.vision_transformer").DinoVisionTransformer


def cpu_times(fns: dict[str, Any], repeats: int, device: str, warmup: int = 1) -> dict[str, list[float]]:
    """:func:`_common.interleaved_times` with ``time.process_time`` (CPU seconds of the process) per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, times = list(fns), {n: [] for n in fns}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.process_time()
            fns[name]()
            times[name].append(time.process_time() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    p.add_argument("--models", default="vits16", help="comma list: vits16, vitb16, ... (dinov3_ prefix optional)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reference", action="store_true", help="also time this checkout with use_fast_paths=False")
    p.add_argument("--cpu-time", action="store_true", help="CPU seconds of the process instead of wall-clock time")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cls = baseline_class(args.baseline)
    results: dict[str, Any] = {}
    for short in args.models.split(","):
        name = short if short.startswith("dinov3_") else f"dinov3_{short}"
        kwargs = get_model_spec(name).kwargs()
        torch.manual_seed(0)
        state = DinoVisionTransformer(**kwargs).state_dict()
        state = {k: torch.zeros_like(v) if k.endswith("qkv.bias_mask") else v for k, v in state.items()}
        models = {"baseline": base_cls(**kwargs), "this": DinoVisionTransformer(**kwargs)}
        if args.reference:
            models["this-reference"] = DinoVisionTransformer(**kwargs)
            models["this-reference"].use_fast_paths = False
        for m in models.values():
            m.load_state_dict(state)
            m.eval()
        x = torch.randn(args.batch, 3, args.resolution, args.resolution)
        with torch.inference_mode():
            outs = {k: m.forward_features(x)["x_norm_patchtokens"] for k, m in models.items()}
            for k, out in outs.items():
                print(f"{name}: {k} patch tokens equal to the baseline's: {torch.equal(out, outs['baseline'])}")
            fns = {k: (lambda m=m, x=x: m(x)) for k, m in models.items()}
            times = (cpu_times if args.cpu_time else interleaved_times)(fns, args.repeats, "cpu", warmup=args.warmup)
        for k, t in times.items():
            speed = median([b / s for b, s in zip(times["baseline"], t)])
            results[f"{name}/{k}"] = {"median_s": median(t), "min_s": min(t), "speed_vs_baseline": speed}
            print(f"{name} {k:15s} median {median(t) * 1e3:8.1f} ms  min {min(t) * 1e3:8.1f} ms  speed {speed:.3f}")
    return results


if __name__ == "__main__":
    main()
