"""Backbone throughput and peak memory: ours against ``transformers`` and ``timm``, side by side, same weights.

For every model (``--models``), the three implementations are built with the *same* weights: ours is created
randomly initialised (fixed seed) and converted with the library (``official_to_hf``, ``official_to_timm``) into
``transformers.DINOv3ViTModel`` and timm's ``vit_*_patch16_dinov3``. Then, for every resolution, batch, mode
(``eager`` / ``compile``: ``torch.compile(model, dynamic=False)``, one graph per input shape) and dtype (``float32``
or ``bfloat16`` autocast), in one process, on the same input and thread count, under ``torch.inference_mode``:

- every implementation and a large matrix product in the row's dtype (the "ceiling") are timed in interleaved rounds
  (``--repeats``; each round runs them all, in a rotated order) after ``--warmup`` untimed calls (which also compile);
- ``img/s`` is ``batch / median time``; ``vs ours`` is an implementation's speed relative to ours (< 1: ours is
  faster), as the median over rounds of ``ours' time / its time`` in the same round (robust to load drifting
  between rounds on a shared machine); ``faults/call`` is the median number of minor page faults per call (CPU);
  ``GFLOP/s`` uses the model's analytic forward FLOPs (``model_info(...).flops``, matrix products only, as timm's
  counts); ``% ceil`` is that over the matrix-product GFLOP/s measured in the same rounds;
- peak memory of one forward (eager only), by the method named in the output: on CUDA ``max_memory_allocated``
  minus the allocation before the call (weights excluded, outputs included); on CPU the rise of the resident-set
  high-water mark (Linux ``VmHWM``, reset just before the call) in a fresh subprocess per implementation, with
  glibc's mmap threshold fixed at 64 KiB so that freed large blocks return to the OS and RSS follows live memory
  (``rss``), or the peak of live tensor bytes from ``torch.profiler`` (``profiler``).

The agreement of the three outputs (patch tokens after the final norm) is checked once per model and printed.

Examples::

    # quick (< 2 min on 2 cores): ViT-S/16 at 224, eager float32, batch 8
    python benchmarks/bench_backbone.py --models vits16 --resolutions 224 --modes eager --dtypes float32
    # the issue's matrix (long on CPU): ViT-S/16 and ViT-B/16 at 224 and 512, eager and compile, fp32 and bf16
    python benchmarks/bench_backbone.py --json results/backbone.json
    # peak memory only, ViT-L/16 at 1024x1024, batch 1
    python benchmarks/bench_backbone.py --large --models vitl16 --resolutions 1024 --batch 1 --memory-only
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import (  # noqa: E402
    DTYPES,
    MatmulCeiling,
    cuda_peak_bytes,
    environment,
    format_table,
    interleaved_times,
    median,
    profiler_peak_bytes,
    reset_rss_high_water,
    rss_high_water,
    time_call,
    write_json,
)

from dinov3_integration.models import create_model, get_model_spec, model_info  # noqa: E402

MODELS = {"vits16": "dinov3_vits16", "vitb16": "dinov3_vitb16", "vitl16": "dinov3_vitl16"}
TIMM_NAMES = {
    "dinov3_vits16": "vit_small_patch16_dinov3",
    "dinov3_vitb16": "vit_base_patch16_dinov3",
    "dinov3_vitl16": "vit_large_patch16_dinov3",
}
IMPLS = ("ours", "timm", "transformers")
MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated during the call minus memory_allocated before it",
    "rss": "rise of the resident-set high-water mark (VmHWM) during the call, fresh subprocess, "
    "MALLOC_MMAP_THRESHOLD_=65536",
    "profiler": "peak of live tensor bytes recorded by torch.profiler(profile_memory=True)",
}


# ------------------------------------------------------------------------------------------------ models
def model_name(arg: str) -> str:
    """``vits16`` / ``dinov3_vits16`` -> ``dinov3_vits16``."""
    name = MODELS.get(arg, arg)
    if name not in TIMM_NAMES:
        raise SystemExit(f"unknown model {arg!r}; choose from {', '.join(MODELS)}")
    return name


def reference_state_dict(name: str, seed: int) -> dict[str, Tensor]:
    """Our randomly initialised model's state dict (fixed seed): the weights every implementation loads.

    Laid out like every released checkpoint: ``qkv.bias_mask`` all zeros (a fresh model has ``[1, 0, 1]``), so that
    each implementation does the work it does on real weights.
    """
    torch.manual_seed(seed)
    state = create_model(name).state_dict()
    return {k: torch.zeros_like(v) if k.endswith("qkv.bias_mask") else v for k, v in state.items()}


def build_impl(impl: str, name: str, state_dict: dict[str, Tensor]) -> nn.Module:
    """One implementation of ``name`` (eval mode, float32, on CPU) loaded with ``state_dict`` (ours' format)."""
    from dinov3_integration.hub.formats import hf_config_from_kwargs, official_to_hf, official_to_timm

    if impl in ("ours", "ours-noworkspace", "ours-reference"):
        model = create_model(name)
        model.load_state_dict(state_dict, strict=True)
        model.use_workspace = impl == "ours"  # ours-noworkspace: what the workspace buys, measured side by side
        model.use_fast_paths = impl != "ours-reference"  # ours-reference: the reference code, no fast paths
    elif impl == "timm":
        import timm

        model = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0, global_pool="token")
        model.load_state_dict(official_to_timm(state_dict), strict=True)
    elif impl == "transformers":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        config = hf_config_from_kwargs(get_model_spec(name).kwargs(), state_dict)
        config["pos_embed_rescale"] = float(config["pos_embed_rescale"])
        model = DINOv3ViTModel(DINOv3ViTConfig(**config, attn_implementation="sdpa"))
        hf_sd = official_to_hf(state_dict)
        expected = set(model.state_dict())
        if not set(hf_sd) <= expected:  # transformers 5.x nests the blocks as ``model.layer.N``
            hf_sd = {re.sub(r"^layer\.", "model.layer.", k): v for k, v in hf_sd.items()}
        model.load_state_dict(hf_sd, strict=True)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return model.eval()


def forward_fn(impl: str, module: Callable[..., Any]) -> Callable[[Tensor], Any]:
    """``x -> output`` for an implementation (the full backbone with its final norm; no classifier)."""
    if impl == "transformers":
        return lambda x: module(pixel_values=x).last_hidden_state
    return lambda x: module(x)


def patch_tokens(impl: str, module: nn.Module, x: Tensor, n_prefix: int) -> Tensor:
    """Normalised patch tokens ``[B, N, D]`` of one implementation (for the agreement check)."""
    if impl.startswith("ours"):
        return module.forward_features(x)["x_norm_patchtokens"]
    if impl == "timm":
        return module.forward_features(x)[:, n_prefix:]
    return module(pixel_values=x).last_hidden_state[:, n_prefix:]


@contextlib.contextmanager
def run_context(device: torch.device, dtype: torch.dtype, sdpa: str) -> Iterator[None]:
    """``inference_mode`` + autocast for bfloat16/float16 + (optionally) forced SDPA backends."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        if sdpa != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            names = {
                "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH,
                "cudnn": SDPBackend.CUDNN_ATTENTION,
            }
            stack.enter_context(sdpa_kernel([names[s] for s in sdpa.split(",")]))
        yield


# ------------------------------------------------------------------------------------------------ memory
def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh subprocess: build one implementation, then measure one forward's peak (RSS or profiler)."""
    from safetensors.torch import load_file

    torch.set_num_threads(spec["threads"])
    state_dict = load_file(spec["weights"])
    module = build_impl(spec["impl"], spec["model"], state_dict)
    del state_dict
    fwd = forward_fn(spec["impl"], module)
    device = torch.device("cpu")
    dtype = DTYPES[spec["dtype"]]
    x = torch.randn(spec["batch"], 3, spec["res"], spec["res"], generator=torch.Generator().manual_seed(0))
    gc.collect()
    result: dict[str, Any] = {}

    def call() -> Any:
        with run_context(device, dtype, "default"):
            return fwd(x)

    if spec["method"] in ("rss", "both"):
        before = rss_high_water()[1]
        if reset_rss_high_water():
            out = call()
            hwm = rss_high_water()[0]
            result["rss"] = hwm - before
            del out
        else:
            result["rss"] = None
    if spec["method"] in ("profiler", "both"):
        gc.collect()
        result["profiler"] = profiler_peak_bytes(call)
    return result


def measure_memory_cpu(
    impl: str, name: str, res: int, batch: int, dtype: str, weights: Path, method: str, threads: int
) -> dict[str, Any]:
    """Peak memory of one CPU forward of ``impl`` in a fresh subprocess (see :func:`memory_worker`)."""
    spec = {
        "impl": impl,
        "model": name,
        "res": res,
        "batch": batch,
        "dtype": dtype,
        "weights": str(weights),
        "method": method,
        "threads": threads,
    }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  memory worker failed for {impl}: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ main loop
def time_row(
    name: str,
    x: Tensor,
    mode: str,
    dtype_name: str,
    targets: dict[str, Any],
    ceiling: MatmulCeiling,
    args: argparse.Namespace,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Time every implementation on ``x`` and the matrix-product ceiling, interleaved; one result row each."""
    batch, res = x.shape[0], x.shape[-1]
    dtype = DTYPES[dtype_name]
    fns: dict[str, Callable[[], Any]] = {}
    for impl, target in targets.items():
        fwd = forward_fn(impl, target)

        def call(fwd: Callable[[Tensor], Any] = fwd) -> Any:
            with run_context(device, dtype, args.sdpa):
                return fwd(x)

        fns[impl] = call
    fns["matmul"] = ceiling
    faults: dict[str, list[int]] = {}
    times = interleaved_times(fns, args.repeats, device, warmup=args.warmup, faults=faults)
    ceil_gflops = ceiling.gflops(median(times["matmul"]))
    flops_per_image = model_info(name, res).flops
    ours_ips = batch / median(times["ours"]) if "ours" in times else None
    rows = []
    for impl in targets:
        t = median(times[impl])
        gflops = flops_per_image * batch / t / 1e9
        rows.append(
            {
                "model": name,
                "resolution": res,
                "batch": batch,
                "mode": mode,
                "dtype": dtype_name,
                "impl": impl,
                "median_s": t,
                "min_s": min(times[impl]),
                "times_s": times[impl],
                "img_per_s": batch / t,
                # paired: the median over rounds of ours' time / this time in the same round (drift-robust)
                "vs_ours": median([a / b for a, b in zip(times["ours"], times[impl])]) if ours_ips else None,
                "gflops": gflops,
                "ceiling_gflops": ceil_gflops,
                "frac_ceiling": gflops / ceil_gflops,
                "gflop_per_image": flops_per_image / 1e9,
                "page_faults": median(faults[impl]) if device.type == "cpu" else None,
            }
        )
    return rows


def memory_rows(
    name: str,
    x: Tensor,
    dtype_name: str,
    modules: dict[str, nn.Module],
    rows: list[dict[str, Any]],
    memory: str,
    weights: Path,
    args: argparse.Namespace,
    device: torch.device,
    threads: int,
) -> None:
    """Add the peak memory of one eager forward of each implementation to its eager row (created if missing)."""
    batch, res = x.shape[0], x.shape[-1]
    for impl, module in modules.items():
        row = next((r for r in rows if (r["mode"], r["dtype"], r["impl"]) == ("eager", dtype_name, impl)), None)
        if row is None:
            row = {"model": name, "resolution": res, "batch": batch, "mode": "eager", "dtype": dtype_name, "impl": impl}
            rows.append(row)
        if memory == "cuda":
            fwd = forward_fn(impl, module)

            def call_once(fwd: Callable[[Tensor], Any] = fwd) -> Any:
                with run_context(device, DTYPES[dtype_name], args.sdpa):
                    return fwd(x)

            row["peak_mb"] = cuda_peak_bytes(call_once, device) / 2**20
        else:
            out = measure_memory_cpu(impl, name, res, batch, dtype_name, weights, memory, threads)
            if out.get("rss") is not None:
                row["peak_mb"] = out["rss"] / 2**20
            if out.get("profiler") is not None:
                row["peak_tensor_mb"] = out["profiler"] / 2**20


# ------------------------------------------------------------------------------------------------ breakdown
MATMUL_OPS = {"aten::addmm": 1, "aten::mm": 0, "aten::bmm": 0}  # op -> index of the first matrix in its inputs
# the fused SDPA kernels (the math fallback is made of bmm calls, counted as matrix products)
ATTENTION_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
}


def breakdown_rows(
    name: str, x: Tensor, dtype_name: str, modules: dict[str, nn.Module], ceiling: MatmulCeiling, calls: int = 3
) -> list[dict[str, Any]]:
    """Where an eager CPU forward spends its time, from ``torch.profiler`` (``calls`` profiled forwards each).

    Per implementation: the time in matrix products (``addmm``/``mm``/``bmm``: the linear layers, bias copy
    included) with their GFLOP/s from the recorded shapes, the time in SDPA with its GFLOP/s (``4 B h N^2 d``), and
    the rest (norms, activations, RoPE, residual adds, allocation). ``% ceil`` compares each GFLOP/s with the
    matrix-product ceiling, measured here again: if everything but the matrix products took no time, the whole
    model would reach the matrix products' ``% ceil``.
    """
    from torch.profiler import ProfilerActivity, profile

    dtype = DTYPES[dtype_name]
    ceil_gflops = ceiling.gflops(median([time_call(ceiling, "cpu") for _ in range(5)]))
    rows = []
    for impl, module in modules.items():
        fwd = forward_fn(impl, module)
        with run_context(torch.device("cpu"), dtype, "default"):
            fwd(x)  # warm-up
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(calls):
                    fwd(x)
        matmul_t = attn_t = matmul_flops = attn_flops = 0.0
        for ev in prof.key_averages(group_by_input_shape=True):
            t = ev.cpu_time_total * 1e-6  # seconds, children included (addmm's bias copy)
            if ev.key in MATMUL_OPS:
                a, b = ev.input_shapes[MATMUL_OPS[ev.key]], ev.input_shapes[MATMUL_OPS[ev.key] + 1]
                matmul_t += t
                matmul_flops += 2 * math.prod(a) * b[-1] * ev.count
            elif ev.key in ATTENTION_OPS:
                B, h, N, d = ev.input_shapes[0]
                attn_t += t
                attn_flops += 4 * B * h * N * ev.input_shapes[1][2] * d * ev.count
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) * 1e-6
        rows.append(
            {
                "model": name,
                "resolution": x.shape[-1],
                "batch": x.shape[0],
                "dtype": dtype_name,
                "impl": impl,
                "ms": total / calls * 1e3,
                "matmul_ms": matmul_t / calls * 1e3,
                "matmul_share": matmul_t / total,
                "matmul_frac_ceiling": matmul_flops / matmul_t / 1e9 / ceil_gflops if matmul_t else None,
                "attention_ms": attn_t / calls * 1e3,
                "attention_share": attn_t / total,
                "attention_frac_ceiling": attn_flops / attn_t / 1e9 / ceil_gflops if attn_t else None,
                "other_ms": (total - matmul_t - attn_t) / calls * 1e3,
                "other_share": (total - matmul_t - attn_t) / total,
                "ceiling_gflops": ceil_gflops,
            }
        )
    return rows


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    r0 = rows[0]
    print(
        f"\n-- time breakdown (torch.profiler, eager {r0['dtype']}): {r0['model']} @ {r0['resolution']}, batch "
        f"{r0['batch']}; ceiling {r0['ceiling_gflops']:.0f} GFLOP/s"
    )
    columns = [
        ("impl", "impl", "{}"),
        ("ms", "ms/call", "{:.1f}"),
        ("matmul_ms", "matmul ms", "{:.1f}"),
        ("matmul_share", "share", "{:.0%}"),
        ("matmul_frac_ceiling", "% ceil", "{:.0%}"),
        ("attention_ms", "SDPA ms", "{:.1f}"),
        ("attention_share", "share", "{:.0%}"),
        ("attention_frac_ceiling", "% ceil", "{:.0%}"),
        ("other_ms", "other ms", "{:.1f}"),
        ("other_share", "share", "{:.0%}"),
    ]
    print(format_table(rows, columns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="vits16,vitb16", help="comma list of vits16, vitb16, vitl16")
    p.add_argument("--large", action="store_true", help="add ViT-L/16 (vitl16) to --models")
    p.add_argument("--resolutions", default="224,512", help="comma list of square input sides")
    p.add_argument("--batch", default="8", help="comma list of batch sizes")
    p.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32, bfloat16 (autocast)")
    p.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="comma list of ours, timm, transformers (and ours-noworkspace: ours with use_workspace=False; "
        "ours-reference: ours with use_fast_paths=False)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per row (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate before timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--sdpa", default="default", help="SDPA backends to force: default, or a comma list of "
                   "flash, efficient, cudnn, math")  # fmt: skip
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --modes compile")
    p.add_argument("--memory", default="auto", choices=["auto", "rss", "profiler", "both", "none"],
                   help="peak-memory method (auto: cuda on CUDA, rss on CPU)")  # fmt: skip
    p.add_argument("--memory-only", action="store_true", help="skip the timing, measure peak memory only")
    p.add_argument("--breakdown", action="store_true", help="also profile each eager forward (CPU): time in "
                   "matrix products, in SDPA and in the rest, with their GFLOP/s")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the shared random weights")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="also write the results as JSON to PATH (no PATH: standard output)")  # fmt: skip
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return {}
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    models = [model_name(m) for m in split(args.models)]
    if args.large and "dinov3_vitl16" not in models:
        models.append("dinov3_vitl16")
    resolutions = [int(r) for r in split(args.resolutions)]
    batches = [int(b) for b in split(args.batch)]
    modes = split(args.modes)
    dtypes = split(args.dtypes)
    impls = split(args.impls)
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    memory = args.memory if args.memory != "auto" else ("cuda" if device.type == "cuda" else "rss")
    if device.type == "cuda" and memory != "none":
        memory = "cuda"

    env = environment(device, threads)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if memory != "none":
        methods = ["rss", "profiler"] if memory == "both" else [memory]
        for m in methods:
            print(f"peak memory ({m}): {MEMORY_METHODS[m]}")
    report: dict[str, Any] = {"environment": env, "args": vars(args), "memory_method": memory, "rows": [], "checks": []}
    tmpdir = tempfile.TemporaryDirectory(prefix="bench_backbone_")
    ceilings: dict[str, MatmulCeiling] = {}

    for name in models:
        state_dict = reference_state_dict(name, args.seed)
        n_prefix = 1 + get_model_spec(name).kwargs().get("n_storage_tokens", 0)
        weights = Path(tmpdir.name) / f"{name}.safetensors"
        if memory in ("rss", "profiler", "both"):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(weights))
        modules = {impl: build_impl(impl, name, state_dict).to(device) for impl in impls}
        if "ours" in modules and len(modules) > 1:
            x = torch.randn(1, 3, resolutions[0], resolutions[0], device=device)
            with torch.inference_mode():
                ref = patch_tokens("ours", modules["ours"], x, n_prefix)
                for impl, module in modules.items():
                    if impl != "ours":
                        diff = (patch_tokens(impl, module, x, n_prefix) - ref).abs().max().item()
                        report["checks"].append({"model": name, "impl": impl, "max_abs_diff": diff})
                        print(f"{name}: {impl} patch tokens vs ours, max |diff| = {diff:.2e} (float32, same weights)")
        compiled: dict[str, Any] = {}
        for res in resolutions:
            for batch in batches:
                x = torch.randn(batch, 3, res, res, device=device)
                rows: list[dict[str, Any]] = []
                for mode in [] if args.memory_only else modes:
                    for dtype_name in dtypes:
                        if dtype_name not in ceilings:
                            ceilings[dtype_name] = MatmulCeiling(device, DTYPES[dtype_name])
                        targets = modules
                        if mode == "compile":
                            for impl, module in modules.items():
                                if impl not in compiled:
                                    compiled[impl] = torch.compile(module, dynamic=False, backend=args.compile_backend)
                            targets = compiled
                        rows += time_row(name, x, mode, dtype_name, targets, ceilings[dtype_name], args, device)
                if memory != "none":
                    for dtype_name in dtypes:
                        memory_rows(name, x, dtype_name, modules, rows, memory, weights, args, device, threads)
                print_rows(name, res, batch, model_info(name, res).flops, rows, memory)
                if args.breakdown and device.type == "cpu":
                    for dtype_name in dtypes:
                        if dtype_name not in ceilings:
                            ceilings[dtype_name] = MatmulCeiling(device, DTYPES[dtype_name])
                        brows = breakdown_rows(name, x, dtype_name, modules, ceilings[dtype_name])
                        print_breakdown(brows)
                        report.setdefault("breakdown", []).extend(brows)
                report["rows"].extend(rows)
                if args.json and args.json != "-":
                    write_json(args.json, report)  # after every table, so that an interrupted run keeps its results
        del modules, compiled
        gc.collect()
    print_summary(report["rows"])
    if args.json:
        write_json(args.json, report)
    tmpdir.cleanup()
    return report


def print_rows(name: str, res: int, batch: int, flops: float, rows: list[dict[str, Any]], memory: str) -> None:
    ceil = {r["dtype"]: r["ceiling_gflops"] for r in rows if "ceiling_gflops" in r}
    ceil_text = ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in ceil.items())
    head = f"{name} @ {res}x{res}, batch {batch}: {flops / 1e9:.2f} GFLOP/image"
    print(f"\n== {head}; matmul ceiling: {ceil_text or '-'}")
    columns = [
        ("mode", "mode", "{}"),
        ("dtype", "dtype", "{}"),
        ("impl", "impl", "{}"),
        ("img_per_s", "img/s", "{:.2f}"),
        ("vs_ours", "vs ours", "{:.3f}"),
        ("gflops", "GFLOP/s", "{:.1f}"),
        ("frac_ceiling", "% ceil", "{:.1%}"),
        ("page_faults", "faults/call", "{:.0f}"),
    ]
    if memory in ("cuda", "rss", "both"):
        columns.append(("peak_mb", f"peak MiB ({'rss' if memory == 'both' else memory})", "{:.0f}"))
    if memory in ("profiler", "both"):
        columns.append(("peak_tensor_mb", "peak MiB (profiler)", "{:.0f}"))
    print(format_table(rows, columns))


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Per row group: ours' speed over the faster peer."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if "img_per_s" in r:
            groups.setdefault((r["model"], r["resolution"], r["batch"], r["mode"], r["dtype"]), {})[r["impl"]] = r
    lines = []
    for key, by_impl in groups.items():
        peers = [r for i, r in by_impl.items() if not i.startswith("ours")]
        if "ours" not in by_impl or not peers:
            continue
        best = max(peers, key=lambda r: r["vs_ours"])
        speedup = 1.0 / best["vs_ours"]
        lines.append({"config": " ".join(map(str, key)), "best_peer": best["impl"], "speedup": speedup,
                      "frac": by_impl["ours"]["frac_ceiling"]})  # fmt: skip
    if lines:
        print("\n== ours / fastest peer (speed ratio, paired per round)")
        print(
            format_table(
                lines,
                [("config", "model res batch mode dtype", "{}"), ("best_peer", "fastest peer", "{}"),
                 ("speedup", "ours / peer", "{:.3f}"), ("frac", "ours % ceil", "{:.1%}")],
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
