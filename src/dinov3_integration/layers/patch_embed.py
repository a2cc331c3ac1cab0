"""Patch embedding: a strided convolution that turns an image into a grid of patch tokens."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn


def make_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(x, x)`` for an int, or the pair unchanged."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return x
    return (int(x), int(x))


class PatchEmbed(nn.Module):
    """2D image to patch embedding: ``[B, C, H, W] -> [B, H//p, W//p, D]`` (or ``[B, N, D]`` when flattening).

    The convolution has ``kernel_size == stride == patch_size`` and no padding, so pixels beyond the last full
    patch (right and bottom) are dropped, exactly as in the reference implementation.

    Args:
        img_size: nominal image size (only used for ``num_patches``; any size works at run time).
        patch_size: side of a square patch in pixels.
        in_chans: number of input channels.
        embed_dim: output width ``D``.
        norm_layer: optional norm applied to the tokens (the reference uses none).
        flatten_embedding: return ``[B, N, D]`` (True) or ``[B, H//p, W//p, D]`` (False, the DINOv3 default).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[..., nn.Module] | None = None,
        flatten_embedding: bool = True,
    ) -> None:
        super().__init__()
        image_hw = make_2tuple(img_size)
        patch_hw = make_2tuple(patch_size)
        self.img_size = image_hw
        self.patch_size = patch_hw
        self.patches_resolution = (image_hw[0] // patch_hw[0], image_hw[1] // patch_hw[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.flatten_embedding = flatten_embedding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_hw, stride=patch_hw)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # [B, D, H, W]
        H, W = x.size(2), x.size(3)
        x = x.flatten(2).transpose(1, 2)  # [B, HW, D]
        x = self.norm(x)
        if not self.flatten_embedding:
            x = x.reshape(-1, H, W, self.embed_dim)  # [B, H, W, D]
        return x

    def reset_parameters(self) -> None:
        """Reference init: uniform(+-sqrt(1 / (C * p * p))) for the kernel and the bias."""
        k = 1 / (self.in_chans * (self.patch_size[0] ** 2))
        nn.init.uniform_(self.proj.weight, -math.sqrt(k), math.sqrt(k))
        if self.proj.bias is not None:
            nn.init.uniform_(self.proj.bias, -math.sqrt(k), math.sqrt(k))

    def flops(self) -> float:
        """Multiply-accumulates x2 of the projection at ``img_size``."""
        ho, wo = self.patches_resolution
        return 2.0 * ho * wo * self.embed_dim * self.in_chans * self.patch_size[0] * self.patch_size[1]
