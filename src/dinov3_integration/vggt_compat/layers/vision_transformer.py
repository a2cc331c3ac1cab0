"""VGGT's copy of DINOv2's ViT (``vggt.layers.vision_transformer``): learned position embedding plus registers.

This is the patch embedding of VGGT-1B (``vit_large`` with ``img_size=518, patch_size=14, num_register_tokens=4,
interpolate_antialias=True, interpolate_offset=0.0, block_chunks=0, init_values=1.0``). State-dict keys are
VGGT's: ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``, ``patch_embed.proj.*``,
``blocks.N.*`` (``blocks.K.N.*`` with ``block_chunks > 0``) and ``norm.*``.

Token layout after :meth:`DinoV2VisionTransformer.prepare_tokens_with_masks`: ``[cls, reg x R, patches]``; the
position embedding is added to cls and patches only, before the registers are inserted.

Differences from VGGT: the factories accept overrides of their architecture arguments (``vit_large(depth=2)``);
gradient checkpointing follows VGGT (every block while ``.training``) unless set explicitly with
:meth:`DinoV2VisionTransformer.set_gradient_checkpointing`; ``get_intermediate_layers`` refuses out-of-range indices
(:mod:`dinov3_integration.utils.indices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...utils.indices import resolve_layer_indices
from .attention import MemEffAttention
from .block import NestedTensorBlock
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .swiglu_ffn import SwiGLUFFNFused

__all__ = [
    "BlockChunk",
    "DinoV2VisionTransformer",
    "DinoVisionTransformer",
    "init_weights_vit_timm",
    "named_apply",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
]


def named_apply(
    fn: Callable[..., None], module: nn.Module, name: str = "", depth_first: bool = True, include_root: bool = False
) -> nn.Module:
    """Call ``fn(module=..., name=...)`` on every submodule (children before parents when ``depth_first``)."""
    if not depth_first and include_root:
        fn(module=module, name=name)
    for child_name, child in module.named_children():
        child_name = f"{name}.{child_name}" if name else child_name
        named_apply(fn=fn, module=child, name=child_name, depth_first=depth_first, include_root=True)
    if depth_first and include_root:
        fn(module=module, name=name)
    return module


def init_weights_vit_timm(module: nn.Module, name: str = "") -> None:
    """timm's ViT init: truncated normal (std 0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class BlockChunk(nn.ModuleList):
    """A run of blocks applied in sequence (``[B, N, C] -> [B, N, C]``); keys ``blocks.K.N.*``."""

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            x = block(x)
        return x


def _identity_ffn(*args: Any, **kwargs: Any) -> nn.Module:
    return nn.Identity()


_FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": Mlp,
    "swiglu": SwiGLUFFNFused,
    "swiglufused": SwiGLUFFNFused,
    "identity": _identity_ffn,
}


class DinoV2VisionTransformer(nn.Module):
    """DINOv2 ViT with a learned, interpolated position embedding and optional register tokens.

    Args:
        img_size: training image side; the position embedding covers ``(img_size / patch_size) ** 2`` patches and is
            resampled bicubically for other input sizes.
        patch_size: patch side ``p`` (input sides must be multiples of it).
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio: width ``C``, blocks, heads, MLP ratio.
        qkv_bias, ffn_bias, proj_bias: biases.
        drop_path_rate: stochastic depth, linearly increasing over the blocks unless ``drop_path_uniform``.
        init_values: LayerScale init (None: no LayerScale).
        embed_layer: patch embedding class.
        act_layer: MLP activation.
        block_fn: block class.
        ffn_layer: ``"mlp"``, ``"swiglu"``/``"swiglufused"`` (:class:`SwiGLUFFNFused`) or ``"identity"``.
        block_chunks: 0 for a flat ``blocks`` list, K > 0 to group the blocks into K chunks (FSDP wrapping).
        num_register_tokens: register tokens ``R``.
        interpolate_antialias: antialias in the bicubic resampling of the position embedding.
        interpolate_offset: 0 resamples to the exact grid (``size=``); otherwise DINOv2's ``scale_factor`` with
            this offset.
        qk_norm: per-head q/k LayerNorm in the blocks (False in DINOv2).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = NestedTensorBlock,
        ffn_layer: str = "mlp",
        block_chunks: int = 1,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        qk_norm: bool = False,
    ) -> None:
        """Build every submodule as VGGT's DINOv2 ViT does (long: its keywords and key layout, in one place)."""
        super().__init__()
        if ffn_layer not in _FFN_LAYERS:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; choose one of {sorted(_FFN_LAYERS)}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.use_reentrant = False
        self.gradient_checkpointing: bool | None = None  # None: VGGT's rule, checkpoint while training

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )

        if drop_path_uniform:
            dpr = [drop_path_rate] * depth
        else:
            dpr = [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        blocks = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=_FFN_LAYERS[ffn_layer],
                init_values=init_values,
                qk_norm=qk_norm,
            )
            for i in range(depth)
        ]
        if block_chunks > 0:
            self.chunked_blocks = True
            chunksize = depth // block_chunks
            chunked = [[nn.Identity()] * i + blocks[i : i + chunksize] for i in range(0, depth, chunksize)]
            self.blocks = nn.ModuleList([BlockChunk(c) for c in chunked])
        else:
            self.chunked_blocks = False
            self.blocks = nn.ModuleList(blocks)

        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """DINOv2 init: ``pos_embed`` ~ trunc N(0, 0.02), cls and registers ~ N(0, 1e-6), timm init for Linears."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        named_apply(init_weights_vit_timm, self)

    def set_gradient_checkpointing(self, enabled: bool | None = True) -> None:
        """Recompute each block in the backward pass: ``True`` always, ``False`` never, ``None`` (the default)
        while ``.training``, as VGGT. Only while autograd records; results do not change."""
        self.gradient_checkpointing = None if enabled is None else bool(enabled)

    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embedding ``[1, 1 + N, C]`` for an ``height x width`` image whose tokens are ``x`` ``[B, 1 + N, C]``.

        The stored grid is returned as is when it already has ``N`` patches and the image is square; otherwise the
        patch part is resampled bicubically in float32 and the result is cast to ``x.dtype``.
        """
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        h0, w0 = height // self.patch_size, width // self.patch_size
        M = int(math.sqrt(N))
        if M * M != N:
            raise ValueError(f"pos_embed must hold a square grid of patches, got {N}")
        kwargs: dict[str, Any]
        if self.interpolate_offset:
            # DINOv2's historical offset: scale factors slightly above the exact ratio.
            kwargs = {
                "scale_factor": (float(h0 + self.interpolate_offset) / M, float(w0 + self.interpolate_offset) / M)
            }
        else:
            kwargs = {"size": (h0, w0)}
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),  # [1, C, M, M]
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        if tuple(patch_pos_embed.shape[-2:]) != (h0, w0):
            raise RuntimeError(
                f"position embedding resampled to {tuple(patch_pos_embed.shape[-2:])}, wanted {(h0, w0)}"
            )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)  # [1, h0 * w0, C]
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """``[B, 3, H, W] -> [B, 1 + R + N, C]``; ``masks`` (``[B, N]`` bool) replaces patches by ``mask_token``."""
        _, _, height, width = x.shape
        x = self.patch_embed(x)  # [B, N, C]
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, height, width)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def _run_block(self, block: nn.Module, x: Any) -> Any:
        active = self.training if self.gradient_checkpointing is None else self.gradient_checkpointing
        if active and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=self.use_reentrant)
        return block(x)

    def _output_dict(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features_list(self, x_list: list[Tensor], masks_list: list[Tensor | None]) -> list[dict[str, Any]]:
        """:meth:`forward_features` for several image batches (e.g. of different sizes); one dict per batch."""
        xs = [self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list)]
        for block in self.blocks:
            xs = [self._run_block(block, t) for t in xs]
        return [self._output_dict(x, m) for x, m in zip(xs, masks_list)]

    def forward_features(
        self, x: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Run the ViT on ``[B, 3, H, W]`` (normalised images).

        Returns:
            ``x_norm_clstoken`` ``[B, C]``, ``x_norm_regtokens`` ``[B, R, C]``, ``x_norm_patchtokens``
            ``[B, (H / p) * (W / p), C]`` (row-major), ``x_prenorm`` ``[B, 1 + R + N, C]`` and ``masks``.
        """
        if isinstance(x, list):
            return self.forward_features_list(x, masks if masks is not None else [None] * len(x))
        x = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self._output_dict(x, masks)

    def _intermediate_outputs(self, x: Tensor, n: int | Sequence[int]) -> list[Tensor]:
        x = self.prepare_tokens_with_masks(x)
        flat: list[nn.Module] = []
        for block in self.blocks:
            if self.chunked_blocks:
                flat.extend(b for b in block if not isinstance(b, nn.Identity))
            else:
                flat.append(block)
        total = len(flat)
        wanted = set(resolve_layer_indices(n, total, what="n"))
        outputs = []
        for i, block in enumerate(flat):
            x = self._run_block(block, x)
            if i in wanted:
                outputs.append(x)
        if len(outputs) != len(wanted):
            raise ValueError(f"only {len(outputs)} of the {len(wanted)} requested blocks exist (depth {total})")
        return outputs

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Patch tokens after some blocks: the last ``n`` (an int) or the listed block indices.

        Each entry is ``[B, N, C]`` (``[B, C, H / p, W / p]`` with ``reshape``), paired with the class token
        ``[B, C]`` when ``return_class_token``.
        """
        outputs = self._intermediate_outputs(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        outputs = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            B, _, height, width = x.shape
            p = self.patch_size
            outputs = [out.reshape(B, height // p, width // p, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def forward(self, *args: Any, is_training: bool = True, **kwargs: Any) -> Any:
        """:meth:`forward_features`'s dict (VGGT's default ``is_training=True``), else ``head(x_norm_clstoken)``."""
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        return self.head(ret["x_norm_clstoken"])


def _vit(
    arch: dict[str, Any], patch_size: int, num_register_tokens: int, kwargs: dict[str, Any]
) -> DinoV2VisionTransformer:
    defaults = {"block_fn": partial(NestedTensorBlock, attn_class=MemEffAttention), "mlp_ratio": 4, **arch}
    return DinoV2VisionTransformer(
        patch_size=patch_size, num_register_tokens=num_register_tokens, **{**defaults, **kwargs}
    )


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoV2VisionTransformer:
    """ViT-S: width 384, 12 blocks, 6 heads (keyword arguments override any of these)."""
    return _vit({"embed_dim": 384, "depth": 12, "num_heads": 6}, patch_size, num_register_tokens, kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoV2VisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return _vit({"embed_dim": 768, "depth": 12, "num_heads": 12}, patch_size, num_register_tokens, kwargs)


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoV2VisionTransformer:
    """ViT-L: width 1024, 24 blocks, 16 heads (VGGT-1B's patch embedding)."""
    return _vit({"embed_dim": 1024, "depth": 24, "num_heads": 16}, patch_size, num_register_tokens, kwargs)


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoV2VisionTransformer:
    """ViT-g/2: width 1536, 40 blocks, 24 heads."""
    return _vit({"embed_dim": 1536, "depth": 40, "num_heads": 24}, patch_size, num_register_tokens, kwargs)


DinoVisionTransformer = DinoV2VisionTransformer
"""VGGT's public name (``vggt.layers.vision_transformer.DinoVisionTransformer``) of :class:`DinoV2VisionTransformer`;
distinct from DINOv3's :class:`dinov3_integration.models.DinoVisionTransformer`."""
