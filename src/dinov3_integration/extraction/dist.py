"""Where an extraction runs: the device, and this process's place in a ``torchrun`` job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .._logging import get_logger
from .errors import ExtractionError

__all__ = ["DistContext", "dist_env", "init_distributed", "resolve_device"]

log = get_logger("extract")


@dataclass
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, value: int) -> int:
        """Sum an integer over every rank."""
        if not self.initialized:
            return value
        import torch
        import torch.distributed as dist

        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return int(t.item())

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False


def dist_env() -> DistContext:
    """Rank, world size and local rank from the torchrun environment variables (not initialised)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistContext(rank, world, local, local_world, False)


def resolve_device(spec: str, ctx: DistContext) -> Any:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else cpu; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    import torch

    spec = (str(spec) if spec is not None else "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{ctx.local_rank}"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ExtractionError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ExtractionError("--device cuda was asked for but CUDA is not available here: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ExtractionError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(device)
    return device


def init_distributed(ctx: DistContext, device: Any, timeout_s: float) -> DistContext:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``."""
    if ctx.world_size <= 1:
        return ctx
    from datetime import timedelta

    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    ctx.initialized = True
    log.debug("joined process group: rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    return ctx
