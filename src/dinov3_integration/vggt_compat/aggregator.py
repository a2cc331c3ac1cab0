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
  returns every layer in a plain list like VGGT; otherwise a :class:`~.outputs.LayerOutputs` answers absolute
  (``out[23]``) and negative (``out[-1]``) indices with the tensors of the full run, so VGGT's heads and
  Spatial-MLLM's ``[-1]`` work unchanged (``len()`` is ``depth``, iteration yields the kept layers).
- ``frames_chunk_size``: run the patch embedding on this many frames at a time (normalisation included).
- ``gradient_checkpointing``: ``None`` (default) checkpoints every block while ``.training``, as VGGT does;
  ``True``/``False`` force it on or off.
- ``rope_freq <= 0`` disables RoPE (it crashes in VGGT).
- The module cast to bfloat16 with bfloat16 inputs works, and so does autocast; the RoPE tables need no host
  synchronisation; outputs are written straight into the concatenated ``[B, S, P, 2C]`` tensors.
- Eager inference (eval, no autograd, no hooks) runs the blocks' fast path (:mod:`.fast_forward`: RoPE tables
  gathered once per forward and rotated in place, free layout reshapes), bit-identical to the reference loop.
- DINOv3 patch embeddings (every ``create_model`` name, with or without ``_reg``): the backbone's
  ``x_norm_patchtokens`` feed the blocks, its patch size sets the RoPE grid, its normalisation constants
  (ImageNet, or satellite for ``sat493m`` weights) are used, and a ``patch_proj`` Linear is added only when its
  width differs from ``embed_dim``.

Companions: :mod:`.patch_embeds` builds the patch embedding, :mod:`.checkpoint` reads VGGT checkpoints and reports
misfits, :mod:`.inputs` checks inputs and arguments, :mod:`.hub` gives ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._logging import get_logger
from ..hub.loading import buffer_device
from ..layers import fastpath
from ..utils.normalization import normalize
from .checkpoint import (
    StateDictMismatchError,
    VGGTLoadResult,
    extract_aggregator_state_dict,
    fits_meta_build,
    load_aggregator_weights,
    read_vggt_checkpoint,
)
from .fast_forward import blocks_have_fast_forward, keep_half, run_blocks_fast
from .hub import AggregatorHubMixin
from .inputs import (
    check_finite,
    check_sizes,
    resolve_register_count,
    validate_aa_order,
    validate_images,
    warn_if_out_of_range,
)
from .layers.block import Block
from .outputs import LayerOutputs, resolve_output_layers
from .patch_embeds import build_patch_embed, checkpointing_backbone, new_patch_proj
from .rope import PositionGetter, RotaryPositionEmbedding2D

__all__ = ["Aggregator"]

# Deprecated import paths (these live in .checkpoint now): kept so that old imports keep working.
LoadResult = VGGTLoadResult
_REEXPORTED = (StateDictMismatchError, extract_aggregator_state_dict)

log = get_logger("vggt_compat")


class Aggregator(AggregatorHubMixin, nn.Module):
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
        output_layers: layers to keep: ``"all"`` (VGGT's behaviour), an index, or a list of indices (negative
            allowed). Also settable per call in :meth:`forward`. See :meth:`forward` for what is returned.
        pad_output_list: with a list of ``output_layers``, return a plain list of ``depth`` entries with ``None``
            for the layers not kept, instead of a :class:`~.outputs.LayerOutputs`.
        frames_chunk_size: patch-embed at most this many frames at once (None: all at once).
        gradient_checkpointing: recompute blocks in the backward pass: ``None`` (VGGT's rule) while
            ``.training``, ``True`` always, ``False`` never (see :meth:`set_gradient_checkpointing`).
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
        gradient_checkpointing: bool | None = None,
        check_input_range: bool = True,
    ) -> None:
        """Validate the arguments, then build every submodule (long: VGGT's keywords plus ours, in one place)."""
        super().__init__()
        num_register_tokens = resolve_register_count(num_register_tokens, n_storage_tokens)
        self.aa_order = validate_aa_order(aa_order)
        check_sizes(depth, aa_block_size, embed_dim, num_heads, frames_chunk_size)
        check_finite(mlp_ratio=mlp_ratio, rope_freq=rope_freq, init_values=init_values)
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
        # Inference fast paths (layers.fastpath, vggt_compat.fast_forward; bit-identical): ``use_fast_paths = False``
        # turns them off for this model; ``use_workspace = True`` adds the shared block buffers (fewer page faults,
        # but ~2% above VGGT's peak memory with all layers kept, so off by default: benchmarks/README.md).
        self.use_fast_paths = True
        self.use_workspace = False

        pe = build_patch_embed(
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
            self.patch_proj = new_patch_proj(pe.width, embed_dim)
            log.info("patch embedding width %d != embed_dim %d: adding a patch_proj Linear", pe.width, embed_dim)

        self.rope = RotaryPositionEmbedding2D(frequency=rope_freq) if rope_freq > 0 else None
        self.position_getter = PositionGetter() if self.rope is not None else None
        self._position_cache: dict[tuple[int, int, torch.device], Tensor] = {}

        block_kwargs = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                            proj_bias=proj_bias, ffn_bias=ffn_bias, init_values=init_values, qk_norm=qk_norm,
                            rope=self.rope)  # fmt: skip
        self.frame_blocks = nn.ModuleList([block_fn(**block_kwargs) for _ in range(depth)])
        self.global_blocks = nn.ModuleList([block_fn(**block_kwargs) for _ in range(depth)])

        # Slot 0: the first (reference) frame of each sequence; slot 1: every other frame.
        self.camera_token = nn.Parameter(torch.empty(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.empty(1, 2, num_register_tokens, embed_dim))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)

        real = buffer_device(None)  # in no state dict: real (the CPU) in a meta build, which from_vggt loads
        self.register_buffer("_resnet_mean", torch.tensor(pe.mean, device=real).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(pe.std, device=real).view(1, 1, 3, 1, 1), persistent=False)

        self.output_layers = output_layers
        resolve_output_layers(output_layers, depth)  # validate now
        self.gradient_checkpointing: bool | None = None
        self.set_gradient_checkpointing(gradient_checkpointing)
        log.debug("built Aggregator: patch_embed %s (patch %d) embed_dim=%d depth=%d heads=%d registers=%d rope=%s",
                  pe.kind, self.patch_size, embed_dim, depth, num_heads, num_register_tokens,
                  rope_freq if self.rope is not None else None)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ settings
    def set_gradient_checkpointing(self, enabled: bool | None = True) -> None:
        """Recompute every block (and the patch embedding's blocks) in the backward pass to save activation memory.

        ``None`` is VGGT's rule: checkpoint while ``.training`` (the default); ``True`` checkpoints also in eval
        mode, ``False`` never. Only active while autograd is recording; it never changes results.
        """
        self.gradient_checkpointing = None if enabled is None else bool(enabled)
        setter = getattr(self.patch_embed, "set_gradient_checkpointing", None)
        if callable(setter) and (enabled is not None or self.patch_embed_kind == "dinov2"):
            setter(self.gradient_checkpointing)  # the DINOv2 ViT has VGGT's None rule itself

    @property
    def checkpointing(self) -> bool:
        """Whether blocks are checkpointed now (``gradient_checkpointing``, or ``.training`` when it is None)."""
        return self.training if self.gradient_checkpointing is None else self.gradient_checkpointing

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

    # ------------------------------------------------------------------------------------------------ input
    def _validate_images(self, images: Tensor) -> Tensor:
        """Check ``images`` and return them as ``[B, S, 3, H, W]`` (warns once for values far outside [0, 1])."""
        images = validate_images(images, self.patch_size)
        if self.check_input_range and not self._range_warned:
            self._range_warned = warn_if_out_of_range(images)
        return images

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        output_layers: str | int | Sequence[int] | None = None,
        frames_chunk_size: int | None = None,
        patch_embed_outputs: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor] | LayerOutputs | list[Tensor | None], int]:
        """Aggregate a batch of image sequences.

        Args:
            images: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``, treated as ``B = 1``) in ``[0, 1]``
                (``dinov3_integration.transforms.make_transform(aggregator)``); ``H`` and ``W`` multiples of
                :attr:`patch_size`. Frame 0 of each sequence is the reference frame.
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
            ``output_layers="all"`` it is a plain list of ``depth`` tensors (VGGT's). Otherwise it is a
            :class:`~.outputs.LayerOutputs`: ``out[i]`` is layer ``i`` of the full run (``out[4]``, ``out[-1]``),
            a layer not kept raises :class:`~.outputs.LayerNotKeptError`, ``len(out) == depth`` and iterating
            yields the kept layers in layer order (:attr:`~.outputs.LayerOutputs.layers`). With
            :attr:`pad_output_list` it is a plain list of ``depth`` entries, ``None`` where not kept.
        """
        images = self._validate_images(images)
        B, S, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        spec = self.output_layers if output_layers is None else output_layers
        layers = resolve_output_layers(spec, self.depth)
        chunk = frames_chunk_size if frames_chunk_size is not None else self.frames_chunk_size

        tokens = self._embed(images, h * w, chunk, patch_embed_outputs)  # [B * S, P, C]
        positions = self._positions(B, S, h, w, tokens.device)
        outputs: dict[int, Tensor] = {}
        fast = self.use_fast_paths and blocks_have_fast_forward(self)
        with fastpath.model_scope(self, enabled=fast, workspace=self.use_workspace) as plan:
            if plan.fast:
                run_blocks_fast(self, tokens, B, S, positions, set(layers), outputs, plan)
        if not plan.fast:
            self._forward_blocks(tokens, B, S, positions, set(layers), outputs)
        del tokens

        if isinstance(spec, str):  # "all": VGGT's plain list
            return [outputs[layer] for layer in layers], self.patch_start_idx
        if self.pad_output_list:
            return [outputs.get(i) for i in range(self.depth)], self.patch_start_idx
        return LayerOutputs(outputs, self.depth), self.patch_start_idx

    def _forward_blocks(
        self, tokens: Tensor, B: int, S: int, positions: tuple, wanted: set[int], outputs: dict[int, Tensor]
    ) -> None:
        """The reference loop: alternate frame (``[B * S, P, C]``) and global (``[B, S * P, C]``) blocks on
        ``tokens``, writing the ``wanted`` layers into ``outputs`` (layer -> ``[B, S, P, 2C]``)."""
        pos_frame, pos_global, bound = positions
        _, P, C = tokens.shape
        pending: dict[int, tuple[int, Tensor]] = {}
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
                        keep_half(outputs, pending, layer, half, tokens.reshape(B, S, P, C))

    def _embed(
        self, images: Tensor, n_patches: int, chunk: int | None, sink: list[dict[str, Tensor]] | None = None
    ) -> Tensor:
        """Normalise and patch-embed ``[B, S, 3, H, W]`` frames; return the tokens ``[B * S, P, C]``."""
        B, S, _, H, W = images.shape
        n = B * S
        frames = images.reshape(n, 3, H, W)
        mean, std = self._resnet_mean.flatten(), self._resnet_std.flatten()  # [3]
        # one chunk unless asked (no range() over a symbolic frame count while exporting)
        starts, step = ([0], n) if not chunk or chunk >= n else (range(0, n, int(chunk)), int(chunk))
        P0 = self.patch_start_idx
        tokens: Tensor | None = None
        for start in starts:
            x = normalize(frames[start : start + step], mean, std)
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
            with checkpointing_backbone(self.patch_embed, self.gradient_checkpointing is None and self.training):
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
        # Slot 1 into every frame, then slot 0 over frame 0: no ``1:`` slice of the frames, whose size-0/1/2
        # cases would each become a guard on a symbolic S while exporting.
        P0 = self.patch_start_idx
        special = torch.cat((self.camera_token, self.register_token), dim=2)  # [1, 2, P0, C]
        tokens[:, :, :P0].copy_(special[:, 1:].expand_as(tokens[:, :, :P0]))
        tokens[:, :1, :P0].copy_(special[:, :1].expand_as(tokens[:, :1, :P0]))

    def _positions(
        self, B: int, S: int, h: int, w: int, device: torch.device
    ) -> tuple[Tensor | None, Tensor | None, int | None]:
        """RoPE positions for frame (``[B * S, P, 2]``) and global (``[B, S * P, 2]``) attention, and their bound.

        Special tokens sit at ``(0, 0)`` (no rotation), patches at ``(y + 1, x + 1)``. The tensors are expanded
        views of one cached ``[P, 2]`` (or ``[S * P, 2]``) table. While tracing (``torch.export``, ONNX,
        ``torch.compile``) nothing is cached: the table is computed from the runtime grid (``h``, ``w`` may be
        symbolic), with the same values.
        """
        if self.rope is None:
            return None, None, None
        if torch.compiler.is_compiling():
            y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            grid = torch.stack((y, x), dim=-1).reshape(-1, 2) + 1  # [h * w, 2], as PositionGetter.grid
            base = torch.cat([grid.new_zeros(self.patch_start_idx, 2), grid], dim=0)
        elif (base := self._position_cache.get((h, w, device))) is None:
            with torch.inference_mode(False):  # cached: must also serve later forwards that record autograd
                grid = self.position_getter.grid(h, w, device) + 1  # [h * w, 2]
                base = torch.cat([grid.new_zeros(self.patch_start_idx, 2), grid], dim=0)  # [P, 2]
            self._position_cache[(h, w, device)] = base
        P = base.shape[0]
        pos_frame = base.unsqueeze(0).expand(B * S, P, 2)
        pos_global = base.repeat(S, 1).unsqueeze(0).expand(B, S * P, 2)
        return pos_frame, pos_global, max(h, w) + 1

    def _run_block(self, block: nn.Module, tokens: Tensor, pos: Tensor | None, bound: int | None) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._call_block, block, tokens, pos, bound, use_reentrant=self.use_reentrant)
        return self._call_block(block, tokens, pos, bound)

    def _call_block(self, block: nn.Module, tokens: Tensor, pos: Tensor | None, bound: int | None) -> Tensor:
        if self.rope is None:
            return block(tokens, pos=None)
        with self.rope.position_bound(bound):
            return block(tokens, pos=pos)

    # ------------------------------------------------------------------------------------------------ weights
    def load_vggt_state_dict(
        self, state_dict: Mapping[str, Tensor], *, strict: bool = True, skip_patch_embed: bool = False
    ) -> VGGTLoadResult:
        """Load VGGT weights: a full ``VGGT`` state dict (``aggregator.*`` keys; other heads ignored) or the
        Aggregator's own.

        ``patch_proj.*`` may be absent (a new layer, left at its init). With ``skip_patch_embed`` the checkpoint's
        ``patch_embed.*`` entries are ignored (the backbone keeps its own weights, e.g. DINOv3's).

        Raises:
            BackboneFamilyError: the checkpoint's ``patch_embed.*`` is another backbone family (DINOv2 tensors for a
                DINOv3 backbone, ...), whatever ``strict`` says.
            StateDictMismatchError: with ``strict``, when keys are missing, unexpected or of the wrong shape
                (all listed by name). Without ``strict`` they are logged and the rest is loaded.
        """
        return load_aggregator_weights(
            self, state_dict, patch_embed_kind=self.patch_embed_kind, strict=strict, skip_patch_embed=skip_patch_embed
        )

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
            The Aggregator in eval mode. It is built on the ``meta`` device and loaded with ``assign=True`` (no random
            initialisation, no copy; a ``patch_proj`` the checkpoint lacks is initialised afterwards), except with
            ``strict=False`` when the checkpoint lacks tensors: then it is built on the CPU and they keep their init.
        """
        state_dict = read_vggt_checkpoint(source, revision=revision)
        skip = patch_embed_weights is not None
        with torch.device("meta"):  # DINOv3 patch_embed_weights still load, on the CPU (patch_embeds)
            model = cls(patch_embed_weights=patch_embed_weights, **kwargs)
        if not strict and not fits_meta_build(model, state_dict, skip_patch_embed=skip):
            model = cls(patch_embed_weights=patch_embed_weights, **kwargs)
        load_aggregator_weights(model, state_dict, patch_embed_kind=model.patch_embed_kind, strict=strict,
                                skip_patch_embed=skip, device=device)  # fmt: skip
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model.eval()
