"""``dinov3 convert SRC DST --to {official,hf,safetensors,timm}``: rewrite a checkpoint in another layout."""

from __future__ import annotations

import argparse

from ._common import CLIError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint between the official, Hugging Face, timm and safetensors layouts",
        description=(
            "Read SRC (a .pth/.pt/.safetensors file or a Hugging Face model folder; with --model also a URL, an "
            "'hf-hub:org/repo' id or a timm name), check that it is one consistent DINOv3 ViT, and write it to DST "
            "in the chosen layout. 'hf' writes a folder that transformers' DINOv3ViTModel.from_pretrained loads."
        ),
    )
    p.add_argument("src", help="the checkpoint to read")
    p.add_argument("dst", help="the file (or, for --to hf, the folder) to write")
    p.add_argument(
        "--to",
        choices=["official", "hf", "safetensors", "timm"],
        default="safetensors",
        help="layout to write: 'official' (Meta's .pth keys), 'hf' (a transformers folder), 'safetensors' (official "
        "keys in safetensors), 'timm'",
    )
    p.add_argument("--model", default=None, help="registered model the weights belong to (checked strictly)")
    p.add_argument(
        "--rope-periods",
        choices=["reference", "float32"],
        default="reference",
        help="RoPE periods to add when SRC has none (Hugging Face, timm): 'reference' = the official bf16-rounded "
        "values (default), 'float32' = what transformers/timm compute",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..hub import convert_checkpoint
    from ..hub.errors import WeightsError

    try:
        out = convert_checkpoint(args.src, args.dst, to=args.to, model_name=args.model, periods=args.rope_periods)
    except (WeightsError, FileNotFoundError, FileExistsError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {out} ({args.to} layout)")
    return 0
