"""timm's model conventions on :class:`~dinov3_integration.models.DinoVisionTransformer` (a mixin).

What timm users call on a ViT, with timm's names and meanings (checked against timm's Eva-based
``vit_*_patch16_dinov3`` loaded with the same weights in ``tests/test_vit_timm_api.py``):

- ``forward_intermediates(x, indices=None, norm=False, output_fmt="NCHW" | "NLC", intermediates_only=False,
  return_prefix_tokens=False, stop_early=False)``;
- ``forward_head(x, pre_logits=False)`` after ``forward_features`` (its dict, or timm's normed ``[B, T, D]`` tokens);
- ``num_classes``, ``global_pool`` (``"token"``: the CLS token, the reference's output; ``"avg"``: the mean of the
  normed patch tokens; ``"token+avg"``: both concatenated, ``[B, 2D]``, as DINOv3's linear classifiers),
  ``reset_classifier(num_classes, global_pool=None)``, ``get_classifier()``;
- ``set_grad_checkpointing(enable=True)``, ``no_weight_decay()`` and ``group_matcher(coarse=False)`` (for
  timm's optimizer factory and layer-wise learning-rate decay);
- ``feature_info`` and ``prune_intermediate_layers``, so that timm's ``FeatureGetterNet(model, out_indices=...)``
  (what ``timm.create_model(..., features_only=True)`` builds for its ViTs) wraps this model as a feature extractor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..utils.indices import resolve_layer_indices

GLOBAL_POOLS = ("token", "avg", "token+avg")
OUTPUT_FORMATS = ("NCHW", "NLC")

__all__ = ["GLOBAL_POOLS", "OUTPUT_FORMATS", "TimmConventions"]


def _check_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool={global_pool!r}: choose one of {', '.join(map(repr, GLOBAL_POOLS))}")
    return global_pool


class TimmConventions:
    """Mixin for the ViT: needs ``blocks``, ``embed_dim``, ``n_storage_tokens``, ``patch_size``, ``norm``,
    ``cls_norm``, ``head``, ``forward_features``, ``get_intermediate_layers`` helpers and
    ``set_gradient_checkpointing``."""

    num_classes: int = 0
    global_pool: str = "token"

    # ------------------------------------------------------------------------------------------------ head
    def _head_features(self) -> int:
        return self.embed_dim * (2 if self.global_pool == "token+avg" else 1)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``Linear(D or 2D, num_classes)`` head (``num_classes`` 0: identity), optionally another pooling."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r}: must be an integer >= 0 (0: no classifier)")
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        ref = self.cls_token
        self.head = (
            nn.Linear(self._head_features(), num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def get_classifier(self) -> nn.Module:
        """The classifier head (``nn.Identity`` without one)."""
        return self.head

    def pool(self, x: Tensor | dict[str, Tensor], pool_type: str | None = None) -> Tensor:
        """``[B, D]`` (``[B, 2D]`` for ``"token+avg"``) from ``forward_features``' dict or normed tokens ``[B, T, D]``."""
        pool_type = _check_pool(self.global_pool if pool_type is None else pool_type)
        if isinstance(x, dict):
            cls, patches = x["x_norm_clstoken"], x["x_norm_patchtokens"]
        else:
            cls, patches = x[:, 0], x[:, self.n_storage_tokens + 1 :]
        if pool_type == "token":
            return cls
        avg = patches.mean(dim=1)
        return avg if pool_type == "avg" else torch.cat((cls, avg), dim=-1)

    def forward_head(self, x: Tensor | dict[str, Tensor], pre_logits: bool = False) -> Tensor:
        """Pool (``global_pool``) then the head; ``pre_logits=True`` returns the pooled features.

        ``x``: the dict of ``forward_features`` (reference) or normed tokens ``[B, 1 + R + N, D]`` (timm).
        """
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    # ------------------------------------------------------------------------------------------------ features
    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """timm's ``forward_intermediates``: block outputs and (unless ``intermediates_only``) the final tokens.

        Args:
            x: ``[B, 3, H, W]``.
            indices: None (every block), an int (the last n) or block indices (negative from the end).
            return_prefix_tokens: each intermediate as ``(patches, prefix)`` with ``prefix`` ``[B, 1 + R, D]``.
            norm: apply the final norm to each intermediate.
            stop_early: run only up to the last wanted block (the returned final tokens are then that block's).
            output_fmt: ``"NCHW"`` (``[B, D, H // p, W // p]``) or ``"NLC"`` (``[B, N, D]``).
            intermediates_only: return only the list of intermediates.

        Returns:
            ``intermediates`` or ``(final, intermediates)``, ``final`` the normed tokens ``[B, 1 + R + N, D]``.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt={output_fmt!r}: choose 'NCHW' or 'NLC'")
        depth = len(self.blocks)
        wanted = resolve_layer_indices(depth if indices is None else indices, depth, what="indices", unit="blocks")
        final_block = max(wanted) if stop_early or intermediates_only else depth - 1
        run = sorted(set(wanted) | {final_block})
        outputs = dict(zip(run, self._get_intermediate_layers_not_chunked(x, run)))
        r1 = self.n_storage_tokens + 1
        B, _, H, W = x.shape
        h, w = H // self.patch_size, W // self.patch_size
        intermediates: list[Any] = []
        for i in wanted:
            out = self._norm_tokens(outputs[i]) if norm else outputs[i]
            patches = out[:, r1:]
            if output_fmt == "NCHW":
                patches = patches.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((patches, out[:, :r1]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self._norm_tokens(outputs[final_block]), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning for feature extraction: drop the blocks after the last wanted one (in place).

        ``prune_norm`` replaces the final norms by identities, ``prune_head`` the head (``num_classes`` 0). Returns the
        wanted block indices, non-negative (timm's ``FeatureGetterNet`` calls this, then :meth:`forward_intermediates`).
        """
        depth = len(self.blocks)
        wanted = resolve_layer_indices(indices, depth, what="indices", unit="blocks", sort=False, unique=False)
        self.blocks = self.blocks[: max(wanted) + 1]
        self.n_blocks = len(self.blocks)
        self.feature_info = self.feature_info[: self.n_blocks]
        if prune_norm:
            self.norm = nn.Identity()
            self.cls_norm = nn.Identity() if self.cls_norm is not None else None
            self.local_cls_norm = nn.Identity() if self.local_cls_norm is not None else None
        if prune_head:
            self.reset_classifier(0)
        return wanted

    def _feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: one entry per block (``num_chs`` D, ``reduction`` the patch size)."""
        return [
            {"module": f"blocks.{i}", "num_chs": self.embed_dim, "reduction": self.patch_size}
            for i in range(len(self.blocks))
        ]

    def _norm_tokens(self, x: Tensor) -> Tensor:
        """The final norm on ``[B, 1 + R + N, D]`` (``cls_norm`` on the prefix when the norms are untied)."""
        if self.cls_norm is not None:
            r1 = self.n_storage_tokens + 1
            return torch.cat((self.cls_norm(x[:, :r1]), self.norm(x[:, r1:])), dim=1)
        return self.norm(x)

    # ------------------------------------------------------------------------------------------------ training
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's name of :meth:`set_gradient_checkpointing`."""
        self.set_gradient_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay (timm's optimizer factory reads this): the learned tokens."""
        names = {"cls_token", "mask_token"}
        if self.n_storage_tokens > 0:
            names.add("storage_tokens")
        return names

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise decay (timm format): the embeddings, each block, then the final norms."""
        return {
            "stem": r"^cls_token|^storage_tokens|^mask_token|^patch_embed|^rope_embed",
            "blocks": r"^blocks\.(\d+)"
            if coarse
            else [(r"^blocks\.(\d+)", None), (r"^(?:norm|cls_norm|local_cls_norm)\.", (99999,))],
        }
