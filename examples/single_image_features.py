"""Quick start 1: DINOv3 features of a batch of single images.

Loads the bundled sample photos, resizes them, and runs ``DINOv3IntegratedModel`` on ``[B, 3, H, W]`` images with
values in [0, 1] (the model normalises them itself). Prints the CLS, storage and patch token shapes and the
requested intermediate layers.

    PYTHONPATH=src python examples/single_image_features.py            # tiny random model, CPU, ~1 s
    PYTHONPATH=src python examples/single_image_features.py --full --pretrained --size 448   # real ViT-S/16
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np
import torch
from PIL import Image

from dinov3_integration.integrated import DINOv3IntegratedModel

TINY_BACKBONE = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def load_images(size: int) -> tuple[list[str], torch.Tensor]:
    """The bundled photos as ``[B, 3, size, size]`` floats in [0, 1]."""
    folder = resources.files("dinov3_integration").joinpath("assets", "images")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".jpg"))
    batch = []
    for name in names:
        with resources.as_file(folder.joinpath(name)) as path:
            image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return names, torch.stack(batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov3_vits16", help="backbone name (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="the real architecture instead of a tiny random one")
    parser.add_argument("--pretrained", action="store_true", help="load released weights (with --full)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    overrides = None if args.full else TINY_BACKBONE
    model = DINOv3IntegratedModel(
        args.model,
        pretrained=args.pretrained and args.full,
        img_size=args.size,
        intermediate_layers=[0, -1],
        backbone_overrides=overrides,
    ).eval()
    kind = "full-size" if args.full else f"tiny random ({overrides})"
    print(f"model: {args.model}, {kind}, {sum(p.numel() for p in model.parameters()):,} parameters")

    names, images = load_images(args.size)
    print(f"input: {len(names)} images {names} -> tensor {tuple(images.shape)} in [0, 1]")
    with torch.inference_mode():
        out = model(images)
    h, w = out["patch_grid"]
    print(f"cls_token      {tuple(out['cls_token'].shape)}        one global descriptor per image")
    print(f"storage_tokens {tuple(out['storage_tokens'].shape)}    the 4 register tokens")
    print(f"patch_tokens   {tuple(out['patch_tokens'].shape)}    {h} x {w} patch grid, row-major")
    for index, layer in zip(model.intermediate_layers, out["intermediate"]):
        print(f"intermediate[block {index}] {tuple(layer.shape)}")
    if not (args.pretrained and args.full):
        print("(random weights: add --full --pretrained for meaningful similarities between the images)")
        return
    cls = torch.nn.functional.normalize(out["cls_token"], dim=-1)
    print("cosine similarity of the CLS tokens:")
    for name, row in zip(names, cls @ cls.T):
        print(f"  {name:14s} " + " ".join(f"{v:+.2f}" for v in row.tolist()))


if __name__ == "__main__":
    main()
