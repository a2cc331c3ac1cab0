"""Memory the Aggregator keeps for the backward pass in training, by checkpointing mode (issue 12, item 2).

One training forward (``.train()``, autograd on) of ``[1, S, 3, img, img]`` frames per mode:

- ``default``: ``gradient_checkpointing=None``, VGGT's rule (checkpoint every block while training);
- ``off``: ``gradient_checkpointing=False`` (this library's default before issue 12).

Printed per mode: ``checkpoints`` (calls of ``torch.utils.checkpoint.checkpoint``: Aggregator blocks and the
backbone's), ``kept`` (bytes still allocated when the forward returns, minus the outputs: what autograd keeps for
backward, including the inputs checkpointing keeps; CPU: the net sum of the tensor allocations and frees that
``torch.profiler`` records; CUDA: ``torch.cuda.memory_allocated`` after minus before) and ``saved`` (bytes of the
distinct storages that reach ``saved_tensors_hooks``; checkpointed blocks save through their own hooks).

Example (the figures of the issue-12 notes)::

    python benchmarks/bench_aggregator_training.py --depth 24 --embed-dim 128 --frames 4 --img-size 112
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import quiet_stderr  # noqa: E402

import dinov3_integration.vggt_compat.aggregator as aggregator_module  # noqa: E402
import dinov3_integration.vggt_compat.layers.vision_transformer as dinov2_module  # noqa: E402
from dinov3_integration.vggt_compat import Aggregator  # noqa: E402


def net_bytes_cpu(fn):
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    net = sum(e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return out, int(net)


def net_bytes_cuda(fn):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.memory_allocated() - before


def measure(agg: Aggregator, x: torch.Tensor) -> dict[str, int]:
    calls = {"n": 0}
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    seen: set[int] = set()
    saved = {"bytes": 0}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            saved["bytes"] += t.untyped_storage().nbytes()
        return t

    aggregator_module.checkpoint = dinov2_module.checkpoint = counting
    try:

        def forward():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                return agg(x)[0]

        outputs, net = (net_bytes_cuda if x.is_cuda else net_bytes_cpu)(forward)
    finally:
        aggregator_module.checkpoint = dinov2_module.checkpoint = original
    out_bytes = sum(t.untyped_storage().nbytes() for t in outputs)
    sum(o.float().mean() for o in outputs).backward()  # the graph is complete
    return {"checkpoints": calls["n"], "kept": net - out_bytes, "saved": saved["bytes"], "outputs": out_bytes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--backbone-depth", type=int, default=2, help="blocks of the DINOv2 patch embedding")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    heads = max(1, args.embed_dim // 64)
    results = {}
    for mode, setting in (("default", None), ("off", False)):
        torch.manual_seed(0)
        agg = Aggregator(
            embed_dim=args.embed_dim, depth=args.depth, num_heads=heads, gradient_checkpointing=setting,
            patch_embed_config={"depth": args.backbone_depth, "embed_dim": args.embed_dim, "num_heads": heads},
        ).to(args.device).train()  # fmt: skip
        x = torch.rand(1, args.frames, 3, args.img_size, args.img_size, device=args.device)
        results[mode] = measure(agg, x)
    if args.json:
        print(json.dumps({"args": vars(args), "results": results}, indent=2))
    else:
        print(f"{'mode':8} {'checkpoints':>11} {'kept MB':>9} {'saved MB':>9} {'outputs MB':>10}")
        for mode, r in results.items():
            print(f"{mode:8} {r['checkpoints']:11d} {r['kept'] / 2**20:9.2f} {r['saved'] / 2**20:9.2f} "
                  f"{r['outputs'] / 2**20:10.2f}")  # fmt: skip
        print(f"off / default kept: {results['off']['kept'] / max(results['default']['kept'], 1):.1f}x")
    return results


if __name__ == "__main__":
    main()
