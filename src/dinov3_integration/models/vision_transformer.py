"""DINOv3 vision transformer, checkpoint-compatible with Meta's reference implementation.

Token layout: ``[CLS, storage_1..storage_R, patch_1..patch_N]`` with ``N = (H // p) * (W // p)`` in row-major order.
State-dict keys match the official ``.pth`` files (``cls_token``, ``storage_tokens``, ``mask_token``,
``patch_embed.proj.*``, ``rope_embed.periods``, ``blocks.N.*``, ``norm.*`` and, for the satellite/7B models,
``local_cls_norm.*``), so an official checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._logging import get_logger
from ..layers import (
    NORM_LAYERS,
    ROPE_DTYPES,
    LayerScale,
    LinearKMaskedBias,
    Mlp,
    PatchEmbed,
    RMSNorm,
    RopePositionEmbedding,
    SelfAttentionBlock,
    SwiGLUFFN,
    fastpath,
)
from ..utils.indices import resolve_layer_indices
from .hf_api import HubMixin
from .specs import SWIGLU_ALIGN
from .timm_api import TimmConventions, _check_pool
from .timm_features import PretrainedCfgMixin
from .vit_checks import check_choice, check_image_batch, check_masks, check_vit_args

log = get_logger("models")

FFN_LAYERS = {
    "mlp": Mlp,
    # the SwiGLU widths' alignment: one table, in the specs
    **{name: partial(SwiGLUFFN, align_to=align) for name, align in SWIGLU_ALIGN.items()},
}


def init_weights_vit(module: nn.Module, name: str = "") -> None:
    """Reference init: truncated normal (std 0.02) linear weights, zero biases, ``bias_mask = [1, 0, 1]``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, LinearKMaskedBias):
            module.reset_bias_mask()
    if isinstance(module, (nn.LayerNorm, LayerScale, PatchEmbed, RMSNorm)):
        module.reset_parameters()


class DinoVisionTransformer(HubMixin, TimmConventions, PretrainedCfgMixin, nn.Module):
    """The DINOv3 ViT. Keyword-only arguments and defaults are the reference constructor's.

    Args:
        img_size: nominal input size (cosmetic: RoPE has no fixed grid).
        patch_size: patch side in pixels (16 for every released model).
        in_chans: input channels.
        pos_embed_rope_*: RoPE settings (see :class:`~dinov3_integration.layers.RopePositionEmbedding`);
            ``pos_embed_rope_dtype`` is ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        embed_dim, depth, num_heads: width ``D``, number of blocks, heads.
        ffn_ratio: FFN hidden = ``int(D * ffn_ratio)`` (SwiGLU then rounds ``2/3`` of it).
        qkv_bias, ffn_bias, proj_bias: biases.
        drop_path_rate: stochastic depth rate (the same for every block, as the reference): in training each block's
            residual branches run on a random ``1 - rate`` share of the batch (the reference's subset scheme and
            random-number order; ``tests/data/reference/vit_training.safetensors``).
        layerscale_init: LayerScale init value (None: no LayerScale).
        norm_layer: ``"layernorm"`` (eps 1e-6), ``"layernormbf16"`` (eps 1e-5) or ``"rmsnorm"``.
        ffn_layer: ``"mlp"``, ``"swiglu"``, ``"swiglu32"``, ``"swiglu64"`` or ``"swiglu128"``.
        n_storage_tokens: storage (register) tokens ``R``.
        mask_k_bias: mask the key third of the qkv bias (``qkv.bias_mask`` buffer).
        untie_cls_and_patch_norms: a separate ``cls_norm`` for the CLS and storage tokens.
        untie_global_and_local_cls_norm: a ``local_cls_norm`` (training only) and split final norm calls.
        device: build on this device (``"meta"`` allocates nothing).
        num_classes, global_pool: timm's classifier settings (not in the reference): ``num_classes > 0`` adds a
            ``head`` ``Linear``; ``global_pool`` (``"token"``, ``"avg"``, ``"token+avg"``) is what ``forward`` feeds
            it (see :class:`~dinov3_integration.models.timm_api.TimmConventions`).

    Attributes:
        use_fast_paths: eager inference forwards (eval, no gradients, no hooks, not compiling) run the layers' fast
            paths (:mod:`~dinov3_integration.layers.fastpath`): bit-identical outputs. Set False on an instance to
            run the reference code (comparisons, debugging); ``DINOV3_FAST_PATHS=0`` turns them off everywhere.
        use_workspace: with the fast paths, run the blocks in a
            :class:`~dinov3_integration.layers.workspace.Workspace`: reused buffers and an in-place residual
            stream, bit-identical outputs. Set False to keep only the other fast paths.
    """

    use_fast_paths: bool = True
    use_workspace: bool = True

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        pos_embed_rope_base: float | None = 100.0,
        pos_embed_rope_min_period: float | None = None,
        pos_embed_rope_max_period: float | None = None,
        pos_embed_rope_normalize_coords: str = "separate",
        pos_embed_rope_shift_coords: float | None = None,
        pos_embed_rope_jitter_coords: float | None = None,
        pos_embed_rope_rescale_coords: float | None = None,
        pos_embed_rope_dtype: str = "bf16",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layerscale_init: float | None = None,
        norm_layer: str = "layernorm",
        ffn_layer: str = "mlp",
        ffn_bias: bool = True,
        proj_bias: bool = True,
        n_storage_tokens: int = 0,
        mask_k_bias: bool = False,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        device: torch.device | str | None = None,
        num_classes: int = 0,
        global_pool: str = "token",
        **ignored_kwargs: Any,
    ) -> None:
        """Validate the arguments, then build every submodule (long: the reference's 27 keywords, in one place)."""
        super().__init__()
        check_vit_args(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            ffn_ratio=ffn_ratio,
            drop_path_rate=drop_path_rate,
            layerscale_init=layerscale_init,
            n_storage_tokens=n_storage_tokens,
            rope={
                "base": pos_embed_rope_base,
                "min_period": pos_embed_rope_min_period,
                "max_period": pos_embed_rope_max_period,
                "shift_coords": pos_embed_rope_shift_coords,
                "jitter_coords": pos_embed_rope_jitter_coords,
                "rescale_coords": pos_embed_rope_rescale_coords,
            },
        )
        check_choice("norm_layer", norm_layer, NORM_LAYERS)
        check_choice("ffn_layer", ffn_layer, FFN_LAYERS)
        check_choice("pos_embed_rope_dtype", pos_embed_rope_dtype, ROPE_DTYPES)
        if ignored_kwargs:
            log.warning("DinoVisionTransformer ignores unknown arguments: %s", sorted(ignored_kwargs))
        norm_layer_cls = NORM_LAYERS[norm_layer]
        ffn_layer_cls = FFN_LAYERS[ffn_layer]
        self.num_features = self.embed_dim = embed_dim
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.n_storage_tokens = n_storage_tokens
        self.untie_cls_and_patch_norms = untie_cls_and_patch_norms
        self.untie_global_and_local_cls_norm = untie_global_and_local_cls_norm
        self.gradient_checkpointing = False
        log.debug(
            "building DinoVisionTransformer: embed_dim=%d depth=%d heads=%d ffn=%s(%s) patch=%d storage=%d device=%s",
            *(embed_dim, depth, num_heads, ffn_layer, ffn_ratio, patch_size, n_storage_tokens, device),
        )

        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.patch_embed = PatchEmbed(
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                embed_dim=embed_dim,
                flatten_embedding=False,
            )
            self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
            if n_storage_tokens > 0:
                self.storage_tokens = nn.Parameter(torch.empty(1, n_storage_tokens, embed_dim))
            self.rope_embed = RopePositionEmbedding(
                embed_dim=embed_dim,
                num_heads=num_heads,
                base=pos_embed_rope_base,
                min_period=pos_embed_rope_min_period,
                max_period=pos_embed_rope_max_period,
                normalize_coords=pos_embed_rope_normalize_coords,
                shift_coords=pos_embed_rope_shift_coords,
                jitter_coords=pos_embed_rope_jitter_coords,
                rescale_coords=pos_embed_rope_rescale_coords,
                dtype=ROPE_DTYPES[pos_embed_rope_dtype],
            )
            self.blocks = nn.ModuleList(
                SelfAttentionBlock(
                    dim=embed_dim,
                    num_heads=num_heads,
                    ffn_ratio=ffn_ratio,
                    qkv_bias=qkv_bias,
                    proj_bias=proj_bias,
                    ffn_bias=ffn_bias,
                    drop_path=drop_path_rate,
                    norm_layer=norm_layer_cls,
                    act_layer=nn.GELU,
                    ffn_layer=ffn_layer_cls,
                    init_values=layerscale_init,
                    mask_k_bias=mask_k_bias,
                )
                for _ in range(depth)
            )
            self.chunked_blocks = False
            self.norm = norm_layer_cls(embed_dim)
            self.cls_norm = norm_layer_cls(embed_dim) if untie_cls_and_patch_norms else None
            self.local_cls_norm = norm_layer_cls(embed_dim) if untie_global_and_local_cls_norm else None
            self.head = nn.Identity()
            self.mask_token = nn.Parameter(torch.empty(1, embed_dim))
            self.global_pool = _check_pool(global_pool)
            if num_classes:
                self.reset_classifier(num_classes)
        self.feature_info = self._feature_info()
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    # ------------------------------------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Reference random init (RoPE periods recomputed, tokens ~ N(0, 0.02), ``mask_token`` = 0)."""
        self.rope_embed._init_weights()
        nn.init.normal_(self.cls_token, std=0.02)
        if self.n_storage_tokens > 0:
            nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            init_weights_vit(module)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory when training)."""
        self.gradient_checkpointing = enabled

    # ------------------------------------------------------------------------------------------------ input
    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x, self.in_chans, self.patch_size, stacklevel=5)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, 1 + R + N, D], (H // p, W // p))``; masked patches become ``mask_token``.

        ``masks``: bool ``[B, N]`` (True: replaced by ``mask_token``). A floating-point image of another dtype
        than the model (float64, float16) is cast to the patch embedding's dtype, as ``transformers`` does.
        """
        self._check_input(x)
        weight_dtype = self.patch_embed.proj.weight.dtype
        if x.dtype != weight_dtype:
            x = x.to(weight_dtype)
        x = self.patch_embed(x)  # [B, h, w, D]
        B, H, W, _ = x.shape
        x = x.flatten(1, 2)  # [B, N, D]
        if masks is not None:
            check_masks(masks, B, (H, W))
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
            cls_token = self.cls_token
        else:
            cls_token = self.cls_token + 0 * self.mask_token
        if self.n_storage_tokens > 0:
            storage_tokens = self.storage_tokens
        else:
            storage_tokens = cls_token.new_empty(1, 0, cls_token.shape[-1])
        x = torch.cat([cls_token.expand(B, -1, -1), storage_tokens.expand(B, -1, -1), x], dim=1)
        return x, (H, W)

    def _fast_paths(self) -> AbstractContextManager[fastpath.Plan]:
        """Decide the fast paths once for this forward (:func:`~dinov3_integration.layers.fastpath.model_scope`).

        In eval mode with gradients off, outside ``torch.compile`` and with no hook anywhere in the model (a hook
        on a block could keep its output, which later blocks would then overwrite), the blocks reuse one buffer per
        role for their large temporaries and update the token tensor in place: bit-identical outputs, far fewer
        allocations and page faults (benchmarks/README.md).
        """
        return fastpath.model_scope(self, enabled=self.use_fast_paths, workspace=self.use_workspace)

    def _run_block(self, blk: nn.Module, x: Any, rope: Any) -> Any:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    # ------------------------------------------------------------------------------------------------ forward
    def forward_features_list(self, x_list: list[Tensor], masks_list: list[Tensor | None]) -> list[dict[str, Any]]:
        """Process several image batches (e.g. crops of different sizes) block by block; one dict per batch."""
        if len(x_list) != len(masks_list):
            raise ValueError(f"got {len(x_list)} image batches but {len(masks_list)} masks")
        xs, grids = [], []
        for t_x, t_masks in zip(x_list, masks_list):
            t2_x, hw = self.prepare_tokens_with_masks(t_x, t_masks)
            xs.append(t2_x)
            grids.append(hw)
        # In training the RoPE augmentations draw new random coordinates for every block (as the reference);
        # in eval the tables are deterministic, so they are fetched once per forward instead of once per block
        # (and under torch.compile one table computation in the graph).
        ropes = None if self.training else [self.rope_embed(H=H, W=W) for H, W in grids]
        with self._fast_paths() as plan:
            if (ws := plan.workspace) is not None:
                xs = [ws.own(t) for t in xs]  # fresh token tensors: the blocks add their branches in place
            for blk in self.blocks:
                block_ropes = ropes if ropes is not None else [self.rope_embed(H=H, W=W) for H, W in grids]
                xs = self._run_block(blk, xs, block_ropes)  # lists, as the reference (hooks see lists)
        return [self._output_dict(x, masks, idx) for idx, (x, masks) in enumerate(zip(xs, masks_list))]

    def _output_dict(self, x: Tensor, masks: Tensor | None, idx: int) -> dict[str, Any]:
        R1 = self.n_storage_tokens + 1
        if self.untie_cls_and_patch_norms or self.untie_global_and_local_cls_norm:
            if self.untie_global_and_local_cls_norm and self.training and idx == 1:
                x_norm_cls_reg = self.local_cls_norm(x[:, :R1])
            elif self.untie_cls_and_patch_norms:
                x_norm_cls_reg = self.cls_norm(x[:, :R1])
            else:
                x_norm_cls_reg = self.norm(x[:, :R1])
            x_norm_patch = self.norm(x[:, R1:])
        else:
            x_norm = self.norm(x)
            x_norm_cls_reg = x_norm[:, :R1]
            x_norm_patch = x_norm[:, R1:]
        return {
            "x_norm_clstoken": x_norm_cls_reg[:, 0],
            "x_storage_tokens": x_norm_cls_reg[:, 1:],
            "x_norm_patchtokens": x_norm_patch,
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(
        self, x: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Run the model on ``[B, 3, H, W]`` normalised images (``dinov3_integration.transforms.make_transform(model)``)
        and return the reference dict.

        Returns:
            ``x_norm_clstoken`` ``[B, D]``, ``x_storage_tokens`` ``[B, R, D]`` (normed), ``x_norm_patchtokens``
            ``[B, N, D]``, ``x_prenorm`` ``[B, 1 + R + N, D]`` (last block output, before the norm) and ``masks``
            (the argument, unchanged). A list of tensors (with a list of masks or None) gives a list of dicts.
        """
        if isinstance(x, Tensor):
            return self.forward_features_list([x], [masks])[0]
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"expected an image batch [B, 3, H, W] or a list of them, got {type(x).__name__}")
        if masks is None:
            masks = [None] * len(x)
        elif not isinstance(masks, (list, tuple)):
            raise TypeError("with a list of image batches, pass masks as a list too (one bool [B, N] or None each)")
        return self.forward_features_list(list(x), list(masks))

    def forward(self, *args: Any, is_training: bool = False, **kwargs: Any) -> Tensor | dict[str, Any] | list:
        """``head(x_norm_clstoken)`` (``[B, D]`` with the identity head); ``is_training=True`` returns the dict.

        With ``global_pool="avg"`` / ``"token+avg"`` the head gets that pooling instead (:meth:`forward_head`).
        """
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        if isinstance(ret, list):
            return [self.forward_head(r) for r in ret]
        return self.forward_head(ret)

    # ------------------------------------------------------------------------------------------------ layers
    def _block_indices(self, n: int | Sequence[int]) -> list[int]:
        """``n`` (an int: the last ``n`` blocks; a sequence: block indices) as sorted block indices.

        Parsed by :func:`~dinov3_integration.utils.indices.resolve_layer_indices` (the one rule): out of range,
        empty, ``bool`` and non-integral values raise ``ValueError``; outputs come in block order.
        """
        return resolve_layer_indices(n, len(self.blocks), what="n", unit="blocks")

    def _get_intermediate_layers_not_chunked(self, x: Tensor, n: int | Sequence[int] = 1) -> list[Tensor]:
        x, (H, W) = self.prepare_tokens_with_masks(x)
        wanted = self._block_indices(n)
        last = max(wanted)
        outputs: dict[int, Tensor] = {}
        rope = None if self.training else self.rope_embed(H=H, W=W)  # once per forward in eval (see above)
        with self._fast_paths() as plan:
            if (ws := plan.workspace) is not None:
                ws.own(x)
            for i, blk in enumerate(self.blocks[: last + 1]):
                x = self._run_block(blk, x, rope if rope is not None else self.rope_embed(H=H, W=W))
                if i in wanted:  # later blocks update an owned x in place: keep a copy
                    outputs[i] = x.clone() if ws is not None and ws.owns(x) and i != last else x
        return [outputs[i] for i in wanted]

    def get_intermediate_layers(
        self,
        x: Tensor,
        *,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of chosen blocks.

        Args:
            x: ``[B, 3, H, W]``.
            n: an int takes the last ``n`` blocks; a sequence gives block indices (0-based; negative allowed,
                counted from the end). Outputs come in block order, as in the reference.
            reshape: patch tokens as ``[B, D, H // p, W // p]`` instead of ``[B, N, D]``.
            return_class_token: also return the CLS token ``[B, D]`` of each layer.
            return_extra_tokens: also return the storage tokens ``[B, R, D]`` of each layer.
            norm: apply the final norm to each output.

        Returns:
            A tuple over layers of ``patches``, ``(patches, cls)``, ``(patches, storage)`` or
            ``(patches, cls, storage)``.
        """
        outputs = self._get_intermediate_layers_not_chunked(x, n)
        R1 = self.n_storage_tokens + 1
        if norm:
            normed = []
            for out in outputs:
                if self.untie_cls_and_patch_norms:
                    normed.append(torch.cat((self.cls_norm(out[:, :R1]), self.norm(out[:, R1:])), dim=1))
                else:
                    normed.append(self.norm(out))
            outputs = normed
        class_tokens = [out[:, 0] for out in outputs]
        extra_tokens = [out[:, 1:R1] for out in outputs]
        outputs = [out[:, R1:] for out in outputs]
        if reshape:
            B, _, h, w = x.shape
            p = self.patch_size
            outputs = [out.reshape(B, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        if return_class_token and return_extra_tokens:
            return tuple(zip(outputs, class_tokens, extra_tokens))
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        if return_extra_tokens:
            return tuple(zip(outputs, extra_tokens))
        return tuple(outputs)
