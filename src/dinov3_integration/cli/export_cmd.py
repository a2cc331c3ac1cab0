"""``dinov3 export MODEL OUT --to {onnx,torch-export}``: a deployable ViT or Aggregator with dynamic shapes.

MODEL is a registered ViT name, a folder written by ``save_pretrained`` (ViT, Aggregator or integrated model) or a
YAML configuration of the integrated model. ``--aggregate`` puts the named ViT behind a VGGT-style Aggregator, with
the options (``--aggregator-kwargs``, ``--aggregator-weights``, ``--random-aggregator``) of ``dinov3 extract``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import CLIError, parse_model_kwargs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a ViT or an Aggregator to ONNX or torch.export (dynamic batch, frames and image size)",
        description=(
            "Write OUT: an ONNX file or a torch.export .pt2 program. A ViT takes 'pixel_values' [B, 3, H, W] "
            "(normalised) and returns 'cls_token' [B, D] and 'patch_tokens' [B, N, D]. An Aggregator takes 'images' "
            "[B, S, 3, H, W] in [0, 1] and returns 'aggregated.L' [B, S, P, 2C] for each kept layer L and "
            "'patch_start_idx' (int64). Batch, frames, H and W are dynamic (H, W multiples of the patch size): the "
            "RoPE tables and positions are computed from the runtime grid. ONNX needs the 'export' extra (onnx, "
            "onnxscript; onnxruntime to check)."
        ),
    )
    p.add_argument(
        "model",
        help="registered model name (dinov3 models; random weights without --weights), a save_pretrained folder "
        "(ViT, Aggregator or DINOv3IntegratedModel) or an integrated-model YAML configuration",
    )
    p.add_argument("out", help="file to write (.onnx or .pt2)")
    p.add_argument("--to", choices=["onnx", "torch-export"], default="onnx", help="format to write")
    p.add_argument("--weights", default=None, help="weights of a named model: a tag, file, folder, URL or hf-hub: id")
    p.add_argument("--model-kwargs", action="append", metavar="KEY=VALUE", help="architecture overrides")
    a = p.add_argument_group("aggregator (a named model as the patch embedding of a VGGT-style Aggregator)")
    a.add_argument("--aggregate", action="store_true", help="export the Aggregator with MODEL as its patch embedding")
    a.add_argument(
        "--aggregator-kwargs", action="append", metavar="KEY=VALUE[,KEY=VALUE]", help="Aggregator constructor overrides"
    )
    a.add_argument("--aggregator-weights", default=None, help="VGGT-format state dict for the Aggregator's blocks")
    a.add_argument("--random-aggregator", action="store_true", help="random Aggregator blocks (seeded by --seed)")
    a.add_argument("--seed", type=int, default=0, help="seed of --random-aggregator")
    a.add_argument("--layers", default=None, help="Aggregator layers to return, e.g. -1 or 4,11,17,23 (default: all)")
    a.add_argument("--frames", type=int, default=3, help="frames of the tracing example (any count works after)")
    p.add_argument("--example-size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"), help="tracing size")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.set_defaults(func=run)
    return p


def _model(args: argparse.Namespace) -> Any:
    """The module to export, from MODEL and the options (the work is the library's)."""
    from ..export import load_saved
    from ..factory import create_model

    source = Path(args.model).expanduser()
    if source.is_dir() or source.suffix in (".yaml", ".yml"):
        if args.weights or args.model_kwargs or args.aggregate:
            raise CLIError(f"{args.model} is a saved model or configuration: --weights, --model-kwargs and --aggregate "
                           "apply to a model name")  # fmt: skip
        return load_saved(source)
    model = create_model(args.model, weights=args.weights, **parse_model_kwargs(args.model_kwargs))
    if not args.aggregate:
        if args.aggregator_kwargs or args.aggregator_weights or args.random_aggregator:
            raise CLIError("--aggregator-kwargs, --aggregator-weights and --random-aggregator need --aggregate")
        return model
    if not (args.aggregator_weights or args.random_aggregator):
        raise CLIError("--aggregate needs --aggregator-weights (a VGGT-format state dict) or --random-aggregator")
    import torch

    from ..hub import load_state_dict_file
    from ..integrated import build_aggregator, load_aggregator_checkpoint

    overrides = parse_model_kwargs(args.aggregator_kwargs, option="--aggregator-kwargs")
    on_meta = {"device": "meta"} if args.aggregator_weights else {}  # weights: no random init (an override wins)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        aggregator = build_aggregator(model, **{**on_meta, **overrides})
    if args.aggregator_weights:
        state = load_state_dict_file(args.aggregator_weights, unwrap=False)
        load_aggregator_checkpoint(aggregator, state, seed=args.seed)
    return aggregator.eval()


def run(args: argparse.Namespace) -> int:
    from ..export import ExportableAggregator, export_model, exportable
    from ..hub.errors import WeightsError
    from ..utils.indices import parse_index_list

    try:
        layers = None if args.layers is None else parse_index_list(args.layers)
        wrapper = exportable(_model(args), layers=layers)
        out = export_model(
            wrapper, args.out, to=args.to, example_size=tuple(args.example_size), frames=args.frames, opset=args.opset
        )
    except (WeightsError, FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    if isinstance(wrapper, ExportableAggregator):
        what = f"Aggregator, outputs {', '.join(wrapper.output_names)}; dynamic batch, frames, height and width"
    else:
        what = "ViT; dynamic batch, height and width"
    print(f"wrote {out} ({args.to}; {what})")
    return 0
