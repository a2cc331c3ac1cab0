"""``dinov3 export MODEL OUT --to {onnx,torch-export}``: a deployable ViT with dynamic batch and image size."""

from __future__ import annotations

import argparse

from ._common import CLIError, parse_model_kwargs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a ViT to ONNX or torch.export (dynamic batch and image size)",
        description=(
            "Build MODEL (with --weights, or random weights) and write OUT: an ONNX file (input 'pixel_values' "
            "[B, 3, H, W], normalised; outputs 'cls_token' [B, D] and 'patch_tokens' [B, N, D]) or a torch.export "
            ".pt2 program. Batch, H and W are dynamic (H, W multiples of the patch size): the RoPE tables are "
            "computed from the runtime grid. ONNX needs the 'export' extra (onnx, onnxscript; onnxruntime to check)."
        ),
    )
    p.add_argument("model", help="registered model name (dinov3 models)")
    p.add_argument("out", help="file to write (.onnx or .pt2)")
    p.add_argument("--to", choices=["onnx", "torch-export"], default="onnx", help="format to write")
    p.add_argument("--weights", default=None, help="weights: a tag, file, folder, URL or hf-hub: id")
    p.add_argument("--model-kwargs", action="append", metavar="KEY=VALUE", help="architecture overrides")
    p.add_argument("--example-size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"), help="tracing size")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..factory import create_model
    from ..hub.errors import WeightsError

    overrides = parse_model_kwargs(args.model_kwargs)
    try:
        model = create_model(args.model, weights=args.weights, **overrides)
        out = export_model(model, args.out, to=args.to, example_size=tuple(args.example_size), opset=args.opset)
    except (WeightsError, FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {out} ({args.to}; dynamic batch, height and width)")
    return 0
