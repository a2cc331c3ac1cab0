"""Shared helpers for the benchmarks: timing, matrix-product ceiling, peak memory, environment, tables and JSON.

Everything here is measurement plumbing with no model knowledge, so any benchmark script can reuse it:

- :func:`sync`, :func:`time_call` and :func:`interleaved_times`: wall-clock timing (CUDA synchronised) of several
  candidates run in turn, round after round, so that load changes on a shared machine hit every candidate alike;
- :class:`MatmulCeiling`: the throughput of one large dense matrix product in a given dtype, timed in the same rounds
  as the models, as the "achievable GFLOP/s" reference;
- :func:`cuda_peak_bytes`, :func:`profiler_peak_bytes`, :func:`rss_high_water` / :func:`reset_rss_high_water`: peak
  memory of one call, each method saying what it counts (see their docstrings);
- :func:`environment`, :func:`format_table`, :func:`write_json`: reporting.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds of one ``fn()`` call, synchronised before and after on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_times(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device | str,
    warmup: int = 1,
    faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Time every candidate ``repeats`` times, interleaved; returns the per-call seconds of each.

    Each candidate runs ``warmup`` untimed calls first. Then round ``r`` calls every candidate once, in an order
    rotated by ``r`` (so no candidate always runs first or right after a given other one). When ``faults`` is a
    dict, the minor page faults of every timed call are appended to ``faults[name]`` (first touches of freshly
    mapped memory: on CPU a large, allocator-dependent cost of allocating big temporaries).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            f0 = minor_faults()
            times[name].append(time_call(fns[name], device))
            if faults is not None:
                faults.setdefault(name, []).append(minor_faults() - f0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------------------------ ceiling
class MatmulCeiling:
    """A large dense ``[n, n] @ [n, n]`` product in ``dtype``: the reference "achievable" throughput.

    Call the instance to run one product (time it like any candidate); :meth:`gflops` converts a time to GFLOP/s
    (``2 n^3`` FLOPs). Default sizes: on CPU 2048 in float32 (~17 GFLOP, a fraction of a second on a few cores) and
    4096 in 16-bit types (AMX/VNNI units run a 2048 product too briefly to reach their rate); 8192 on CUDA.
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype = torch.float32, n: int | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.n = n or (8192 if self.device.type == "cuda" else 2048 if dtype == torch.float32 else 4096)
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(self.n, self.n, generator=g).to(self.device, dtype)
        self.b = torch.randn(self.n, self.n, generator=g).to(self.device, dtype)
        self.out = torch.empty(self.n, self.n, device=self.device, dtype=dtype)

    @property
    def flops(self) -> float:
        return 2.0 * self.n**3

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.out)

    def gflops(self, seconds: float) -> float:
        return self.flops / seconds / 1e9


# ------------------------------------------------------------------------------------------------ memory
def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """CUDA: ``torch.cuda.max_memory_allocated`` during ``fn()`` minus the allocation before it (weights excluded,
    outputs included). Counts tensor bytes held by PyTorch's caching allocator, not the cache's reserve."""
    device = torch.device(device)
    sync(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return int(peak)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C++ chatter (the profiler's start/stop lines) on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profiler_peak_bytes(fn: Callable[[], Any]) -> int:
    """CPU: the highest running sum of tensor allocations minus frees that ``torch.profiler`` records
    (``profile_memory=True``) during ``fn()``. Counts live tensor bytes, not allocator overhead or RSS."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return int(peak)


def reset_rss_high_water() -> bool:
    """Reset this process's peak resident set size (Linux ``/proc/self/clear_refs`` "5"); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_high_water() -> tuple[int, int]:
    """``(VmHWM, VmRSS)`` of this process in bytes (Linux ``/proc/self/status``); ``(-1, -1)`` elsewhere."""
    values = {"VmHWM": -1, "VmRSS": -1}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["VmHWM"], values["VmRSS"]


# ------------------------------------------------------------------------------------------------ reporting
def environment(device: torch.device | str, threads: int | None = None) -> dict[str, Any]:
    """Versions, CPU/GPU names and thread count, for the report header and the JSON."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    for mod in ("timm", "transformers"):
        with contextlib.suppress(ImportError):
            env[mod] = __import__(mod).__version__
    return env


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are ``(key, header, format)`` with ``format`` like ``"{:.2f}"``.

    Missing or None values print as ``-``.
    """
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` (``-``: standard output)."""
    text = json.dumps(payload, indent=2, default=str)
    if str(path) == "-":
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")
