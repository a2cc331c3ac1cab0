"""A plain transcription of VGGT's Aggregator forward (``vggt/models/aggregator.py`` and ``vggt/layers``), as VGGT
writes it, reading the weights of a :class:`dinov3_integration.vggt_compat.Aggregator` (issue 18).

It is the baseline of ``bench_aggregator.py --reference``: no caches, no fast paths, VGGT's order of operations.
Per block: ``LayerNorm -> qkv Linear -> q/k LayerNorm -> RoPE-2D -> SDPA -> proj -> LayerScale -> residual``, then
``LayerNorm -> fc1 -> GELU -> fc2 -> LayerScale -> residual``; frame attention on ``[B * S, P, C]``, global on
``[B, S * P, C]``; each layer's output ``cat(frame, global)``. The patch embedding is the module's own
(``agg.patch_embed``, the same code on both sides); everything after it is transcribed. ``tests/test_vggt_reference.py``
proves it equal to VGGT's outputs on the shared fixtures (``tests/data/reference/agg_*.safetensors``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["vggt_reference_forward"]


def _rope_frequencies(dim: int, seq_len: int, base: float, device, dtype) -> tuple[Tensor, Tensor]:
    exponents = torch.arange(0, dim, 2, device=device).float() / dim
    inv_freq = 1.0 / (base**exponents)
    positions = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)
    angles = torch.einsum("i,j->ij", positions, inv_freq)
    angles = angles.to(dtype)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_features(x: Tensor) -> Tensor:
    feature_dim = x.shape[-1]
    x1, x2 = x[..., : feature_dim // 2], x[..., feature_dim // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_1d_rope(tokens: Tensor, positions: Tensor, cos_comp: Tensor, sin_comp: Tensor) -> Tensor:
    cos = F.embedding(positions, cos_comp)[:, None, :, :]
    sin = F.embedding(positions, sin_comp)[:, None, :, :]
    return (tokens * cos) + (_rotate_features(tokens) * sin)


def _rope2d(tokens: Tensor, positions: Tensor, base: float) -> Tensor:
    feature_dim = tokens.size(-1) // 2
    max_position = int(positions.max()) + 1
    cos_comp, sin_comp = _rope_frequencies(feature_dim, max_position, base, tokens.device, tokens.dtype)
    vertical_features, horizontal_features = tokens.chunk(2, dim=-1)
    vertical_features = _apply_1d_rope(vertical_features, positions[..., 0], cos_comp, sin_comp)
    horizontal_features = _apply_1d_rope(horizontal_features, positions[..., 1], cos_comp, sin_comp)
    return torch.cat((vertical_features, horizontal_features), dim=-1)


def _attention(attn: nn.Module, x: Tensor, pos: Tensor | None, base: float | None) -> Tensor:
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if base is not None and pos is not None:
        q = _rope2d(q, pos, base)
        k = _rope2d(k, pos, base)
    x = F.scaled_dot_product_attention(q, k, v)
    x = x.transpose(1, 2).reshape(B, N, C)
    return attn.proj(x)


def _block(block: nn.Module, x: Tensor, pos: Tensor | None, base: float | None) -> Tensor:
    x = x + block.ls1(_attention(block.attn, block.norm1(x), pos, base))
    mlp = block.mlp
    x = x + block.ls2(mlp.fc2(mlp.act(mlp.fc1(block.norm2(x)))))
    return x


def _slice_expand_and_flatten(token_tensor: Tensor, B: int, S: int) -> Tensor:
    query = token_tensor[:, 0:1, ...].expand(B, 1, *token_tensor.shape[2:])
    others = token_tensor[:, 1:, ...].expand(B, S - 1, *token_tensor.shape[2:])
    combined = torch.cat([query, others], dim=1)
    return combined.view(B * S, *combined.shape[2:])


def _positions(agg: nn.Module, B: int, S: int, H: int, W: int, device) -> Tensor:
    h, w = H // agg.patch_size, W // agg.patch_size
    y, x = torch.arange(h, device=device), torch.arange(w, device=device)
    pos = torch.cartesian_prod(y, x).view(1, h * w, 2).expand(B * S, -1, -1).clone()
    if agg.patch_start_idx > 0:
        pos = pos + 1
        pos_special = torch.zeros(B * S, agg.patch_start_idx, 2).to(device).to(pos.dtype)
        pos = torch.cat([pos_special, pos], dim=1)
    return pos


def vggt_reference_forward(agg: nn.Module, images: Tensor) -> tuple[list[Tensor], int]:
    """VGGT's ``Aggregator.forward`` on ``images`` ``[B, S, 3, H, W]`` in ``[0, 1]``, with ``agg``'s weights.

    Returns ``(output_list, patch_start_idx)``: ``depth`` tensors ``[B, S, P, 2C]``, as VGGT.
    """
    B, S, C_in, H, W = images.shape
    tokens = _embed(agg, images)
    base = agg.rope.base_frequency if agg.rope is not None else None
    pos = _positions(agg, B, S, H, W, images.device) if base is not None else None
    _, P, C = tokens.shape
    frame_idx = global_idx = 0
    output_list = []
    for _ in range(agg.aa_block_num):
        frame_out, global_out = [], []
        for attn_type in agg.aa_order:
            for _ in range(agg.aa_block_size):
                if attn_type == "frame":
                    tokens = tokens.view(B, S, P, C).view(B * S, P, C)
                    p = pos.view(B, S, P, 2).view(B * S, P, 2) if pos is not None else None
                    tokens = _block(agg.frame_blocks[frame_idx], tokens, p, base)
                    frame_idx += 1
                    frame_out.append(tokens.view(B, S, P, C))
                else:
                    tokens = tokens.view(B, S, P, C).view(B, S * P, C)
                    p = pos.view(B, S, P, 2).view(B, S * P, 2) if pos is not None else None
                    tokens = _block(agg.global_blocks[global_idx], tokens, p, base)
                    global_idx += 1
                    global_out.append(tokens.view(B, S, P, C))
        _assemble(output_list, frame_out, global_out)
    return output_list, agg.patch_start_idx


def _embed(agg: nn.Module, images: Tensor) -> Tensor:
    """Normalise, patch-embed and prepend the camera and register tokens: ``[B, S, 3, H, W] -> [B * S, P, C]``."""
    B, S, C_in, H, W = images.shape
    images = (images - agg._resnet_mean) / agg._resnet_std
    images = images.view(B * S, C_in, H, W)
    patch_tokens = agg.patch_embed(images)
    if isinstance(patch_tokens, dict):
        patch_tokens = patch_tokens["x_norm_patchtokens"]
    camera_token = _slice_expand_and_flatten(agg.camera_token, B, S)
    register_token = _slice_expand_and_flatten(agg.register_token, B, S)
    return torch.cat([camera_token, register_token, patch_tokens], dim=1)


def _assemble(output_list: list[Tensor], frame_out: list[Tensor], global_out: list[Tensor]) -> None:
    """VGGT's output assembly: append ``cat(frame, global)`` on the channels, ``[B, S, P, 2C]``, per layer."""
    for f, g in zip(frame_out, global_out):
        output_list.append(torch.cat([f, g], dim=-1))
