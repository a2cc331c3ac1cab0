"""Fine-tuning sketch: frozen DINOv3 backbone, trainable Aggregator and a small head, synthetic data, CPU.

Task (synthetic, so it runs anywhere): for each frame of a random clip, predict the frame's mean colour from the
frame's aggregated camera token ``features[:, :, 0]`` (the camera token has to gather it from the patch tokens
through the aggregator's attention). Only the Aggregator and the head receive gradients; the loss goes down within
a few steps.

    PYTHONPATH=src python examples/finetune_aggregator.py            # tiny sizes, ~2 s
    PYTHONPATH=src python examples/finetune_aggregator.py --steps 50 --checkpointing
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dinov3_integration.integrated import DINOv3IntegratedModel

TINY_BACKBONE = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def synthetic_batch(
    generator: torch.Generator, batch: int, frames: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``[B, S, 3, H, W]`` in [0, 1] (a per-frame colour plus noise) and targets ``[B, S, 3]``."""
    colour = torch.rand(batch, frames, 3, 1, 1, generator=generator)
    noise = 0.1 * torch.rand(batch, frames, 3, size, size, generator=generator)
    clips = (0.9 * colour + noise).clamp(0, 1)
    return clips, clips.mean(dim=(-1, -2))  # [B, S, 3]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="frame side, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (saves memory)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = DINOv3IntegratedModel(
        "dinov3_vits16",
        use_aggregator=True,
        img_size=args.size,
        backbone_overrides=TINY_BACKBONE,
        aggregator_depth=2,
        output_layers=[-1],
        gradient_checkpointing=args.checkpointing,
    )
    model.freeze_backbone()
    head = nn.Sequential(nn.LayerNorm(2 * model.aggregator.embed_dim), nn.Linear(2 * model.aggregator.embed_dim, 3))
    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    frozen = sum(p.numel() for p in model.backbone.parameters())
    print(f"frozen backbone: {frozen:,} parameters; trainable aggregator + head: {sum(p.numel() for p in trainable):,}")
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))  # 5-step warm-up

    model.train()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(args.steps):
        clips, target = synthetic_batch(generator, batch=4, frames=3, size=args.size)
        camera = model(clips)["features"][:, :, 0]  # [B, S, 2C]
        loss = nn.functional.mse_loss(head(camera), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
        print(f"step {step:3d}  loss {loss.item():.5f}")
    assert all(p.grad is None for p in model.backbone.parameters()), "the backbone must stay frozen"
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"mean loss of the first 3 steps {first:.5f} -> last 3 steps {last:.5f}")
    if not last < first:
        raise SystemExit("the loss did not go down")


if __name__ == "__main__":
    main()
