"""``dinov3 selftest``: a few-second installation check on the CPU with tiny random models.

Each check prints ``passed`` or ``failed: <reason>`` (``skipped`` for optional pieces that are not installed);
the exit status is 1 when any check failed. No network and no released weights are needed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 4}


class Skipped(Exception):
    """An optional component is not installed."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "selftest",
        help="check the installation (a few seconds, CPU, no weights needed)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--traceback", action="store_true", help="print the full traceback of failed checks")
    p.set_defaults(func=run)
    return p


def _tiny_model() -> Any:
    import torch

    from ..models import create_model

    torch.manual_seed(0)
    return create_model("dinov3_vits16", **TINY)


def check_model_creation(state: dict[str, Any]) -> str:
    from ..models import create_model, list_models

    names = list_models()
    if "dinov3_vits16" not in names:
        raise AssertionError(f"dinov3_vits16 is not registered (found {names})")
    full = create_model("dinov3_vitl16", device="meta")
    n = sum(p.numel() for p in full.parameters())
    state["model"] = model = _tiny_model()
    return f"{len(names)} models registered; dinov3_vitl16 has {n / 1e6:.1f}M parameters; tiny depth {model.n_blocks}"


def check_forward(state: dict[str, Any]) -> str:
    import torch

    model = state.get("model") or _tiny_model()
    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode():
        out = model.forward_features(x)
        ((patch, cls, storage),) = model.get_intermediate_layers(
            x, n=1, return_class_token=True, return_extra_tokens=True, norm=True
        )
    D = model.embed_dim
    expect = {"x_norm_clstoken": (2, D), "x_storage_tokens": (2, 4, D), "x_norm_patchtokens": (2, 6, D)}
    for key, shape in expect.items():
        if tuple(out[key].shape) != shape:
            raise AssertionError(f"{key} has shape {tuple(out[key].shape)}, expected {shape}")
    if not torch.isfinite(out["x_norm_patchtokens"]).all():
        raise AssertionError("the forward pass produced non-finite values")
    if not (torch.equal(patch, out["x_norm_patchtokens"]) and torch.equal(cls, out["x_norm_clstoken"])):
        raise AssertionError("get_intermediate_layers(n=1, norm=True) differs from forward_features")
    return "forward_features and get_intermediate_layers agree on a 32x48 input"


def check_hub(state: dict[str, Any]) -> str:
    import torch
    from safetensors.torch import save_file

    from ..models import create_model

    model = state.get("model") or _tiny_model()
    with tempfile.TemporaryDirectory(prefix="dinov3-selftest-") as tmp:
        path = Path(tmp) / "tiny_weights.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        torch.manual_seed(1)  # different random init: only the checkpoint can make the outputs agree
        loaded = create_model("dinov3_vits16", pretrained=True, weights=str(path), **TINY)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        if not torch.equal(model(x), loaded(x)):
            raise AssertionError("the model loaded from a checkpoint gives different outputs")
    return "a checkpoint written to a temporary folder loads back (strict) with identical outputs"


def check_preprocessing(state: dict[str, Any]) -> str:
    import torch
    from PIL import Image

    from ..data.preprocess import NORMALIZATIONS, load_image, normalize, reference_transform, resize_uint8
    from ._common import assets_dir

    images = sorted((assets_dir() / "images").glob("*.jpg"))
    if not images:
        raise AssertionError(f"no bundled images in {assets_dir() / 'images'}")
    norm = NORMALIZATIONS["imagenet"]
    ours = normalize(resize_uint8(load_image(images[0]), (64, 96)), norm)
    with Image.open(images[0]) as im:
        ref = reference_transform((64, 96), norm)(im.convert("RGB"))
    if not torch.equal(ours, ref):
        raise AssertionError(f"preprocessing differs from the README transform (max {float((ours - ref).abs().max())})")
    return f"matches the README transform bit for bit ({len(images)} bundled images found)"


def check_video(state: dict[str, Any]) -> str:
    try:
        import av
    except ImportError as exc:
        raise Skipped("PyAV is not installed (pip install av) - videos cannot be read") from exc
    import numpy as np

    from ..data.video import read_frames

    with tempfile.TemporaryDirectory(prefix="dinov3-selftest-") as tmp:
        path = str(Path(tmp) / "tiny.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for i in range(6):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        sampled = read_frames(path, frames=3)
    if sampled.frames.shape != (3, 32, 32, 3):
        raise AssertionError(f"decoded frames have shape {sampled.frames.shape}, expected (3, 32, 32, 3)")
    return f"PyAV {av.__version__} encodes and decodes a short video"


def check_aggregator(state: dict[str, Any]) -> str:
    import torch

    from ..vggt_compat.aggregator import Aggregator

    model = state.get("model") or _tiny_model()
    torch.manual_seed(0)
    agg = Aggregator(patch_embed=model, patch_size=16, embed_dim=model.embed_dim, depth=2, num_heads=4).eval()
    with torch.inference_mode():
        outputs, start = agg(torch.rand(1, 3, 3, 32, 32))
    shape = (1, 3, start + 4, 2 * model.embed_dim)
    if len(outputs) != 2 or tuple(outputs[-1].shape) != shape:
        raise AssertionError(f"got {len(outputs)} outputs of shape {tuple(outputs[-1].shape)}, expected 2 of {shape}")
    return f"3 frames -> {len(outputs)} outputs of {shape}"


def check_config(state: dict[str, Any]) -> str:
    from ..config import list_variants, load_config

    overrides = {
        "model.backbone.dinov3_model": "dinov3_vits16",
        "model.backbone.overrides": dict(TINY),
        "model.aggregator.enabled": True,
        "model.aggregator.depth": 2,
    }
    state["config"] = load_config(None, overrides)
    return f"packaged config loads with overrides ({len(list_variants())} variants: {', '.join(list_variants())})"


def check_integrated(state: dict[str, Any]) -> str:
    import torch

    from .. import DINOv3IntegratedModel  # type: ignore[attr-defined]

    cfg = state.get("config")
    if cfg is None:
        raise AssertionError("needs the config check to pass first")
    torch.manual_seed(0)
    model = DINOv3IntegratedModel.from_config(cfg).eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 2, 3, 32, 32))
    feats = out["features"]
    if feats.shape[:2] != (1, 2):
        raise AssertionError(f"features have shape {tuple(feats.shape)}, expected [1, 2, P, 2C]")
    return f"DINOv3IntegratedModel from the config: clip [1, 2, 3, 32, 32] -> features {tuple(feats.shape)}"


CHECKS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("model creation", check_model_creation),
    ("forward pass", check_forward),
    ("hub loading", check_hub),
    ("preprocessing", check_preprocessing),
    ("video decoding", check_video),
    ("aggregator", check_aggregator),
    ("config loading", check_config),
    ("integrated model", check_integrated),
]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 selftest``."""
    import platform

    import torch

    from ._common import library_version

    print(f"dinov3-integration {library_version()}, torch {torch.__version__}, Python {platform.python_version()}")
    state: dict[str, Any] = {}
    failed = 0
    width = max(len(name) for name, _ in CHECKS)
    for name, check in CHECKS:
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):  # the checks seed; leave the caller's RNG alone
                detail = check(state)
            status = "passed"
        except Skipped as exc:
            status, detail = "skipped", str(exc)
        except Exception as exc:
            failed += 1
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
            if args.traceback:
                traceback.print_exc()
        seconds = time.perf_counter() - start
        line = f"  {name:<{width}}  {status}" + (
            f": {detail}" if status != "passed" else f" ({seconds:.2f} s) - {detail}"
        )
        print(line, flush=True)
    print(f"selftest: {len(CHECKS) - failed} of {len(CHECKS)} checks passed" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
