"""The Aggregator's eager inference fast path over its alternating blocks (issue 18), and its output assembly.

:func:`run_blocks_fast` is what ``Aggregator.forward`` runs under a fast
:class:`~dinov3_integration.layers.fastpath.Plan` (decided once per forward by ``fastpath.model_scope``: eval, no
autograd, no hooks, no ``torch.compile``, and every block of an exact known type, :func:`blocks_have_fast_forward`).
It computes exactly what the reference loop ``Aggregator._forward_blocks`` computes (``torch.equal``:
tests/test_aggregator_fast.py), with

- the RoPE-2D per-token tables of the frame and of the global positions gathered once per forward and shared by
  all blocks (:meth:`~.rope.RotaryPositionEmbedding2D.prepare`), q and k rotated in place;
- q and k normalised in their ``[B, N, h, d]`` layout, so the attention output reshapes for free
  (:meth:`~.layers.attention.Attention.forward_fast`);
- the blocks' large temporaries in the plan's workspace buffers (float32 outside autocast) and the residual stream
  updated in place; frame ``[B * S, P, C]`` <-> global ``[B, S * P, C]`` layouts as views.

:func:`keep_half` (both loops) assembles a layer's ``[B, S, P, 2C]`` output when its second half exists, as VGGT's
``torch.cat`` does, so no output is allocated earlier than VGGT's. Nothing here outlives a forward.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import fastpath
from .layers.block import Block
from .outputs import write_half
from .rope import RotaryPositionEmbedding2D

__all__ = ["blocks_have_fast_forward", "keep_half", "run_blocks_fast"]


def blocks_have_fast_forward(agg: nn.Module) -> bool:
    """Whether every block is one whose :meth:`~.layers.block.Block.forward_fast` reproduces its forward."""
    rope_ok = agg.rope is None or type(agg.rope) is RotaryPositionEmbedding2D
    blocks = [*agg.frame_blocks, *agg.global_blocks]
    return rope_ok and all(isinstance(b, Block) and b.fast_forward_applies() and b.attn.rope is agg.rope
                           for b in blocks)  # fmt: skip


def run_blocks_fast(
    agg: nn.Module,
    tokens: Tensor,
    B: int,
    S: int,
    positions: tuple[Tensor | None, Tensor | None, int | None],
    wanted: set[int],
    outputs: dict[int, Tensor],
    plan: fastpath.Plan,
) -> None:
    """``Aggregator._forward_blocks`` for eager inference under the fast ``plan`` decided once for this forward.

    ``tokens``: ``[B * S, P, C]`` from ``Aggregator._embed``; ``positions``: ``Aggregator._positions``'s frame and
    global positions and their bound; the ``wanted`` layers go into ``outputs`` (layer -> ``[B, S, P, 2C]``).

    The same numbers (``torch.equal``, tests/test_aggregator_fast.py): each positions tensor's RoPE tables are
    gathered once (:meth:`~.rope.RotaryPositionEmbedding2D.prepare`) for all blocks and rotate q and k in
    place; the blocks share the workspace buffers and update the residual stream ``tokens`` (fresh) in place;
    frame <-> global layouts are views.
    """
    pos_frame, pos_global, bound = positions
    _, P, C = tokens.shape
    ws = plan.workspace
    if ws is not None:
        ws.own(tokens)
    ropes = {"frame": None, "global": None}
    if agg.rope is not None:
        ropes = {"frame": agg.rope.prepare(pos_frame, bound), "global": agg.rope.prepare(pos_global, bound)}
    shapes = {"frame": (B * S, P, C), "global": (B, S * P, C)}
    pending: dict[int, tuple[int, Tensor]] = {}
    block_idx = {"frame": 0, "global": 0}
    for step in range(agg.aa_block_num):
        for attn_type in agg.aa_order:
            view = tokens.view(shapes[attn_type])  # tokens is contiguous: a free view
            tokens = ws.own(view, replacing=tokens) if ws is not None and ws.owns(tokens) else view
            blocks = agg.frame_blocks if attn_type == "frame" else agg.global_blocks
            for i in range(agg.aa_block_size):
                tokens = blocks[block_idx[attn_type]].forward_fast(tokens, ropes[attn_type], plan)
                block_idx[attn_type] += 1
                layer = step * agg.aa_block_size + i
                if layer in wanted:
                    if ws is not None and layer not in pending:
                        ws.disown(tokens)  # kept until the layer's other half: the next block makes a new one
                    keep_half(outputs, pending, layer, int(attn_type == "global"), tokens.view(B, S, P, C))


def keep_half(
    outputs: dict[int, Tensor], pending: dict[int, tuple[int, Tensor]], layer: int, half: int, value: Tensor
) -> None:
    """Keep ``value`` (``[B, S, P, C]``) as half ``half`` of layer ``layer``'s output ``[B, S, P, 2C]``.

    The first half waits in ``pending`` (the block output itself, as VGGT keeps it); the ``[B, S, P, 2C]`` tensor is
    allocated and filled when the second half comes, as VGGT's ``torch.cat``, so no output is held before it must.
    """
    first = pending.pop(layer, None)
    if first is None:
        pending[layer] = (half, value)
        return
    write_half(outputs, layer, first[0], first[1])
    write_half(outputs, layer, half, value)
