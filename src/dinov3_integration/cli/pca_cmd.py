"""dinov3 pca: the reference PCA picture of dense features, for one image or a grid of several.

Each row shows the input (resized to the model input size H x W) and, beside it, the 3-component PCA of the chosen
block's normed patch features as colours, upsampled to H x W. Every row is scaled to the width of the widest one
and has the input's name above it; a picture made with random weights carries a red banner saying so.
--from-features draws the outputs of `dinov3 extract` instead of running a model: feature files, or a shard folder
of `--format shards` (every input in it); a video's frames are decoded again to be shown beside their colours. An
input that cannot be read is skipped and reported: the picture shows the others and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
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
  dinov3 pca --from-features shards/ --out shards_pca.png     # every input of an `extract --format shards` folder
"""


@dataclass
class Row:
    """One picture row: ``image`` uint8 ``[3, H, W]`` (None: not available), ``features`` ``[h, w, D]``."""

    image: Any
    features: Any
    size: tuple[int, int]
    caption: str


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pca",
        help="PCA picture of dense features (input beside its feature colours)",
        description=__doc__,
        epilog=EPILOG,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders of images or .txt lists")
    p.add_argument("--out", "-o", required=True, help="output PNG")
    p.add_argument(
        "--from-features",
        nargs="+",
        metavar="FILE",
        default=None,
        help="outputs of `dinov3 extract` (no model is run): .safetensors files, or a shard folder of "
        "`--format shards` (or its index.json, or one shard): every input in it, sorted",
    )
    add_model_args(p, resolution="768")
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="block to visualise, negative from the end (default: the last block; with --from-features the "
        "deepest block in the file)",
    )
    p.add_argument("--mask", action=argparse.BooleanOptionalAction, default=True, help="black out the background")
    p.add_argument(
        "--joint", action="store_true", help="one PCA over all images, so colours are comparable across them"
    )
    p.add_argument(
        "--upsample", choices=("nearest", "bilinear"), default="nearest", help="how the patch grid is enlarged"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)
    return p


def _compute_rows(args: argparse.Namespace, failures: list[tuple[str, str]]) -> tuple[list[Row], bool]:
    """Run the model on each image: ``(rows, random_weights)``; unreadable images go to ``failures``."""
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
    from ..utils.indices import resolve_index

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
    try:
        layer = resolve_index(-1 if args.layer is None else args.layer, model.n_blocks, "--layer")
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    norm = choose_normalization(args.normalization, loaded.weights_tag)
    dtype = compute_dtype(args.dtype)
    p = model.patch_size
    rows = []
    for item in items:
        try:
            image = load_image(item.path)
            size = target_size(image.shape[-2], image.shape[-1], resolution, p)
        except Exception as exc:  # unreadable, truncated, too small: skip it, report it, draw the others
            failures.append((item.path, f"cannot read the image ({exc})"))
            log.error("skipped %s: cannot read the image (%s)", item.path, exc)
            continue
        pixels = resize_uint8(image, size, args.interpolation)
        with torch.inference_mode(), autocast(device, dtype):
            x = normalize(pixels.to(device), norm)[None]
            (patches,) = model.get_intermediate_layers(x, n=[layer], norm=True)
        feats = patches[0].float().reshape(size[0] // p, size[1] // p, -1).cpu()
        rows.append(Row(pixels, feats, size, item.path))
    return rows, loaded.weights.startswith("random")


def _file_depth(meta: dict[str, Any]) -> int | None:
    """The model's number of blocks: the ``depth`` metadata, else (older files) from the model name and overrides."""
    if meta.get("depth"):  # written by `dinov3 extract`
        return int(meta["depth"])
    try:
        from ..models import get_model_spec

        kwargs = meta.get("model_kwargs") or {}
        return int(kwargs.get("depth", get_model_spec(str(meta["model"])).kwargs()["depth"]))
    except Exception:  # an unknown model: the depth stays unknown
        return None


def _choose_layer(file: str, layers: list[int], layer_arg: int | None, depth: int | None) -> int:
    """The stored block to draw: ``--layer`` resolved against the model's depth, or the deepest in the file."""
    from ..utils.indices import resolve_index

    if layer_arg is None:
        return layers[-1]
    if layer_arg < 0 and depth is None:
        raise CLIError(f"--layer {layer_arg}: {file} does not record the model's depth; pass a block number ({layers})")
    try:
        layer = resolve_index(layer_arg, depth, "--layer") if depth is not None else layer_arg
    except ValueError as exc:
        raise CLIError(f"{exc} ({file})") from exc
    if layer not in layers:
        shown = f" (block {layer} of {depth})" if layer_arg < 0 else ""
        raise CLIError(f"--layer {layer_arg}{shown} is not in {file}: it holds blocks {layers}")
    return layer


def _video_frames(src: str, meta: dict[str, Any], wanted: list[int], size: tuple[int, int], interp: str) -> list:
    """The frames of ``src`` at ``wanted`` indices, resized to ``size`` (None where a frame cannot be decoded)."""
    from ..data.preprocess import array_to_uint8, resize_uint8
    from ..data.video import read_frames

    sampling = meta.get("sampling") or {}
    sampled = read_frames(src, frames=sampling.get("frames"), fps=sampling.get("fps"))
    by_index = {int(i): k for k, i in enumerate(sampled.indices)}
    out = []
    for i in wanted:
        k = by_index.get(int(i))
        out.append(None if k is None else resize_uint8(array_to_uint8(sampled.frames[k]), size, interp))
    return out


def _frame_images(file: str, meta: dict[str, Any], frame_indices: Any, n: int, size: tuple[int, int]):  # noqa: ANN202
    """``(images, captions)`` for the ``n`` frames of a feature file (images None where the source is missing).

    The panels are those of the model path: :func:`dinov3_integration.pca.panels.load_panel` (Pillow and numpy,
    torch's resize arithmetic) where it can, :mod:`dinov3_integration.data.preprocess` (torch) otherwise."""

    interp = (meta.get("preprocessing") or {}).get("interpolation", "bilinear")
    kind, src = meta.get("kind"), str(meta.get("source") or "")
    name = os.path.basename(src) or os.path.basename(file)
    if kind == "video":
        indices = [int(i) for i in frame_indices.tolist()] if frame_indices is not None else list(range(n))
        captions = [f"{name} frame {i}" for i in indices]
        try:
            return _video_frames(src, meta, indices, size, interp), captions
        except Exception as exc:  # the picture is still useful without the frames
            log.warning("cannot decode %s (%s): drawing the colours only", src, exc)
            return [None] * n, captions
    paths: list[str | None] = [src] if kind == "image" else [None] * n
    if kind == "clip":
        paths = [os.path.join(src, f) for f in meta.get("frame_names", [])] or paths
    images, captions = [], []
    for t in range(n):
        path = paths[t] if t < len(paths) else None
        captions.append(path or (f"{file}[{t}]" if n > 1 else file))
        image = None
        if path and os.path.isfile(path):
            try:
                image = _load_panel(path, size, interp)
            except Exception as exc:
                log.warning("cannot read %s (%s): drawing the colours only", path, exc)
        images.append(image)
    return images, captions


def _load_panel(path: str, size: tuple[int, int], interp: str) -> Any:
    """One source image as the model path shows it: uint8 ``[3, H, W]``."""
    from ..pca.panels import load_panel

    panel = load_panel(path, size, interp)
    if panel is None:  # a 16-bit or float image, or a CPU whose resize kernel only torch knows
        from ..data.preprocess import load_image, resize_uint8

        panel = resize_uint8(load_image(path), size, interp)
    return panel


def _rows_from_features(
    paths: list[str], layer_arg: int | None, failures: list[tuple[str, str]]
) -> tuple[list[Row], bool]:
    """Read ``dinov3 extract`` outputs: one row per image, or per frame of a video / clip.

    A path is a per-file output, or a shard folder (``extract --format shards``), its ``index.json`` or one shard:
    every input it holds, in :class:`~dinov3_integration.feature_shard_reader.FeatureShards` order, drawn as its
    per-file output would be. No model and no torch: :func:`dinov3_integration.pca.files.open_features` reads
    them (numpy; only the drawn block), the features stay numpy arrays; torch comes in only to show a source
    image or video beside them.
    """
    from ..feature_shards import is_shard_folder
    from ..pca.files import open_features

    rows: list[Row] = []
    random_weights = False
    for path in paths:
        if not os.path.exists(path):
            raise CLIError(f"--from-features {path!r} does not exist")
        if os.path.isdir(path) and not is_shard_folder(path):
            raise CLIError(
                f"--from-features {path!r} is a folder but not a shard folder of `extract --format shards` (no "
                "index.json, no shard-r*.safetensors); pass the .safetensors files of a per-file output"
            )
        excluded: dict[str, str] = {}
        try:
            inputs = open_features(path, excluded)
        except Exception as exc:
            failures.append((path, f"not a readable feature file ({exc})"))
            log.error("skipped %s: not a readable feature file (%s)", path, exc)
            continue
        for shard, error in excluded.items():  # its inputs are not drawn: say so, as for an unreadable file
            failures.append((shard, f"a damaged shard, its inputs are not drawn ({error})"))
            log.error("skipped %s: a damaged shard, its inputs are not drawn (%s)", shard, error)
        if not inputs:
            failures.append((path, "the shard folder holds no inputs"))
            log.error("skipped %s: the shard folder holds no inputs", path)
        for name, fh in inputs:
            random_weights |= str(fh.metadata.get("weights", "")).startswith("random")
            rows += _input_rows(name, fh, layer_arg)
    return rows, random_weights


def _input_rows(file: str, fh: Any, layer_arg: int | None) -> list[Row]:
    """The rows of one input (``fh``: a ``pca.files`` reader; ``file``: its name in messages and captions)."""
    meta = fh.metadata
    layers = sorted(int(k.split(".", 1)[1]) for k in fh.keys if k.startswith("patch."))
    if not layers:
        raise CLIError(
            f"--from-features {file}: no patch features in it (keys {fh.keys[:6]}); extract with --save patch"
        )
    layer = _choose_layer(file, layers, layer_arg, _file_depth(meta))
    patch = fh.get(f"patch.{layer}").astype("float32", copy=False)
    p = int(meta.get("patch_size", 16))
    frames = patch[None] if patch.ndim == 3 else patch  # [T, h, w, D]
    h, w = frames.shape[1:3]
    size = (h * p, w * p)
    indices = fh.get("frame_indices") if "frame_indices" in fh.keys else None
    images, captions = _frame_images(file, meta, indices, frames.shape[0], size)
    return [Row(images[t], frames[t], size, captions[t]) for t in range(frames.shape[0])]


def _one_blas_thread() -> None:
    """``--from-features``: numpy's OpenBLAS on one thread (unless ``OPENBLAS_NUM_THREADS`` is set, or numpy is
    already loaded). The PCA's products are small (``[h*w, D]`` per frame); OpenBLAS's worker threads spin on them,
    which on a busy machine made them several times slower and twice as costly in CPU time."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 pca``."""
    if args.from_features:
        _one_blas_thread()
    from ..pca import (
        RANDOM_WEIGHTS_NOTE,
        compose_picture_array,
        missing_input_panel,
        pca_colors,
        render_row_array,
        save_png,
    )

    setup_logging(verbose=getattr(args, "verbose", 0), quiet=args.quiet)
    if args.from_features and args.inputs:
        raise CLIError("give either INPUT images or --from-features files, not both")
    if not args.from_features and not args.inputs:
        raise CLIError("nothing to draw: pass image paths or --from-features FILE")
    if not args.out.lower().endswith(".png"):
        raise CLIError(f"--out {args.out!r} must be a .png file")
    failures: list[tuple[str, str]] = []
    if args.from_features:
        rows, random_weights = _rows_from_features(args.from_features, args.layer, failures)
    else:
        rows, random_weights = _compute_rows(args, failures)
    if rows:
        colors = pca_colors([r.features for r in rows], mask=args.mask, joint=args.joint)
        pictures = [
            render_row_array(
                r.image if r.image is not None else missing_input_panel(r.size), rgb, r.size, args.upsample
            )
            for r, (rgb, _) in zip(rows, colors)
        ]
        banner = RANDOM_WEIGHTS_NOTE if random_weights else None
        picture = compose_picture_array(pictures, [r.caption for r in rows], banner=banner)
        save_png(picture, args.out)
        log.info(
            "pca: wrote %s (%dx%d, %d row%s)%s",
            args.out,
            picture.shape[1],
            picture.shape[0],
            len(rows),
            "s" * (len(rows) > 1),
            ", made with RANDOM weights" if random_weights else "",
        )
    if failures:
        print(f"dinov3 pca: {len(failures)} input(s) failed and are not in the picture:", file=sys.stderr)
        for name, error in failures:
            print(f"  {name}: {error}", file=sys.stderr)
        if not rows:
            print("dinov3 pca: nothing left to draw; no picture written", file=sys.stderr)
        return 1
    return 0
