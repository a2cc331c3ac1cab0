"""Quick start 2: video clips through the VGGT-style Aggregator.

Stacks the bundled 4-frame sequence into a clip ``[B, S, 3, H, W]`` (values in [0, 1]) and runs a
``DINOv3IntegratedModel`` with ``use_aggregator=True``: the DINOv3 backbone embeds every frame once, then frame and
global attention alternate. Prints the aggregated features ``[B, S, P, 2C]``, which layers were kept, and the
per-frame backbone CLS tokens.

    PYTHONPATH=src python examples/video_aggregator.py                 # tiny random model, CPU, ~1 s
    PYTHONPATH=src python examples/video_aggregator.py --full --size 224 --output-layers 4 11 17 23
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np
import torch
from PIL import Image

from dinov3_integration.integrated import DINOv3IntegratedModel

TINY_BACKBONE = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def load_clip(size: int) -> torch.Tensor:
    """The bundled frame sequence as ``[1, S, 3, size, size]`` in [0, 1]."""
    folder = resources.files("dinov3_integration").joinpath("assets", "sequence")
    frames = []
    for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".jpg")):
        with resources.as_file(folder.joinpath(name)) as path:
            image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        frames.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(frames)[None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov3_vits16", help="backbone name (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="frame side, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="real sizes (24 aggregator layers) instead of tiny ones")
    parser.add_argument("--output-layers", type=int, nargs="+", default=[-1], help="aggregator layers to keep")
    parser.add_argument("--frames-chunk-size", type=int, default=2, help="frames per backbone call")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = DINOv3IntegratedModel(
        args.model,
        use_aggregator=True,
        img_size=args.size,
        backbone_overrides=None if args.full else TINY_BACKBONE,
        aggregator_depth=24 if args.full else 2,
        output_layers=args.output_layers,
        frames_chunk_size=args.frames_chunk_size,
    ).eval()
    print(
        f"model: {args.model} + aggregator (depth {model.aggregator.depth}, width {model.aggregator.embed_dim}), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    clip = load_clip(args.size)
    print(f"input clip {tuple(clip.shape)} = [B, S, 3, H, W] in [0, 1]; frame 0 is the reference frame")
    with torch.inference_mode():
        out = model(clip)
    kept = [i for i, t in enumerate(out["output_list"]) if t is not None]
    start = out["patch_start_idx"]
    print(f"features       {tuple(out['features'].shape)} = [B, S, P, 2C] (deepest kept layer)")
    print(f"output_list    {len(out['output_list'])} layers, kept {kept}, the rest None (absolute indexing works)")
    print(f"tokens/frame   1 camera + {start - 1} registers + {out['patch_grid'][0]}x{out['patch_grid'][1]} patches")
    print(f"cls_token      {tuple(out['cls_token'].shape)} = backbone CLS per frame (same pass, no second run)")
    camera = out["features"][0, :, 0]  # [S, 2C]: the camera token of each frame
    print("camera-token norm per frame:", " ".join(f"{v:.3f}" for v in camera.norm(dim=-1).tolist()))


if __name__ == "__main__":
    main()
