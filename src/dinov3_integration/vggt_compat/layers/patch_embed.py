"""VGGT's ``vggt.layers.patch_embed``: a strided-convolution patch embedding that insists on whole patches.

``PatchEmbed(img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None, flatten_embedding=True)``
maps ``[B, C, H, W]`` to ``[B, (H / p) * (W / p), D]`` (or ``[B, H / p, W / p, D]`` without flattening), keys
``proj.weight`` / ``proj.bias``. Unlike the shared :class:`dinov3_integration.layers.PatchEmbed`, which drops
trailing pixels, sides that are not multiples of the patch size are an error here (VGGT asserts it).
"""

from __future__ import annotations

from torch import Tensor

from ...layers.patch_embed import PatchEmbed as _SharedPatchEmbed
from ...layers.patch_embed import make_2tuple

__all__ = ["PatchEmbed", "make_2tuple"]


class PatchEmbed(_SharedPatchEmbed):
    """2D image to patch embedding, ``[B, C, H, W] -> [B, N, D]``; ``H`` and ``W`` must be multiples of the patch."""

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(
                f"input image size {H}x{W} is not a multiple of the patch size {ph}x{pw}; resize or crop it to "
                f"{H // ph * ph}x{W // pw * pw} or {-(-H // ph) * ph}x{-(-W // pw) * pw}"
            )
        return super().forward(x)
