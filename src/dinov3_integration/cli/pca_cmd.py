"""``dinov3 pca``: the reference PCA picture of dense features, for one image or a grid of several.

Each row shows the input (resized to the model input size ``H x W``) and, beside it, the 3-component PCA of the
chosen block's normed patch features as colours, upsampled to ``H x W``: one image gives a ``2W x H`` PNG; several
give rows stacked top to bottom (the canvas is as wide as the widest row). See :mod:`dinov3_integration.pca`.
``--from-features`` draws files written by ``dinov3 extract`` instead of running a model.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._logging import get_logger
from ._common import (
    CLIError,
    add_model_args,
    autocast,
    build_model,
    compute_dtype,
    dist_env,
    resolve_device,
    setup_logging,
)

log = get_logger("pca")

EPILOG = """examples:
  dinov3 pca photo.jpg --out photo_pca.png --weights lvd1689m
  dinov3 pca a.jpg b.jpg c.jpg --out grid.png --weights lvd1689m --joint
  dinov3 pca --from-features feats/a.jpg.safetensors --out a_pca.png
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pca",
        help="PCA picture of dense features (input beside its feature colours)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders of images or .txt lists")
    p.add_argument("--out", "-o", required=True, help="output PNG")
    p.add_argument(
        "--from-features",
        nargs="+",
        metavar="FILE",
        default=None,
        help="safetensors files written by `dinov3 extract` (no model is run)",
    )
    add_model_args(p, resolution="768")
    p.add_argument("--layer", type=int, default=-1, help="block to visualise (default -1 = last)")
    p.add_argument(
        "--mask", action=argparse.BooleanOptionalAction, default=True, help="black out the background (default on)"
    )
    p.add_argument(
        "--joint", action="store_true", help="one PCA over all images, so colours are comparable across them"
    )
    p.add_argument(
        "--upsample", choices=("nearest", "bilinear"), default="nearest", help="how the patch grid is enlarged"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)
    return p


def _compute_rows(args: argparse.Namespace) -> list[tuple[Any, Any, tuple[int, int], str]]:
    """Run the model: ``(input uint8 [3, H, W], features [h, w, D], (H, W), name)`` per image."""
    import torch

    from ..data.inputs import InputError, discover_inputs
    from ..data.preprocess import (
        choose_normalization,
        load_image,
        normalize,
        parse_resolution,
        resize_uint8,
        target_size,
    )

    try:
        items = discover_inputs(args.inputs)
        resolution = parse_resolution(args.resolution)
    except (InputError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    videos = [it.path for it in items if it.kind != "image"]
    if videos:
        raise CLIError(
            f"pca draws images only; for {videos[0]} run `dinov3 extract` and then `dinov3 pca --from-features`"
        )
    device = resolve_device(args.device, dist_env())
    loaded = build_model(args, device)
    model = loaded.model
    layer = args.layer + model.n_blocks if args.layer < 0 else args.layer
    if not 0 <= layer < model.n_blocks:
        raise CLIError(f"--layer {args.layer} is out of range for a model with {model.n_blocks} blocks")
    norm = choose_normalization(args.normalization, loaded.weights_tag)
    dtype = compute_dtype(args.dtype)
    p = model.patch_size
    rows = []
    for item in items:
        try:
            image = load_image(item.path)
        except Exception as exc:
            raise CLIError(f"cannot read {item.path}: {exc}") from exc
        size = target_size(image.shape[-2], image.shape[-1], resolution, p)
        pixels = resize_uint8(image, size, args.interpolation)
        with torch.inference_mode(), autocast(device, dtype):
            x = normalize(pixels.to(device), norm)[None]
            (patches,) = model.get_intermediate_layers(x, n=[layer], norm=True)
        feats = patches[0].float().reshape(size[0] // p, size[1] // p, -1).cpu()
        rows.append((pixels, feats, size, item.path))
    return rows


def _rows_from_features(files: list[str], layer_arg: int) -> list[tuple[Any, Any, tuple[int, int], str]]:
    """Read ``dinov3 extract`` outputs: one row per image, or per frame of a video / clip."""
    from ..data.preprocess import load_image, resize_uint8
    from .extract import read_features

    rows = []
    for file in files:
        if not os.path.isfile(file):
            raise CLIError(f"--from-features {file!r} does not exist")
        try:
            tensors, meta = read_features(file)
        except Exception as exc:
            raise CLIError(f"--from-features {file}: not a readable safetensors file ({exc})") from exc
        layers = sorted(int(k.split(".", 1)[1]) for k in tensors if k.startswith("patch."))
        if not layers:
            raise CLIError(
                f"--from-features {file}: no patch features in it (keys {sorted(tensors)[:6]}); "
                "extract with --save patch"
            )
        if layer_arg == -1:
            layer = layers[-1]
        elif layer_arg in layers:
            layer = layer_arg
        else:
            raise CLIError(f"--layer {layer_arg} is not in {file} (it holds layers {layers})")
        patch = tensors[f"patch.{layer}"].float()
        p = int(meta.get("patch_size", 16))
        frames = patch[None] if patch.ndim == 3 else patch  # [T, h, w, D]
        h, w = frames.shape[1:3]
        size = (h * p, w * p)
        sources: list[str | None] = [None] * frames.shape[0]
        kind = meta.get("kind")
        if kind == "image":
            sources = [meta.get("source")]
        elif kind == "clip":
            folder = meta.get("source", "")
            sources = [os.path.join(folder, n) for n in meta.get("frame_names", [])] or sources
        interpolation = (meta.get("preprocessing") or {}).get("interpolation", "bilinear")
        for t in range(frames.shape[0]):
            src = sources[t] if t < len(sources) else None
            image = None
            if src and os.path.isfile(src):
                try:
                    image = resize_uint8(load_image(src), size, interpolation)
                except Exception as exc:  # the picture is still useful without the input panel
                    log.warning("cannot read %s (%s): drawing the PCA only", src, exc)
            rows.append((image, frames[t], size, f"{file}[{t}]" if frames.shape[0] > 1 else file))
    return rows


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 pca``."""
    from ..pca import compose_rows, pca_colors, render_row, save_png

    setup_logging(verbose=getattr(args, "verbose", 0), quiet=args.quiet)
    if args.from_features and args.inputs:
        raise CLIError("give either INPUT images or --from-features files, not both")
    if not args.from_features and not args.inputs:
        raise CLIError("nothing to draw: pass image paths or --from-features FILE")
    if not args.out.lower().endswith(".png"):
        raise CLIError(f"--out {args.out!r} must be a .png file")
    rows = _rows_from_features(args.from_features, args.layer) if args.from_features else _compute_rows(args)
    colors = pca_colors([r[1] for r in rows], mask=args.mask, joint=args.joint)
    pictures = [render_row(image, rgb, size, args.upsample) for (image, _, size, _), (rgb, _) in zip(rows, colors)]
    picture = compose_rows(pictures)
    save_png(picture, args.out)
    log.info(
        "pca: wrote %s (%dx%d, %d row%s)", args.out, picture.width, picture.height, len(rows), "s" * (len(rows) > 1)
    )
    return 0
