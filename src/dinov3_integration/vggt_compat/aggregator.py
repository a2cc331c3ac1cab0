"""VGGT's multi-frame Aggregator with a selectable patch embedding (conv, DINOv2-with-registers, or any DINOv3 ViT).

The module follows VGGT's ``vggt.models.aggregator.Aggregator`` (constructor arguments and defaults, forward
contract, state-dict keys ``camera_token``, ``register_token``, ``patch_embed.*``, ``frame_blocks.N.*``,
``global_blocks.N.*``), so a VGGT checkpoint's ``aggregator.*`` weights load with ``strict=True`` and give the
same outputs. Per frame the token sequence is ``[camera (1), registers (R), patches (h * w, row-major)]``; frame
0 of every sequence is the reference frame (its own camera/register slot). Blocks alternate between attention
inside each frame (``[B * S, P, C]``) and across all frames of a sequence (``[B, S * P, C]``); layer ``i``'s
output is ``cat(frame_i, global_i)`` on the channels, ``[B, S, P, 2C]``.

Beyond VGGT (none of which changes a VGGT output):

- ``output_layers``: keep only the layers a caller reads; the others are never stored. ``"all"`` (default)
  returns every layer like VGGT; a list returns those layers in the requested order (``pad_output_list=True``
  instead returns ``depth`` entries with ``None`` at the layers not kept, so VGGT's heads can index absolutely).
- ``frames_chunk_size``: run the patch embedding on this many frames at a time (normalisation included).
- ``gradient_checkpointing``: an explicit switch (VGGT silently checkpoints whenever ``.training``).
- ``rope_freq <= 0`` disables RoPE (it crashes in VGGT).
- The module cast to bfloat16 with bfloat16 inputs works, and so does autocast; the RoPE tables need no host
  synchronisation; outputs are written straight into the concatenated ``[B, S, P, 2C]`` tensors.
- DINOv3 patch embeddings (every ``create_model`` name, with or without ``_reg``): the backbone's
  ``x_norm_patchtokens`` feed the blocks, its patch size sets the RoPE grid, its normalisation constants
  (ImageNet, or satellite for ``sat493m`` weights) are used, and a ``patch_proj`` Linear is added only when its
  width differs from ``embed_dim``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._logging import get_logger
from .layers.block import Block
from .layers.patch_embed import PatchEmbed
from .layers.vision_transformer import vit_base, vit_giant2, vit_large, vit_small
from .rope import PositionGetter, RotaryPositionEmbedding2D

__all__ = ["Aggregator", "LoadResult", "StateDictMismatchError", "extract_aggregator_state_dict"]

log = get_logger("vggt_compat")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DINOV2_PATCH_EMBEDS: dict[str, Callable[..., nn.Module]] = {
    "dinov2_vitl14_reg": vit_large,
    "dinov2_vitb14_reg": vit_base,
    "dinov2_vits14_reg": vit_small,
    "dinov2_vitg2_reg": vit_giant2,
}
"""VGGT's DINOv2-with-registers patch embeddings (name -> factory)."""

AA_TYPES = ("frame", "global")
_RANGE_SLACK = 0.25  # inputs beyond [-0.25, 1.25] are "far outside [0, 1]"
_MAX_LISTED_KEYS = 40


class StateDictMismatchError(RuntimeError):
    """A checkpoint does not fit the Aggregator; ``missing_keys``, ``unexpected_keys`` and ``mismatched`` list why."""

    def __init__(
        self,
        message: str,
        missing_keys: list[str],
        unexpected_keys: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.mismatched = mismatched


class LoadResult(NamedTuple):
    """What :meth:`Aggregator.load_vggt_state_dict` did (keys are relative to the Aggregator)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    ignored_keys: list[str]


class Aggregator(nn.Module):
    """Alternating frame/global attention over a batch of image sequences.

    Args:
        img_size: nominal image side; only used by the patch embedding (the DINOv2 position-embedding grid is
            ``img_size / patch_size`` per side). Inputs of other sizes work.
        patch_size: patch side for ``"conv"`` and DINOv2 embeddings and the RoPE grid. A DINOv3 backbone uses its
            own patch size (16), whatever is passed here.
        embed_dim: token width ``C`` of the alternating blocks; outputs have ``2C`` channels.
        depth: number of frame blocks, and of global blocks.
        num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, qk_norm, init_values: block settings.
        num_register_tokens: registers ``R`` per frame (and the DINOv2 backbone's own register count).
        block_fn: block class, called with VGGT's keyword arguments and ``rope=``.
        patch_embed: ``"conv"`` (a strided convolution), a VGGT DINOv2 name (``"dinov2_vitl14_reg"``,
            ``"dinov2_vitb14_reg"``, ``"dinov2_vits14_reg"``, ``"dinov2_vitg2_reg"``), any DINOv3 model name
            (``"dinov3_vitl16"``, ``"dinov3_vitl16_reg"``, ...), or a ready ``nn.Module`` mapping
            ``[N, 3, H, W]`` to patch tokens ``[N, h * w, D]`` (or a dict with ``"x_norm_patchtokens"``).
        aa_order: order of the two attention types in each step; a permutation of ``["frame", "global"]``.
        aa_block_size: consecutive blocks of one type per step (``depth`` must be divisible by it).
        rope_freq: RoPE base frequency; ``<= 0`` disables RoPE.
        n_storage_tokens: DINOv3's name for ``num_register_tokens`` (give one of the two).
        patch_embed_config: extra arguments for the patch embedding: overrides of the DINOv2 factory's
            arguments (``{"depth": 2, "embed_dim": 64, "num_heads": 4}``) or ``create_model`` overrides for DINOv3
            (``{"depth": 1}``, or ``{"weights": "sat493m"}`` for the satellite architecture and statistics).
        patch_embed_weights: DINOv3 only: load pretrained backbone weights with
            ``create_model(name, pretrained=True, weights=patch_embed_weights)`` (``True`` for the default
            weights, a tag such as ``"lvd1689m"`` / ``"sat493m"``, a file or a hub id).
        output_layers: layers to return: ``"all"`` (VGGT's behaviour), an index, or a list of indices
            (negative allowed). Also settable per call in :meth:`forward`.
        pad_output_list: with a list of ``output_layers``, return ``depth`` entries with ``None`` for the layers
            not kept (absolute indexing still works) instead of the requested layers in order.
        frames_chunk_size: patch-embed at most this many frames at once (None: all at once).
        gradient_checkpointing: recompute blocks in the backward pass (see :meth:`set_gradient_checkpointing`).
        check_input_range: warn (once) when inputs are far outside ``[0, 1]``; costs one device sync per call
            until the warning is given.

    Example:
        >>> agg = Aggregator(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
        ...                  n_storage_tokens=4, patch_embed="dinov3_vitl16_reg")          # doctest: +SKIP
        >>> outputs, patch_start_idx = agg(torch.rand(2, 8, 3, 224, 224))                   # doctest: +SKIP
        >>> len(outputs), outputs[-1].shape, patch_start_idx                                # doctest: +SKIP
        (24, torch.Size([2, 8, 201, 2048]), 5)
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        block_fn: Callable[..., nn.Module] = Block,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        patch_embed: str | nn.Module = "dinov2_vitl14_reg",
        aa_order: Sequence[str] = ("frame", "global"),
        aa_block_size: int = 1,
        qk_norm: bool = True,
        rope_freq: float = 100,
        init_values: float | None = 0.01,
        *,
        n_storage_tokens: int | None = None,
        patch_embed_config: Mapping[str, Any] | None = None,
        patch_embed_weights: Any = None,
        output_layers: str | int | Sequence[int] = "all",
        pad_output_list: bool = False,
        frames_chunk_size: int | None = None,
        gradient_checkpointing: bool = False,
        check_input_range: bool = True,
    ) -> None:
        super().__init__()
        num_register_tokens = _resolve_register_count(num_register_tokens, n_storage_tokens)
        self.aa_order = _validate_aa_order(aa_order)
        if aa_block_size < 1 or depth % aa_block_size != 0:
            raise ValueError(
                f"depth ({depth}) must be divisible by aa_block_size ({aa_block_size}); e.g. use aa_block_size in "
                f"{[d for d in range(1, depth + 1) if depth % d == 0]}"
            )
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if frames_chunk_size is not None and frames_chunk_size < 1:
            raise ValueError(f"frames_chunk_size must be a positive int or None, got {frames_chunk_size}")

        self.depth = depth
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.aa_block_size = aa_block_size
        self.aa_block_num = depth // aa_block_size
        self.patch_start_idx = 1 + num_register_tokens
        self.use_reentrant = False
        self.frames_chunk_size = frames_chunk_size
        self.pad_output_list = pad_output_list
        self.check_input_range = check_input_range
        self._range_warned = False

        pe = _build_patch_embed(
            patch_embed,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_register_tokens=num_register_tokens,
            config=patch_embed_config,
            weights=patch_embed_weights,
        )
        self.patch_embed = pe.module
        self.patch_embed_kind = pe.kind
        self.patch_size = pe.patch_size
        if hasattr(self.patch_embed, "mask_token"):
            self.patch_embed.mask_token.requires_grad_(False)  # unused by the Aggregator (as VGGT)
        self.patch_proj: nn.Linear | None = None
        if pe.width != embed_dim:
            self.patch_proj = nn.Linear(pe.width, embed_dim)
            nn.init.trunc_normal_(self.patch_proj.weight, std=0.02)
            nn.init.zeros_(self.patch_proj.bias)
            log.info("patch embedding width %d != embed_dim %d: adding a patch_proj Linear", pe.width, embed_dim)

        self.rope = RotaryPositionEmbedding2D(frequency=rope_freq) if rope_freq > 0 else None
        self.position_getter = PositionGetter() if self.rope is not None else None
        self._position_cache: dict[tuple[int, int, torch.device], Tensor] = {}

        block_kwargs = dict(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            ffn_bias=ffn_bias,
            init_values=init_values,
            qk_norm=qk_norm,
            rope=self.rope,
        )
        self.frame_blocks = nn.ModuleList([block_fn(**block_kwargs) for _ in range(depth)])
        self.global_blocks = nn.ModuleList([block_fn(**block_kwargs) for _ in range(depth)])

        # Slot 0: the first (reference) frame of each sequence; slot 1: every other frame.
        self.camera_token = nn.Parameter(torch.empty(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.empty(1, 2, num_register_tokens, embed_dim))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)

        self.register_buffer("_resnet_mean", torch.tensor(pe.mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(pe.std).view(1, 1, 3, 1, 1), persistent=False)

        self.output_layers = output_layers
        self._resolve_output_layers(output_layers)  # validate now
        self.gradient_checkpointing = False
        self.set_gradient_checkpointing(gradient_checkpointing)
        log.debug(
            "built Aggregator: patch_embed=%s (%s, patch %d) embed_dim=%d depth=%d heads=%d registers=%d rope=%s",
            patch_embed if isinstance(patch_embed, str) else type(patch_embed).__name__,
            pe.kind,
            self.patch_size,
            embed_dim,
            depth,
            num_heads,
            num_register_tokens,
            rope_freq if self.rope is not None else None,
        )

    # ------------------------------------------------------------------------------------------------ settings
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every block (and the DINO backbone's blocks) in the backward pass to save activation memory.

        Only active while autograd is recording; it never changes results. Unlike VGGT it does not depend on
        ``.training``.
        """
        self.gradient_checkpointing = bool(enabled)
        setter = getattr(self.patch_embed, "set_gradient_checkpointing", None)
        if callable(setter):
            setter(self.gradient_checkpointing)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The ``(mean, std)`` applied to ``[0, 1]`` inputs inside :meth:`forward`."""
        return tuple(self._resnet_mean.flatten().tolist()), tuple(self._resnet_std.flatten().tolist())

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the per-channel ``mean`` and ``std`` (3 values each) used to normalise the inputs."""
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {len(mean)} and {len(std)}")
        with torch.no_grad():
            self._resnet_mean.copy_(torch.tensor(mean).view(1, 1, 3, 1, 1))
            self._resnet_std.copy_(torch.tensor(std).view(1, 1, 3, 1, 1))

    def _resolve_output_layers(self, spec: str | int | Sequence[int] | None) -> list[int]:
        """Absolute layer indices (in the requested order) for an ``output_layers`` value."""
        if spec is None:
            spec = self.output_layers
        depth = self.depth
        if isinstance(spec, str):
            if spec != "all":
                raise ValueError(f'output_layers must be "all", an int or a list of ints, got the string {spec!r}')
            return list(range(depth))
        items = [spec] if isinstance(spec, int) else list(spec)
        if not items:
            raise ValueError('output_layers is empty; pass "all" or at least one layer index')
        layers = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise TypeError(f"output_layers entries must be ints, got {item!r} ({type(item).__name__})")
            if not -depth <= item < depth:
                raise ValueError(
                    f"output layer {item} is out of range for depth {depth} (valid: {-depth}..{depth - 1})"
                )
            layers.append(item % depth)
        return layers

    # ------------------------------------------------------------------------------------------------ input
    def _validate_images(self, images: Tensor) -> Tensor:
        """Check ``images`` and return them as ``[B, S, 3, H, W]``."""
        if not isinstance(images, Tensor):
            raise TypeError(f"expected a tensor [B, S, 3, H, W], got {type(images).__name__}")
        if images.ndim == 4:
            images = images.unsqueeze(0)  # [S, 3, H, W]: one sequence
        elif images.ndim != 5:
            hint = " (a single image: use images[None, None] for B=1, S=1)" if images.ndim == 3 else ""
            raise ValueError(
                f"expected images of shape [B, S, 3, H, W] (or [S, 3, H, W] for one sequence), got shape "
                f"{tuple(images.shape)}{hint}"
            )
        if images.shape[2] != 3:
            hint = " (channels-last? use images.permute(0, 1, 4, 2, 3))" if images.shape[-1] == 3 else ""
            raise ValueError(
                f"expected 3 colour channels at dim 2 of [B, S, 3, H, W], got shape {tuple(images.shape)}{hint}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"expected floating-point images in [0, 1], got dtype {images.dtype}; use images.float() / 255"
            )
        if images.shape[0] * images.shape[1] == 0:
            raise ValueError(f"got an empty batch of shape {tuple(images.shape)}")
        H, W = images.shape[-2:]
        p = self.patch_size
        problems = []
        for name, side in (("height", H), ("width", W)):
            if side % p:
                lower, upper = side // p * p, (side // p + 1) * p
                choices = f"{lower} or {upper}" if lower > 0 else f"{upper}"
                problems.append(f"{name} {side} (nearest valid: {choices})")
        if problems:
            h_ok = H if H % p == 0 else max(p, round(H / p) * p)
            w_ok = W if W % p == 0 else max(p, round(W / p) * p)
            raise ValueError(
                f"image sides must be multiples of the patch size {p}: {'; '.join(problems)}. Resize or crop the "
                f"frames, e.g. to {h_ok}x{w_ok}"
            )
        if self.check_input_range and not self._range_warned:
            self._check_range(images)
        return images

    def _check_range(self, images: Tensor) -> None:
        if images.device.type == "meta" or torch.compiler.is_compiling():
            return
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            self._range_warned = True
            hint = " (0-255 pixels? divide by 255)" if hi > 2.0 else " (already normalised? pass the raw [0, 1] images)"
            message = (
                f"Aggregator expects images in [0, 1] and normalises them itself, but got values in "
                f"[{lo:.3g}, {hi:.3g}]{hint}. This warning is shown once."
            )
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=4)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        output_layers: str | int | Sequence[int] | None = None,
        frames_chunk_size: int | None = None,
        patch_embed_outputs: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor | None], int]:
        """Aggregate a batch of image sequences.

        Args:
            images: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``, treated as ``B = 1``) in ``[0, 1]``; ``H`` and ``W``
                multiples of :attr:`patch_size`. Frame 0 of each sequence is the reference frame.
            output_layers: override :attr:`output_layers` for this call.
            frames_chunk_size: override :attr:`frames_chunk_size` for this call.
            patch_embed_outputs: with a DINOv3 patch embedding, a list that receives the backbone's
                ``forward_features`` dict of every chunk of frames (in order; ``[chunk, ...]`` tensors over the
                ``B * S`` frames), so callers get the per-frame CLS and storage tokens of the same pass.

        Returns:
            ``(output_list, patch_start_idx)``. Each output is ``[B, S, P, 2C]`` with
            ``P = patch_start_idx + (H / p) * (W / p)``: token 0 is the camera token, tokens
            ``1..patch_start_idx - 1`` the registers, then the patches in row-major order; channels ``:C`` are the
            frame-attention output and ``C:`` the global-attention output of that layer. With
            ``output_layers="all"`` the list has ``depth`` entries; with a list of layers it has those layers in
            the requested order (or ``depth`` entries with ``None`` placeholders when :attr:`pad_output_list`).
        """
        images = self._validate_images(images)
        B, S, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        layers = self._resolve_output_layers(output_layers)
        chunk = frames_chunk_size if frames_chunk_size is not None else self.frames_chunk_size

        tokens = self._embed(images, h * w, chunk, patch_embed_outputs)  # [B * S, P, C]
        _, P, C = tokens.shape
        pos_frame, pos_global, bound = self._positions(B, S, h, w, tokens.device)

        wanted = set(layers)
        outputs: dict[int, Tensor] = {}
        block_idx = {"frame": 0, "global": 0}
        for step in range(self.aa_block_num):
            for attn_type in self.aa_order:
                if attn_type == "frame":
                    tokens = tokens.reshape(B * S, P, C)
                    blocks, pos, half = self.frame_blocks, pos_frame, 0
                else:
                    tokens = tokens.reshape(B, S * P, C)
                    blocks, pos, half = self.global_blocks, pos_global, 1
                for i in range(self.aa_block_size):
                    tokens = self._run_block(blocks[block_idx[attn_type]], tokens, pos, bound)
                    block_idx[attn_type] += 1
                    layer = step * self.aa_block_size + i
                    if layer in wanted:
                        _write_half(outputs, layer, half, tokens.reshape(B, S, P, C))
        del tokens

        spec = self.output_layers if output_layers is None else output_layers
        if self.pad_output_list and not isinstance(spec, str):
            return [outputs.get(i) for i in range(self.depth)], self.patch_start_idx
        return [outputs[layer] for layer in layers], self.patch_start_idx

    def _embed(
        self, images: Tensor, n_patches: int, chunk: int | None, sink: list[dict[str, Tensor]] | None = None
    ) -> Tensor:
        """Normalise and patch-embed ``[B, S, 3, H, W]`` frames; return the tokens ``[B * S, P, C]``."""
        B, S, _, H, W = images.shape
        n = B * S
        frames = images.reshape(n, 3, H, W)
        mean, std = self._resnet_mean[0], self._resnet_std[0]  # [1, 3, 1, 1]
        step = n if not chunk or chunk >= n else int(chunk)
        P0 = self.patch_start_idx
        tokens: Tensor | None = None
        for start in range(0, n, step):
            x = (frames[start : start + step] - mean) / std
            patches = self._patch_tokens(x, n_patches, sink)  # [n_chunk, h * w, C]
            if tokens is None:
                dtype = torch.promote_types(patches.dtype, self.camera_token.dtype)
                tokens = patches.new_empty((n, P0 + n_patches, patches.shape[-1]), dtype=dtype)
                self._write_special_tokens(tokens.view(B, S, P0 + n_patches, -1))
            tokens[start : start + step, P0:].copy_(patches)
        assert tokens is not None
        return tokens

    def _patch_tokens(self, x: Tensor, n_patches: int, sink: list[dict[str, Tensor]] | None = None) -> Tensor:
        """``[N, 3, H, W]`` normalised frames -> patch tokens ``[N, h * w, C]`` (projected when needed)."""
        if self.patch_embed_kind == "dinov3":
            features = self.patch_embed.forward_features(x)
            if sink is not None:
                sink.append(features)
            out = features["x_norm_patchtokens"]
        else:
            out = self.patch_embed(x)
            if isinstance(out, dict):
                out = out["x_norm_patchtokens"]
        if out.ndim == 4:  # [N, h, w, D] from an unflattened embedding
            out = out.flatten(1, 2)
        if out.shape[1] != n_patches:
            raise RuntimeError(
                f"the patch embedding returned {out.shape[1]} tokens per frame but the {self.patch_size}-pixel grid "
                f"has {n_patches}; check that its patch size matches Aggregator.patch_size"
            )
        if self.patch_proj is not None:
            out = self.patch_proj(out)
        return out

    def _write_special_tokens(self, tokens: Tensor) -> None:
        """Fill the camera and register slots of ``tokens`` ``[B, S, P, C]`` (slot 0 for frame 0, slot 1 after)."""
        R = self.num_register_tokens
        tokens[:, :1, :1].copy_(self.camera_token[:, :1])
        tokens[:, 1:, :1].copy_(self.camera_token[:, 1:])
        if R:
            tokens[:, :1, 1 : 1 + R].copy_(self.register_token[:, :1])
            tokens[:, 1:, 1 : 1 + R].copy_(self.register_token[:, 1:])

    def _positions(
        self, B: int, S: int, h: int, w: int, device: torch.device
    ) -> tuple[Tensor | None, Tensor | None, int | None]:
        """RoPE positions for frame (``[B * S, P, 2]``) and global (``[B, S * P, 2]``) attention, and their bound.

        Special tokens sit at ``(0, 0)`` (no rotation), patches at ``(y + 1, x + 1)``. The tensors are expanded
        views of one cached ``[P, 2]`` (or ``[S * P, 2]``) table.
        """
        if self.rope is None:
            return None, None, None
        key = (h, w, device)
        base = self._position_cache.get(key)
        if base is None:
            with torch.inference_mode(False):  # cached: must also serve later forwards that record autograd
                grid = self.position_getter.grid(h, w, device) + 1  # [h * w, 2]
                base = torch.cat([grid.new_zeros(self.patch_start_idx, 2), grid], dim=0)  # [P, 2]
            self._position_cache[key] = base
        P = base.shape[0]
        pos_frame = base.unsqueeze(0).expand(B * S, P, 2)
        pos_global = base.repeat(S, 1).unsqueeze(0).expand(B, S * P, 2)
        return pos_frame, pos_global, max(h, w) + 1

    def _run_block(self, block: nn.Module, tokens: Tensor, pos: Tensor | None, bound: int | None) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._call_block, block, tokens, pos, bound, use_reentrant=self.use_reentrant)
        return self._call_block(block, tokens, pos, bound)

    def _call_block(self, block: nn.Module, tokens: Tensor, pos: Tensor | None, bound: int | None) -> Tensor:
        if self.rope is None:
            return block(tokens, pos=None)
        with self.rope.position_bound(bound):
            return block(tokens, pos=pos)

    # ------------------------------------------------------------------------------------------------ weights
    def load_vggt_state_dict(
        self,
        state_dict: Mapping[str, Tensor],
        *,
        strict: bool = True,
        skip_patch_embed: bool = False,
    ) -> LoadResult:
        """Load VGGT weights: a full ``VGGT`` state dict (``aggregator.*`` keys; other heads ignored) or the
        Aggregator's own.

        ``patch_proj.*`` may be absent (a new layer, left at its init). With ``skip_patch_embed`` the checkpoint's
        ``patch_embed.*`` entries are ignored (the backbone keeps its own weights, e.g. DINOv3's).

        Raises:
            StateDictMismatchError: with ``strict``, when keys are missing, unexpected or of the wrong shape
                (all listed by name). Without ``strict`` they are logged and the rest is loaded.
        """
        own = self.state_dict()
        sd, ignored = extract_aggregator_state_dict(state_dict)
        if skip_patch_embed:
            dropped = [k for k in sd if k.startswith("patch_embed.")]
            for k in dropped:
                del sd[k]
            ignored += dropped
            if dropped:
                log.info(
                    "ignored %d patch_embed.* checkpoint entries (patch embedding weights come from elsewhere)",
                    len(dropped),
                )
        optional = []
        if not any(k.startswith("patch_proj.") for k in sd):
            optional.append("patch_proj.")
        if skip_patch_embed:
            optional.append("patch_embed.")
        missing = [k for k in own if k not in sd and not k.startswith(tuple(optional))]
        unexpected = [k for k in sd if k not in own]
        mismatched = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in sd.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        new_layers = [k for k in own if k not in sd and k.startswith("patch_proj.")]
        if new_layers:
            log.warning("patch_proj is not in the checkpoint (a new layer): it keeps its initialisation; train it")
        if missing or unexpected or mismatched:
            message = self._mismatch_message(missing, unexpected, mismatched)
            if strict:
                raise StateDictMismatchError(message, missing, unexpected, mismatched)
            log.warning("%s", message)
        bad = {k for k, _, _ in mismatched}
        self.load_state_dict({k: v for k, v in sd.items() if k in own and k not in bad}, strict=False)
        return LoadResult(missing, unexpected, mismatched, ignored)

    def _mismatch_message(
        self, missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    ) -> str:
        lines = ["the checkpoint does not match this Aggregator:"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
        if mismatched:
            shown = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched[:_MAX_LISTED_KEYS])
            more = f" ... and {len(mismatched) - _MAX_LISTED_KEYS} more" if len(mismatched) > _MAX_LISTED_KEYS else ""
            lines.append(f"shape mismatches ({len(mismatched)}): {shown}{more}")
        pe_keys = [k for k in missing + unexpected if k.startswith("patch_embed.")]
        if pe_keys and self.patch_embed_kind == "dinov3":
            lines.append(
                "The patch_embed.* entries belong to another backbone (VGGT's DINOv2): load the DINOv3 backbone "
                "from its own weights with from_vggt(..., patch_embed_weights=True) (or a weights tag/file), or "
                "pass strict=False."
            )
        elif pe_keys:
            lines.append("Check that patch_embed matches the checkpoint (VGGT-1B uses 'dinov2_vitl14_reg').")
        if mismatched:
            lines.append("Check embed_dim, num_heads, mlp_ratio, num_register_tokens and img_size/patch_size.")
        return "\n".join(lines)

    @classmethod
    def from_vggt(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Tensor],
        *,
        strict: bool = True,
        patch_embed_weights: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> Aggregator:
        """Build an Aggregator and load VGGT weights into it.

        Args:
            source: a state dict; a file (``.safetensors``, or ``.pt``/``.pth`` read with
                ``torch.load(weights_only=True)``); a folder holding ``model.safetensors`` or ``model.pt``; or a
                Hugging Face hub id such as ``"facebook/VGGT-1B"``. Full ``VGGT`` checkpoints (``aggregator.*``,
                ``camera_head.*``, ...) and Aggregator-only state dicts are both accepted.
            strict: raise :class:`StateDictMismatchError` (listing every bad key) unless the weights fit exactly.
            patch_embed_weights: for a DINOv3 ``patch_embed``: load the backbone from DINOv3 weights (``True``, a tag,
                a file or a hub id, see ``create_model``) and ignore the checkpoint's ``patch_embed.*``.
            device, dtype: move the loaded module.
            revision: hub revision for hub ids.
            **kwargs: constructor arguments (defaults: VGGT-1B's Aggregator).

        Returns:
            The Aggregator in eval mode.
        """
        state_dict = _load_state_dict(source, revision=revision)
        model = cls(patch_embed_weights=patch_embed_weights, **kwargs)
        model.load_vggt_state_dict(state_dict, strict=strict, skip_patch_embed=patch_embed_weights is not None)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model.eval()


# ---------------------------------------------------------------------------------------------------- helpers


def _write_half(outputs: dict[int, Tensor], layer: int, half: int, value: Tensor) -> None:
    """Write ``value`` ``[B, S, P, C]`` into channels ``half * C:(half + 1) * C`` of ``outputs[layer]``."""
    out = outputs.get(layer)
    C = value.shape[-1]
    if out is None:
        out = value.new_empty((*value.shape[:-1], 2 * C))
        outputs[layer] = out
    out[..., half * C : (half + 1) * C].copy_(value)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f" ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else "")


def _resolve_register_count(num_register_tokens: int, n_storage_tokens: int | None) -> int:
    if n_storage_tokens is None:
        count = num_register_tokens
    elif num_register_tokens not in (4, n_storage_tokens):  # 4 is VGGT's default: treat it as "not given"
        raise ValueError(
            f"num_register_tokens={num_register_tokens} and n_storage_tokens={n_storage_tokens} disagree; they are "
            "the same setting (VGGT's and DINOv3's names): give only one"
        )
    else:
        count = n_storage_tokens
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"the number of register tokens must be an int >= 0, got {count!r}")
    return count


def _validate_aa_order(aa_order: Sequence[str]) -> list[str]:
    if isinstance(aa_order, str):
        raise ValueError(
            f'aa_order must be a list of attention types such as ["frame", "global"], got the string {aa_order!r}'
        )
    order = list(aa_order)
    unknown = [t for t in order if t not in AA_TYPES]
    if unknown:
        raise ValueError(f"unknown attention type(s) {unknown} in aa_order={order}; valid types are {list(AA_TYPES)}")
    missing = [t for t in AA_TYPES if t not in order]
    if missing:
        raise ValueError(
            f"aa_order={order} lacks {missing}: every layer output concatenates a frame and a global block, so "
            'aa_order must contain both, e.g. ["frame", "global"]'
        )
    if len(order) != len(AA_TYPES):
        raise ValueError(f"aa_order={order} repeats an attention type; use each of {list(AA_TYPES)} exactly once")
    return order


class _PatchEmbedSpec(NamedTuple):
    module: nn.Module
    kind: str  # "conv", "dinov2", "dinov3" or "module"
    width: int
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _dinov3_normalization(module: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from ..models import normalization_for

    return normalization_for(getattr(module, "weights_tag", None))


def _build_patch_embed(
    patch_embed: str | nn.Module,
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    num_register_tokens: int,
    config: Mapping[str, Any] | None,
    weights: Any,
) -> _PatchEmbedSpec:
    config = dict(config or {})
    if isinstance(patch_embed, nn.Module):
        if config or weights is not None:
            raise ValueError("patch_embed_config and patch_embed_weights only apply to a patch_embed given by name")
        kind = "module"
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if _is_dinov3_module(patch_embed):
            kind = "dinov3"
            mean, std = _dinov3_normalization(patch_embed)
        width = int(getattr(patch_embed, "embed_dim", embed_dim))
        p = getattr(patch_embed, "patch_size", patch_size)
        p = int(p[0] if isinstance(p, tuple) else p)
        return _PatchEmbedSpec(patch_embed, kind, width, p, mean, std)
    if not isinstance(patch_embed, str):
        raise TypeError(f"patch_embed must be a name or an nn.Module, got {type(patch_embed).__name__}")
    if weights is not None and not patch_embed.startswith("dinov3"):
        raise ValueError(
            f"patch_embed_weights applies to DINOv3 patch embeddings only, not {patch_embed!r}; VGGT's DINOv2 weights "
            "come from the VGGT checkpoint (Aggregator.from_vggt)"
        )
    if "conv" in patch_embed:
        if config:
            raise ValueError(f"patch_embed_config is not used by the conv patch embedding (got {sorted(config)})")
        module = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        return _PatchEmbedSpec(module, "conv", embed_dim, patch_size, IMAGENET_MEAN, IMAGENET_STD)
    if patch_embed in DINOV2_PATCH_EMBEDS:
        kwargs = {
            "img_size": img_size,
            "patch_size": patch_size,
            "num_register_tokens": num_register_tokens,
            "interpolate_antialias": True,
            "interpolate_offset": 0.0,
            "block_chunks": 0,
            "init_values": 1.0,
            **config,
        }
        module = DINOV2_PATCH_EMBEDS[patch_embed](**kwargs)
        return _PatchEmbedSpec(module, "dinov2", module.embed_dim, module.patch_size, IMAGENET_MEAN, IMAGENET_STD)
    if patch_embed.startswith("dinov3"):
        from ..models import create_model

        kwargs = dict(config)
        if weights is not None:
            kwargs["pretrained"] = True
            if weights is not True:
                kwargs["weights"] = weights
        else:  # weights load through patch_embed_weights; a tag in the config only selects the architecture
            kwargs.setdefault("pretrained", False)
        module = create_model(patch_embed, **kwargs)
        p = int(module.patch_size)
        if p != patch_size and patch_size != 14:  # 14 is VGGT's default, i.e. "not chosen"
            log.warning(
                "patch_size=%d ignored: the DINOv3 backbone %s has %d-pixel patches", patch_size, patch_embed, p
            )
        mean, std = _dinov3_normalization(module)
        return _PatchEmbedSpec(module, "dinov3", int(module.embed_dim), p, mean, std)
    valid = ["conv", *DINOV2_PATCH_EMBEDS]
    try:
        from ..models import list_models

        valid += list_models()
    except ImportError:  # pragma: no cover - the models package is part of the library
        pass
    raise ValueError(
        f"unknown patch_embed {patch_embed!r}; use 'conv', a VGGT DINOv2 name ({', '.join(DINOV2_PATCH_EMBEDS)}), "
        f"a DINOv3 model name ({', '.join(n for n in valid if n.startswith('dinov3'))}; '_reg' suffix accepted) "
        "or an nn.Module"
    )


def _is_dinov3_module(module: nn.Module) -> bool:
    try:
        from ..models import DinoVisionTransformer as DinoV3
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, DinoV3)


_AGG_PREFIX = re.compile(r"^(?:.*?\.)?aggregator\.")


def extract_aggregator_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """Aggregator weights (keys relative to the Aggregator) and the keys that were left out.

    Accepts a full VGGT state dict (``aggregator.*`` next to ``camera_head.*``, ``depth_head.*`` ...), a model
    that holds VGGT under a longer prefix (``spatial_encoder.vggt_model.aggregator.*``; the prefix must be unique)
    or an Aggregator-only state dict (returned as is). Training wrappers (``{"model": ...}``, ``module.``) are
    unwrapped first.
    """
    sd = _unwrap(state_dict)
    prefixes = {m.group(0) for k in sd if (m := _AGG_PREFIX.match(k))}
    if not prefixes:
        return dict(sd), []
    if len(prefixes) > 1:
        raise ValueError(
            f"the checkpoint holds several aggregators ({sorted(prefixes)}); pass the state dict of one of them"
        )
    prefix = prefixes.pop()
    kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    ignored = [k for k in sd if not k.startswith(prefix)]
    if ignored:
        heads = sorted({k.split(".")[0] for k in ignored})
        log.info("ignoring %d non-aggregator checkpoint entries (%s)", len(ignored), ", ".join(heads))
    return kept, ignored


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from ..hub.checkpoint_io import unwrap_state_dict
    except ImportError:  # the hub is optional for this module
        sd = dict(state_dict)
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(sd.get(key), Mapping):
                sd = dict(sd[key])
        return sd
    return unwrap_state_dict(state_dict)


def _load_file(path: Path) -> dict[str, Tensor]:
    try:
        from ..hub.checkpoint_io import load_state_dict_file
    except ImportError:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_state_dict_file(path, unwrap=False)


_HUB_FILES = ("model.safetensors", "model.pt")


def _load_state_dict(
    source: str | os.PathLike[str] | Mapping[str, Tensor], revision: str | None = None
) -> Mapping[str, Any]:
    """A state dict from a mapping, a file, a folder or a Hugging Face hub id."""
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a state dict, a path or a hub id, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        for name in _HUB_FILES:
            if (path / name).is_file():
                return _load_file(path / name)
        raise FileNotFoundError(f"no {' or '.join(_HUB_FILES)} in the folder {path}")
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _load_state_dict(_download_from_hub(text, revision), revision)
    raise FileNotFoundError(f"VGGT weights not found: {text!r} is neither a file, a folder nor a hub id ('org/name')")


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from ..hub.download import hf_download
    except ImportError:
        from huggingface_hub import hf_hub_download

        def hf_download(repo_id: str, filename: str, revision: str | None = None) -> Path:  # type: ignore[misc]
            return Path(hf_hub_download(repo_id, filename, revision=revision))

    errors = []
    for name in _HUB_FILES:
        try:
            return hf_download(repo_id, name, revision=revision)
        except Exception as exc:  # try the next file name, report all failures below
            errors.append(f"{name}: {exc}")
    raise FileNotFoundError(f"could not fetch VGGT weights from the hub repo {repo_id!r}:\n" + "\n".join(errors))
