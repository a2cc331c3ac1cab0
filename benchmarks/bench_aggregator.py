"""Time and peak memory of the VGGT-compatible Aggregator against the number of frames S.

For each S (``--frames``, default 2 4 8 16) and each output mode

- ``all``: every layer is returned (VGGT's behaviour, ``output_layers="all"``),
- ``heads``: only the layers VGGT's heads read (4, 11, 17, 23 at depth 24; scaled to other depths),

one forward pass of ``[1, S, 3, img, img]`` frames is measured (no autograd):

- ``time``: median wall-clock seconds over ``--repeats`` runs after one warm-up (CUDA synchronised);
- ``peak``: the largest amount of memory allocated *during* the forward pass above what was allocated before it
  (model weights excluded, outputs included). On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
  before the call. On CPU: the running sum of every tensor allocation and free that ``torch.profiler`` records
  (``profile_memory=True``) in one extra run; this counts tensor bytes, not allocator overhead or RSS;
- ``kept``: bytes of the returned output tensors (exact; what stays alive after the call).

With ``--reference`` each S is also run through ``vggt_reference.py``, a plain transcription of VGGT's Aggregator
forward with the same weights (proven equal to VGGT's fixtures by ``tests/test_vggt_reference.py``): mode ``vggt``,
timed interleaved with the others (one run of each in turn, ``--repeats`` rounds), and ``speed`` = VGGT's time /
this mode's time (issue 18's ratio; the patch embedding is the same module on both sides).

``--cpu-time`` times with ``time.process_time`` (this process's CPU seconds, all threads) instead of the wall clock:
on a shared, loaded CPU host it counts only this process's work. With ``--reference`` the speed ratio is then the
median over rounds of the per-round ratio ``vggt time / mode time`` (each round runs every mode once, in turn).

``--breakdown`` times sections of one forward of ours (mode ``all``, the fast path) and of the transcription, one of
each in turn for ``--repeats`` rounds (median per section): patch embedding (normalisation and special tokens
included), positions, frame blocks, global blocks (each without its RoPE), RoPE-2D (the rotation of q and k, split by
frame/global), output assembly (``[B, S, P, 2C]``: our ``write_half`` copies, VGGT's ``torch.cat``), and ``other``
(the rest: layout reshapes between ``[B * S, P, C]`` and ``[B, S * P, C]``, Python glue). Sections are timed by
wrapping the functions (instance attributes and module functions; no hooks, which would switch the fast path off);
on CUDA each section boundary synchronises.

The scaling exponent ``k`` of ``time ~ S^k`` comes from a least-squares fit of ``log time`` on ``log S`` per mode
(frame attention is linear in S, global attention quadratic in S * P, so ``k`` grows from ~1 towards 2).

Examples::

    python benchmarks/bench_aggregator.py --depth 24 --embed-dim 128 --img-size 112          # small CPU run
    python benchmarks/bench_aggregator.py --depth 2 --embed-dim 1024 --img-size 224 --frames 8 --reference \
        --cpu-time --threads 1 --breakdown                                                   # issue 18's ratio
    python benchmarks/bench_aggregator.py --device cuda --dtype bfloat16 --embed-dim 1024 --img-size 518 \\
        --patch-embed dinov2_vitl14_reg --frames 2 4 8 16 32 --json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vggt_reference  # noqa: E402
from _common import DTYPES, cuda_peak_bytes, profiler_peak_bytes, sync  # noqa: E402
from vggt_reference import vggt_reference_forward  # noqa: E402

from dinov3_integration.vggt_compat import Aggregator  # noqa: E402
from dinov3_integration.vggt_compat import fast_forward as fast_forward_module  # noqa: E402
from dinov3_integration.vggt_compat.rope import PreparedRope2D, RotaryPositionEmbedding2D  # noqa: E402

VGGT_HEAD_LAYERS = (4, 11, 17, 23)
CLOCK = time.perf_counter  # --cpu-time: time.process_time
SECTIONS = ("patch embed", "positions", "frame blocks", "global blocks", "RoPE (frame)", "RoPE (global)",
            "output assembly", "other")  # fmt: skip


def head_layers(depth: int) -> list[int]:
    """VGGT's DPT-head layers (4, 11, 17, 23 of 24), scaled to ``depth`` blocks."""
    if depth == 24:
        return list(VGGT_HEAD_LAYERS)
    return sorted({round(layer * (depth - 1) / 23) for layer in VGGT_HEAD_LAYERS})


def measure(agg: Aggregator, x: torch.Tensor, layers, repeats: int, peak: bool = True) -> dict[str, float]:
    """Median time over ``repeats`` runs (none: only the warm-up), peak bytes (0 without ``peak``), kept bytes."""
    device = x.device

    def run():
        with torch.inference_mode():
            return agg(x, output_layers=layers)[0]

    outputs = run()  # warm-up (also allocates the RoPE/position caches)
    kept = sum(o.numel() * o.element_size() for o in outputs if o is not None)
    del outputs
    times = []
    for _ in range(repeats):
        sync(device)
        start = CLOCK()
        out = run()
        sync(device)
        times.append(CLOCK() - start)
        del out
    peak_bytes = 0
    if peak:
        peak_bytes = cuda_peak_bytes(run, device) if device.type == "cuda" else profiler_peak_bytes(run)
    return {"time_s": statistics.median(times) if times else float("nan"), "peak_bytes": peak_bytes, "kept_bytes": kept}


def measure_interleaved(agg: Aggregator, x: torch.Tensor, modes: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median time of each mode (and of the ``vggt`` transcription), one run of each in turn per round, and the
    median over rounds of the per-round ratio ``vggt time / mode time`` (``speed``)."""
    runs = {mode: (lambda layers=layers: agg(x, output_layers=layers)[0]) for mode, layers in modes.items()}
    runs["vggt"] = lambda: vggt_reference_forward(agg, x)[0]
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    names = list(runs)
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        for r in range(repeats):
            for mode in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
                sync(x.device)
                start = CLOCK()
                out = runs[mode]()
                sync(x.device)
                times[mode].append(CLOCK() - start)
                del out
    return {
        mode: {
            "time_s": statistics.median(t),
            "speed": statistics.median(v / m for v, m in zip(times["vggt"], t)),
            "rounds_s": t,
        }
        for mode, t in times.items()
    }


class SectionTimer:
    """Self time per named section: a section's time excludes the sections nested in it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._stack: list[float] = []

    def wrap(self, name, fn):
        """``fn`` timed as section ``name`` (a string, or a function of ``fn``'s arguments returning one)."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            label = name(*args, **kwargs) if callable(name) else name
            sync(self.device)
            start = CLOCK()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                elapsed = CLOCK() - start
                nested = self._stack.pop()
                self.totals[label] = self.totals.get(label, 0.0) + elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed

        return timed


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = obj.__dict__.get(name, None) if not isinstance(obj, type) else obj.__dict__[name]
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is None and not isinstance(obj, type):
            delattr(obj, name)
        else:
            setattr(obj, name, old)


def breakdown(agg: Aggregator, x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds per section (see the module docstring) of ours (``all``) and of the transcription."""
    B, S, _, H, W = x.shape
    P = agg.patch_start_idx + (H // agg.patch_size) * (W // agg.patch_size)
    timer = SectionTimer(x.device)
    kind = {"now": "frame"}

    def block_wrapper(label):
        def enter(fn):
            def run(*args, **kwargs):
                kind["now"] = label
                return fn(*args, **kwargs)

            return timer.wrap(f"{label} blocks", run)

        return enter

    def ref_block_label(block, tokens, *args):
        kind["now"] = "frame" if tokens.shape[1] == P else "global"
        return f"{kind['now']} blocks"

    rope_label = lambda *args, **kwargs: f"RoPE ({kind['now']})"  # noqa: E731
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        enter(patched(agg, "_embed", timer.wrap("patch embed", agg._embed)))
        enter(patched(agg, "_positions", timer.wrap("positions", agg._positions)))
        for label, blocks in (("frame", agg.frame_blocks), ("global", agg.global_blocks)):
            for block in blocks:
                enter(patched(block, "forward_fast", block_wrapper(label)(block.forward_fast)))
                enter(patched(block, "forward", block_wrapper(label)(block.forward)))
        enter(patched(PreparedRope2D, "rotate_", timer.wrap(rope_label, PreparedRope2D.rotate_)))
        enter(
            patched(
                RotaryPositionEmbedding2D, "rotate_pair", timer.wrap(rope_label, RotaryPositionEmbedding2D.rotate_pair)
            )
        )
        ff = fast_forward_module
        enter(patched(ff, "write_half", timer.wrap("output assembly", ff.write_half)))
        ref = vggt_reference
        enter(patched(ref, "_embed", timer.wrap("patch embed", ref._embed)))
        enter(patched(ref, "_positions", timer.wrap("positions", ref._positions)))
        enter(patched(ref, "_block", timer.wrap(ref_block_label, ref._block)))
        enter(patched(ref, "_rope2d", timer.wrap(rope_label, ref._rope2d)))
        enter(patched(ref, "_assemble", timer.wrap("output assembly", ref._assemble)))
        runs = {"ours": lambda: agg(x)[0], "vggt": lambda: vggt_reference_forward(agg, x)[0]}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        with torch.inference_mode():
            for fn in runs.values():
                fn()  # warm-up
            for r in range(repeats):
                for name in list(runs)[r % 2 :] + list(runs)[: r % 2]:
                    timer.totals = {}
                    sync(x.device)
                    start = CLOCK()
                    out = runs[name]()
                    sync(x.device)
                    total = CLOCK() - start
                    del out
                    sections = {k: timer.totals.get(k, 0.0) for k in SECTIONS[:-1]}
                    sections["other"] = total - sum(sections.values())
                    sections["total"] = total
                    rounds[name].append(sections)
    return {name: {k: statistics.median(s[k] for s in rs) for k in rs[0]} for name, rs in rounds.items()}


def print_breakdown(S: int, result: dict[str, dict[str, float]]) -> None:
    ours, ref = result["ours"], result["vggt"]
    print(f"breakdown, S = {S} (median seconds per section over the rounds; share of the total)")
    print(f"{'section':<16} | {'ours (s)':>9} | {'share':>6} | {'vggt (s)':>9} | {'share':>6} | {'vggt / ours':>11}")
    print("-" * 72)
    for k in (*SECTIONS, "total"):
        ratio = ref[k] / ours[k] if ours[k] > 0 else float("nan")
        print(
            f"{k:<16} | {ours[k]:>9.4f} | {ours[k] / ours['total']:>6.1%} | {ref[k]:>9.4f} | "
            f"{ref[k] / ref['total']:>6.1%} | {ratio:>10.2f}x"
        )


def measure_reference(agg: Aggregator, x: torch.Tensor, peak: bool = True) -> dict[str, float]:
    """Peak and kept bytes of the VGGT transcription (its time comes from :func:`measure_interleaved`)."""

    def run():
        with torch.inference_mode():
            return vggt_reference_forward(agg, x)[0]

    outputs = run()
    kept = sum(o.numel() * o.element_size() for o in outputs)
    del outputs
    if not peak:
        return {"peak_bytes": 0, "kept_bytes": kept}
    peak_bytes = cuda_peak_bytes(run, x.device) if x.device.type == "cuda" else profiler_peak_bytes(run)
    return {"peak_bytes": peak_bytes, "kept_bytes": kept}


def fit_exponent(frames: list[int], times: list[float]) -> float:
    """Slope of ``log time`` against ``log S`` (least squares)."""
    xs = [math.log(s) for s in frames]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 4, 8, 16], help="sequence lengths S")
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--embed-dim", type=int, default=1024)
    parser.add_argument("--num-heads", type=int, default=None, help="default: embed_dim // 64 (at least 1)")
    parser.add_argument("--img-size", type=int, default=518, help="square frames; a multiple of the patch size")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--patch-embed", default="conv", help='"conv", a VGGT DINOv2 name or a DINOv3 name')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="module and input dtype")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None, help="run under autocast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--reference", action="store_true", help="also time VGGT's transcription (mode vggt)")
    parser.add_argument("--cpu-time", action="store_true", help="time with time.process_time (CPU seconds)")
    parser.add_argument("--breakdown", action="store_true", help="time sections of ours and of the transcription")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory runs (peak printed as 0)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    heads = args.num_heads or max(1, args.embed_dim // 64)
    torch.manual_seed(0)
    agg = Aggregator(
        img_size=args.img_size,
        patch_size=args.patch_size,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=heads,
        patch_embed=args.patch_embed,
        check_input_range=False,
    )
    agg = agg.to(device=device, dtype=dtype).eval()
    modes = {"all": "all", "heads": head_layers(args.depth)}
    autocast = torch.autocast(device.type, dtype=DTYPES[args.autocast]) if args.autocast else contextlib.nullcontext()

    records = []
    breakdowns: dict[int, dict[str, dict[str, float]]] = {}
    with autocast:
        for S in args.frames:
            x = torch.rand(1, S, 3, args.img_size, args.img_size, device=device, dtype=dtype)
            for mode, layers in modes.items():
                # with --reference the times come from the interleaved rounds below
                result = measure(agg, x, layers, 0 if args.reference else args.repeats, not args.no_peak)
                records.append({"frames": S, "mode": mode, **result})
            if args.reference:
                timed = measure_interleaved(agg, x, modes, args.repeats)
                for r in records[-len(modes) :]:
                    r["time_s"] = timed[r["mode"]]["time_s"]
                records.append(
                    {"frames": S, "mode": "vggt", **measure_reference(agg, x, not args.no_peak), **timed["vggt"]}
                )
                for r in records[-len(modes) - 1 :]:
                    r["speed_vs_vggt"] = timed[r["mode"]]["speed"]
                    r["rounds_s"] = timed[r["mode"]]["rounds_s"]
            if args.breakdown:
                breakdowns[S] = breakdown(agg, x, args.repeats)

    fits = {
        mode: fit_exponent(
            [r["frames"] for r in records if r["mode"] == mode], [r["time_s"] for r in records if r["mode"] == mode]
        )
        for mode in {r["mode"] for r in records}
    }
    p = agg.patch_size
    report = {
        "config": {
            "depth": args.depth,
            "embed_dim": args.embed_dim,
            "num_heads": heads,
            "img_size": args.img_size,
            "patch_size": p,
            "tokens_per_frame": agg.patch_start_idx + (args.img_size // p) ** 2,
            "patch_embed": args.patch_embed,
            "device": str(device),
            "dtype": args.dtype,
            "autocast": args.autocast,
            "threads": torch.get_num_threads(),
            "heads_layers": modes["heads"],
            "clock": "process_time" if args.cpu_time else "perf_counter",
            "peak_memory": "cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler tensor bytes",
        },
        "results": records,
        "time_exponent": fits,
        "breakdown": breakdowns,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return report

    mib = 1024**2
    cfg = report["config"]
    print(
        f"Aggregator depth={cfg['depth']} embed_dim={cfg['embed_dim']} heads={heads} img={args.img_size} "
        f"(P={cfg['tokens_per_frame']} tokens/frame) patch_embed={args.patch_embed} device={device} "
        f"dtype={args.dtype} autocast={args.autocast} threads={cfg['threads']}; heads mode keeps layers "
        f"{modes['heads']}; peak = {cfg['peak_memory']}; clock = {cfg['clock']}"
        + ("; speed = median of per-round ratios" if args.reference else "")
    )
    print(
        f"{'S':>4} | {'mode':<5} | {'time (s)':>9} | {'peak (MiB)':>10} | {'kept (MiB)':>10} | {'peak vs all':>11}"
        + (f" | {'peak vs vggt':>12} | {'speed vs vggt':>13}" if args.reference else "")
    )
    print("-" * (66 + (33 if args.reference else 0)))
    by_key = {(r["frames"], r["mode"]): r for r in records}
    for r in records:
        ref = by_key[(r["frames"], "all")]["peak_bytes"]
        ratio = f"{r['peak_bytes'] / ref:.2f}x" if ref else "-"
        extra = ""
        if args.reference:
            vggt_peak = by_key[(r["frames"], "vggt")]["peak_bytes"]
            extra = f" | {r['peak_bytes'] / vggt_peak if vggt_peak else float('nan'):>11.2f}x"
            extra += f" | {r['speed_vs_vggt']:>12.2f}x"
        print(
            f"{r['frames']:>4} | {r['mode']:<5} | {r['time_s']:>9.4f} | {r['peak_bytes'] / mib:>10.1f} | "
            f"{r['kept_bytes'] / mib:>10.1f} | {ratio:>11}{extra}"
        )
    if len(set(args.frames)) > 1:
        print("time ~ S^k (log-log fit): " + ", ".join(f"{mode}: k = {k:.2f}" for mode, k in fits.items()))
    else:
        print("time ~ S^k: needs at least two different --frames values")
    for S, result in breakdowns.items():
        print_breakdown(S, result)
    return report


if __name__ == "__main__":
    main()
