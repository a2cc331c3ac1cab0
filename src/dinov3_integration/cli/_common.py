"""Pieces shared by the ``dinov3`` sub-commands: logging, model options, devices, atomic writes, torchrun."""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..utils import atomic as _atomic
from ..utils.redact import redact_text

log = get_logger("cli")

DEFAULT_MODEL = "dinov3_vits16"


class CLIError(Exception):
    """A problem with the command line or its inputs; ``main`` prints it and exits with status 2."""


# ------------------------------------------------------------------------------------------------------- logging
class _TqdmHandler(logging.StreamHandler):
    """Write log records with ``tqdm.write`` so they do not break a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(*, verbose: int = 0, quiet: bool = False, rank: int | None = None) -> None:
    """Send the ``dinov3`` logger to stderr: INFO by default, WARNING with ``quiet``, DEBUG with ``-v``."""
    logger = logging.getLogger("dinov3")
    for handler in list(logger.handlers):
        if getattr(handler, "_dinov3_cli", False):
            logger.removeHandler(handler)
    handler: logging.Handler = _TqdmHandler(sys.stderr) if sys.stderr.isatty() else logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if rank is not None else ""
    handler.setFormatter(logging.Formatter(f"dinov3: {prefix}%(message)s"))
    handler._dinov3_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@contextmanager
def restore_logging() -> Iterator[None]:
    """Undo :func:`setup_logging` afterwards (``main`` may be called in-process, e.g. from tests or notebooks)."""
    logger = logging.getLogger("dinov3")
    handlers, level = list(logger.handlers), logger.level
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
        logger.setLevel(level)


def library_version() -> str:
    """``dinov3_integration.__version__`` (``"unknown"`` if the package cannot tell)."""
    try:
        from .. import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - only while the package is half-written
        try:
            from importlib.metadata import version

            return version("dinov3-integration")
        except Exception:
            return "unknown"


# --------------------------------------------------------------------------------------------------- argument parsing
# A value made of comma-separated integers, negatives included ("-4,-1"), is a value, not an option.
_NEGATIVE_LIST = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(\s*,\s*-?\d+)+$")


def accept_negative_lists(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take ``--layers -4,-1`` as written (argparse alone reads ``-4,-1`` as an unknown option).

    argparse treats an argument that starts with ``-`` as a value only when it looks like a negative number; this
    widens "negative number" to comma lists of integers (``parser`` must have no option that looks like one).
    """
    parser._negative_number_matcher = _NEGATIVE_LIST  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------- model options
def parse_model_kwargs(values: list[str] | None, *, option: str = "--model-kwargs") -> dict[str, Any]:
    """``["depth=2,embed_dim=64", "num_heads=4"]`` -> ``{"depth": 2, "embed_dim": 64, "num_heads": 4}``.

    Values are Python literals (numbers, True/False/None, quoted strings); anything else stays a string.
    """
    out: dict[str, Any] = {}
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise CLIError(f"{option} {part!r} is not KEY=VALUE (example: {option} depth=2,embed_dim=64)")
            key, raw = part.split("=", 1)
            try:
                out[key.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = raw.strip()
    return out


def add_model_args(parser: argparse.ArgumentParser, *, resolution: str, random_help: str | None = None) -> None:
    """``--model --weights --random-weights --model-kwargs --device --dtype --resolution ...`` for a sub-command."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL}; see `dinov3 models`)"
    )
    g.add_argument(
        "--weights",
        default=None,
        help="weights: a tag (lvd1689m, sat493m), a .pth/.safetensors file, a folder, a URL, an hf-hub:ID or a timm "
        "name; passed to create_model(..., pretrained=True, weights=...). Without it the model's default weights are "
        "looked up by the hub",
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help=random_help or "use randomly initialised weights (seeded by --seed); for testing only",
    )
    g.add_argument(
        "--model-kwargs",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="architecture overrides passed to create_model (e.g. depth=2,embed_dim=64,num_heads=4 for a tiny model)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    g.add_argument(
        "--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1, mps"
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype; bfloat16 runs the model under autocast (float16 is not supported by DINOv3)",
    )
    p = parser.add_argument_group("preprocessing")
    p.add_argument(
        "--resolution",
        default=resolution,
        help=f"short side in pixels (aspect ratio kept) or HxW; rounded to the patch size (default {resolution})",
    )
    p.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic"),
        default="bilinear",
        help="antialiased resize of the uint8 image; bilinear is the reference README transform (default)",
    )
    p.add_argument(
        "--normalization",
        choices=("auto", "imagenet", "sat493m"),
        default="auto",
        help="mean/std: auto = satellite statistics for sat493m weights, ImageNet otherwise",
    )


@dataclass
class LoadedModel:
    """A model ready for inference plus what identifies its weights."""

    model: Any
    name: str
    weights: str
    weights_tag: str | None
    digest: str
    model_kwargs: dict[str, Any]


def state_dict_digest(model: Any) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): identifies the weights that ran."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


_PROBE = 1 << 20  # bytes hashed at each end of a weights file for its cheap identity


def weights_identity(args: argparse.Namespace) -> str | None:
    """A cheap identity of the weights ``args`` ask for, or None when only loading them can tell (URLs, tags, hub
    names, folders). A local file is its real path, size, modification time and a hash of its first and last MiB."""
    if args.weights is None:
        return f"random(seed={args.seed})" if args.random_weights else None
    path = os.path.expanduser(str(args.weights))
    if not os.path.isfile(path):
        return None
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            h.update(fh.read(_PROBE))
            if st.st_size > 2 * _PROBE:
                fh.seek(-_PROBE, os.SEEK_END)
                h.update(fh.read(_PROBE))
    except OSError:
        return None
    return f"file:{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


_MODEL_CACHE: dict[str, LoadedModel] = {}


def build_model(args: argparse.Namespace, device: Any, *, allow_random: bool | None = None) -> LoadedModel:
    """Create ``args.model`` with ``args.weights`` (or random weights when allowed) on ``device``, in eval mode.

    The last model built is reused when a later call in the same process asks for the same one (``dinov3 demo``
    runs several sub-commands); models are only used for inference, so sharing is safe.
    """
    import torch

    from ..models import create_model

    kwargs = parse_model_kwargs(getattr(args, "model_kwargs", None))
    random = args.random_weights if allow_random is None else allow_random
    cache_key = json.dumps(
        [args.model, args.weights, weights_identity(args), random, args.seed, kwargs, str(device)],
        sort_keys=True,
        default=str,
    )
    if cache_key in _MODEL_CACHE:
        return _MODEL_CACHE[cache_key]
    try:
        if args.weights is None and random:
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
                torch.manual_seed(args.seed)
                model = create_model(args.model, pretrained=False, **kwargs)
            label = f"random(seed={args.seed})"
        else:
            model = create_model(args.model, pretrained=True, weights=args.weights, **kwargs)
            label = redact_text(str(args.weights)) if args.weights is not None else f"{args.model} default"
    except (TypeError, ValueError) as exc:
        raise CLIError(redact_text(str(exc))) from exc
    except Exception as exc:  # weights not found, download refused, bad checkpoint ...
        if args.weights is None:
            raise CLIError(
                f"could not load default weights for {args.model}: {redact_text(str(exc))}\n"
                "Pass --weights FILE|URL|hf-hub:ID (see `dinov3 models` for the released weights), "
                "or --random-weights to run with random weights (testing only)."
            ) from exc
        raise CLIError(
            f"could not load weights {redact_text(str(args.weights))!r} for {args.model}: {redact_text(str(exc))}"
        ) from exc
    digest = state_dict_digest(model)  # on the CPU, before the move
    model = model.to(device).eval()
    _MODEL_CACHE.clear()
    _MODEL_CACHE[cache_key] = loaded = LoadedModel(
        model=model,
        name=getattr(model, "model_name", args.model),
        weights=label,
        weights_tag=getattr(model, "weights_tag", None),
        digest=digest,
        model_kwargs=kwargs,
    )
    return loaded


def compute_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: Any, dtype: Any):  # noqa: ANN201
    """Autocast to ``dtype`` on ``device`` (a no-op for float32)."""
    import contextlib

    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------- distributed
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

    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{ctx.local_rank}"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise CLIError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda was asked for but CUDA is not available here: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
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


# ---------------------------------------------------------------------------------------------------- file output
# Atomic writes have one owner, dinov3_integration.utils.atomic; these names stay for the commands' old imports.
atomic_path = _atomic.atomic_path
atomic_write_text = _atomic.atomic_write_text
remove_stale_temps = _atomic.remove_stale_temps


def write_jsonl(dst: str | os.PathLike[str], records: list[Mapping[str, Any]]) -> None:
    atomic_write_text(dst, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assets_dir() -> Path:
    """The folder of bundled demo data (``dinov3_integration/assets``)."""
    return Path(__file__).resolve().parent.parent / "assets"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
