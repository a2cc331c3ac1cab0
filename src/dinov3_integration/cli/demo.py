"""``dinov3 demo``: extraction and PCA pictures on the bundled photographs and multi-view sequence.

It runs, in this process, the same code as

1. ``dinov3 extract assets/images assets/sequence --out OUT/features`` (per-image features),
2. ``dinov3 pca assets/images/* --out OUT/pca_images.png`` (one PCA per photograph),
3. ``dinov3 pca --from-features OUT/features/sequence/*.safetensors --joint --out OUT/pca_sequence.png`` (one PCA
   over the four views, so the same surface gets the same colour in every frame),
4. ``dinov3 extract assets/sequence --aggregate --out OUT/aggregated`` (the sequence as one clip through a small
   2-layer VGGT-style Aggregator; its weights are random: no Aggregator weights exist for DINOv3),

at a small resolution so it finishes in seconds on a laptop CPU. Released weights are used when the hub finds them
locally (``$DINOV3_WEIGHTS_DIR``, the weights cache or the Hugging Face cache; never the network); otherwise the
model has random weights, said in one line, and the demo still runs end to end.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .._logging import get_logger
from ._common import DEFAULT_MODEL, assets_dir

log = get_logger("demo")

DEFAULT_OUT = "dinov3-demo-output"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run extract and pca on bundled sample images and a multi-view sequence",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--out", "-o", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, help="weights to use instead of searching the local caches")
    p.add_argument("--resolution", default="160", help="short side for extraction (default 160)")
    p.add_argument("--pca-resolution", default="224", help="short side for the PCA pictures (default 224)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument(
        "--model-kwargs", action="append", metavar="KEY=VALUE", help="architecture overrides (random weights only)"
    )
    p.set_defaults(func=run)
    return p


def find_local_weights(model: str) -> tuple[str | None, str]:
    """The model's released weights if the hub finds them without the network: ``(weights argument, reason)``."""
    try:
        from ..hub.sources import resolve_weights
    except ImportError as exc:
        return None, f"the weights hub is not available ({exc})"
    try:
        resolved = resolve_weights(model, None, offline=True, progress=False)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, first
    if resolved.path is not None:
        return str(resolved.path), resolved.source
    return resolved.tag or "lvd1689m", resolved.source


def _run(argv: list[str]) -> int:
    """Run ``dinov3 extract ...`` or ``dinov3 pca ...`` (``argv`` without ``dinov3``) in this process."""
    from . import extract, pca_cmd

    parser = argparse.ArgumentParser(prog="dinov3")
    sub = parser.add_subparsers(dest="command", required=True)
    extract.add_parser(sub)
    pca_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 demo``."""
    from ._common import CLIError, setup_logging

    setup_logging(verbose=getattr(args, "verbose", 0))
    start = time.monotonic()
    out = Path(args.out)
    images_dir = assets_dir() / "images"
    sequence_dir = assets_dir() / "sequence"
    images = sorted(str(p) for p in images_dir.glob("*.jpg"))
    frames = sorted(sequence_dir.glob("*.jpg"))
    if not images or not frames:
        raise CLIError(f"the bundled demo data is missing from {assets_dir()} (reinstall the package)")

    weights = args.weights
    if weights is None and not args.model_kwargs:
        weights, where = find_local_weights(args.model)
        if weights is not None:
            print(f"demo: using released weights for {args.model}: {where}")
    if weights is None:
        print(
            f"demo: no local weights for {args.model}, so the model has RANDOM weights (pictures show no semantics); "
            "for real features put the official .pth in $DINOV3_WEIGHTS_DIR or pass --weights FILE "
            "(see `dinov3 models`)."
        )
    model_args = ["--model", args.model, "--device", args.device]
    model_args += ["--weights", weights] if weights is not None else ["--random-weights"]
    for kw in args.model_kwargs or []:
        model_args += ["--model-kwargs", kw]

    # The sub-commands log at INFO; the demo prints its own summary instead.
    logging.getLogger("dinov3").setLevel(logging.WARNING)
    features = out / "features"
    status = _run(
        ["extract", str(images_dir), str(sequence_dir), "--out", str(features), "--resolution", args.resolution,
         "--save", "cls,patch", "--quiet", "--num-workers", "0", *model_args]
    )  # fmt: skip
    n_files = len(list(features.rglob("*.safetensors")))
    print(f"demo: wrote {n_files} feature files and manifest.jsonl to {features}/")

    pca_images = out / "pca_images.png"
    status |= _run(
        ["pca", *images, "--out", str(pca_images), "--resolution", args.pca_resolution, "--quiet", *model_args]
    )
    print(f"demo: wrote {pca_images} (each photograph beside its feature PCA)")

    seq_files = [str(features / sequence_dir.name / f"{f.name}.safetensors") for f in frames]
    pca_seq = out / "pca_sequence.png"
    status |= _run(["pca", "--from-features", *seq_files, "--joint", "--out", str(pca_seq), "--quiet"])
    print(f"demo: wrote {pca_seq} (the 4 views with one shared PCA: same colour = same feature)")

    aggregated = out / "aggregated"
    agg_args = ["--aggregator-kwargs", "depth=2", "--layers", "-1", "--random-aggregator"]
    status |= _run(
        ["extract", str(sequence_dir), "--aggregate", *agg_args, "--out", str(aggregated), "--resolution",
         args.resolution, "--quiet", "--num-workers", "0", *model_args]
    )  # fmt: skip
    print(
        f"demo: wrote {aggregated / sequence_dir.name}.safetensors "
        "(the sequence through a 2-layer Aggregator, random weights)"
    )
    print(f"demo: done in {time.monotonic() - start:.1f} s; outputs in {out}/")
    return status
