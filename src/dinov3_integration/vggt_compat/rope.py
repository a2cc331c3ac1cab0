"""VGGT's 2D rotary position embedding (``vggt.layers.rope``): ``PositionGetter`` and ``RotaryPositionEmbedding2D``.

The math is VGGT's (spec section 3.8). For a head of width ``D``, the first ``D / 2`` channels are rotated by the
token's row ``y`` and the last ``D / 2`` by its column ``x``. Inside each half of width ``d`` the rotate-half
pairing is used (channel ``j`` with ``j + d / 2``), at frequencies ``inv_freq_i = 1 / base ** (2 i / d)``. The
angle table ``p * inv_freq`` is computed in float32, **cast to the tokens' dtype, then** passed through cos/sin
(so bfloat16 tokens see bfloat16-rounded angles, as in VGGT).

Differences from VGGT, none of which change a result:

- ``PositionGetter`` caches its grids per ``(height, width, device)`` (VGGT ignores the device).
- The cos/sin tables are cached per ``(dim, device, dtype, base frequency)`` and grown on demand; rows do not depend on the table
  length, so a longer table gives identical values.
- The table length comes from a known bound when there is one (``max_position=``, or
  :meth:`RotaryPositionEmbedding2D.position_bound`, which the Aggregator uses), so the forward pass needs no
  ``int(positions.max())`` host synchronisation. Without a bound it falls back to VGGT's behaviour.
- Positions shared by the whole batch (an expanded ``[1, N, 2]`` tensor) are gathered once, not once per sample.
- :meth:`RotaryPositionEmbedding2D.rotate_pair` rotates q and k with one gather.
- :meth:`RotaryPositionEmbedding2D.prepare` (the Aggregator's inference fast path): the per-token cos/sin of one
  positions tensor, gathered once per forward for all blocks, and an in-place rotation (:class:`PreparedRope2D`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.rope import rope_rotate_half

__all__ = ["PositionGetter", "PreparedRope2D", "RotaryPositionEmbedding2D"]

_TABLE_GROWTH = 64  # tables are allocated in multiples of this many positions


class PositionGetter:
    """Integer ``(y, x)`` patch coordinates of an ``height x width`` grid, in row-major order.

    ``getter(batch_size, height, width, device)`` returns an int64 tensor ``[batch_size, height * width, 2]``:
    ``[[0, 0], [0, 1], ..., [0, w - 1], [1, 0], ...]`` for every batch entry. Grids are cached per
    ``(height, width, device)`` in :attr:`position_cache`; the returned tensor is a fresh copy.
    """

    def __init__(self) -> None:
        self.position_cache: dict[tuple[int, int, torch.device], Tensor] = {}

    def grid(self, height: int, width: int, device: torch.device | str) -> Tensor:
        """The cached ``[height * width, 2]`` grid (do not modify it in place)."""
        device = torch.device(device)
        key = (int(height), int(width), device)
        positions = self.position_cache.get(key)
        if positions is None:
            y = torch.arange(height, device=device)
            x = torch.arange(width, device=device)
            positions = torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)
            self.position_cache[key] = positions
        return positions

    def __call__(self, batch_size: int, height: int, width: int, device: torch.device | str) -> Tensor:
        positions = self.grid(height, width, device)
        return positions.view(1, height * width, 2).expand(batch_size, -1, -1).clone()


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE applied to ``[B, heads, N, D]`` tokens with integer positions ``[B, N, 2]`` (``y``, ``x``).

    No parameters and no buffers (it can be shared by every block of a model).

    Args:
        frequency: base frequency (VGGT uses 100).
        scaling_factor: stored for VGGT compatibility; unused, as in VGGT.
    """

    def __init__(self, frequency: float = 100.0, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.base_frequency = frequency
        self.scaling_factor = scaling_factor
        self.frequency_cache: dict[tuple[int, torch.device, torch.dtype, float], tuple[Tensor, Tensor]] = {}
        self._position_bound: int | None = None

    def extra_repr(self) -> str:
        return f"frequency={self.base_frequency}"

    @contextlib.contextmanager
    def position_bound(self, max_position: int | None) -> Iterator[None]:
        """Promise that every position used inside the block is ``< max_position`` (skips the host sync).

        A position beyond the bound is an indexing error, never a silent wrong result.
        """
        previous = self._position_bound
        if max_position is not None and not isinstance(max_position, torch.SymInt):  # symbolic while exporting
            max_position = int(max_position)
        self._position_bound = max_position
        try:
            yield
        finally:
            self._position_bound = previous

    def _compute_frequency_components(
        self, dim: int, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` tables ``[L, dim]`` with ``L >= seq_len`` (column ``j`` and ``j + dim / 2`` share a freq)."""
        # The base frequency is part of the key: changing it after a first call must not reuse stale tables.
        key = (dim, device, dtype, float(self.base_frequency))
        tracing = torch.compiler.is_compiling()  # traced tables are graph values: computed, never cached
        cached = None if tracing else self.frequency_cache.get(key)
        if cached is not None and cached[0].shape[0] >= seq_len:
            return cached
        # while tracing: exactly seq_len rows (ONNX's integer Div truncates, so the rounding up would give 0 rows)
        length = seq_len if tracing else -(-seq_len // _TABLE_GROWTH) * _TABLE_GROWTH
        # Tables are constants: build them as normal tensors even under inference_mode so that a later forward
        # with autograd can save them for backward.
        # (while tracing, inference_mode(False) would become a grad-mode region of the graph: not needed, not cached)
        with contextlib.nullcontext() if tracing else torch.inference_mode(False), torch.no_grad():
            exponents = torch.arange(0, dim, 2, device=device).float() / dim
            inv_freq = 1.0 / (self.base_frequency**exponents)  # [dim / 2], float32
            positions = torch.arange(length, device=device, dtype=inv_freq.dtype)
            angles = positions[:, None] * inv_freq[None, :]  # [L, dim / 2], float32
            angles = angles.to(dtype)  # VGGT's cast order: round the angles first ...
            angles = torch.cat((angles, angles), dim=-1)  # [L, dim]
            cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)  # ... then cos/sin in the token dtype
        if not tracing:
            self.frequency_cache[key] = (cos, sin)
        return cos, sin

    def _tables_for(self, tokens: Tensor, positions: Tensor, max_position: int | None) -> tuple[Tensor, Tensor]:
        if tokens.size(-1) % 2 != 0:
            raise ValueError(f"RoPE needs an even head dim, got tokens of shape {tuple(tokens.shape)}")
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be [B, N, 2] (y, x), got shape {tuple(positions.shape)}")
        if max_position is None:
            max_position = self._position_bound
        if max_position is None:
            max_position = int(positions.max()) + 1  # VGGT's behaviour (a host sync on accelerators)
        return self._compute_frequency_components(tokens.size(-1) // 2, max_position, tokens.device, tokens.dtype)

    @staticmethod
    def _gather(positions: Tensor, cos_table: Tensor, sin_table: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token ``(cos, sin)`` for one axis: positions ``[B, N]`` -> ``[B or 1, 1, N, d]``."""
        if positions.shape[0] > 1 and positions.stride(0) == 0:
            positions = positions[:1]  # the same positions for every sample: gather once and broadcast
        cos = F.embedding(positions, cos_table)[:, None]
        sin = F.embedding(positions, sin_table)[:, None]
        return cos, sin

    @staticmethod
    def _rotate(tokens: Tensor, cos_sin_y: tuple[Tensor, Tensor], cos_sin_x: tuple[Tensor, Tensor]) -> Tensor:
        vertical, horizontal = tokens.chunk(2, dim=-1)
        vertical = vertical * cos_sin_y[0] + rope_rotate_half(vertical) * cos_sin_y[1]
        horizontal = horizontal * cos_sin_x[0] + rope_rotate_half(horizontal) * cos_sin_x[1]
        return torch.cat((vertical, horizontal), dim=-1)

    def forward(self, tokens: Tensor, positions: Tensor, max_position: int | None = None) -> Tensor:
        """Rotate ``tokens`` ``[B, heads, N, D]`` by ``positions`` ``[B, N, 2]`` (int64 ``(y, x)``).

        ``max_position`` (optional) is an exclusive upper bound of the positions; it avoids a host sync.
        """
        cos_table, sin_table = self._tables_for(tokens, positions, max_position)
        cs_y = self._gather(positions[..., 0], cos_table, sin_table)
        cs_x = self._gather(positions[..., 1], cos_table, sin_table)
        return self._rotate(tokens, cs_y, cs_x)

    def rotate_pair(
        self, q: Tensor, k: Tensor, positions: Tensor, max_position: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(forward(q, positions), forward(k, positions))`` with one table lookup when q and k share a dtype."""
        if q.dtype != k.dtype or q.device != k.device or q.size(-1) != k.size(-1):
            return self.forward(q, positions, max_position), self.forward(k, positions, max_position)
        cos_table, sin_table = self._tables_for(q, positions, max_position)
        cs_y = self._gather(positions[..., 0], cos_table, sin_table)
        cs_x = self._gather(positions[..., 1], cos_table, sin_table)
        return self._rotate(q, cs_y, cs_x), self._rotate(k, cs_y, cs_x)

    def prepare(self, positions: Tensor, max_position: int | None = None) -> PreparedRope2D:
        """The rotation by ``positions`` (``[B, N, 2]``) for one forward pass: see :class:`PreparedRope2D`."""
        return PreparedRope2D(self, positions, max_position)


class PreparedRope2D:
    """:meth:`RotaryPositionEmbedding2D.forward` by fixed positions, in place, for one forward pass (no autograd).

    The per-token ``(cos, sin)`` of ``positions`` (``[B, N, 2]`` ``(y, x)``) are gathered once per dtype, head
    width and device, on the first :meth:`rotate_`, and reused by every later call: the Aggregator builds one for the
    frame and one for the global positions per forward and hands them to all its blocks (nothing outlives the
    forward). :meth:`rotate_` forms the reference's products in place (bit-identical, see there).

    Args:
        rope: the module whose frequency tables are used (its base frequency, its cached ``[L, D / 2]`` tables).
        positions: ``[B, N, 2]`` int64, shared by every tensor rotated (an expanded ``[1, N, 2]`` is gathered once).
        max_position: exclusive bound of the positions (None: ``positions.max() + 1``, a host sync).
    """

    def __init__(self, rope: RotaryPositionEmbedding2D, positions: Tensor, max_position: int | None = None) -> None:
        self.rope = rope
        self.positions = positions
        self.max_position = max_position
        self._tables: dict[tuple[torch.dtype, torch.device, int], tuple[Tensor, Tensor]] = {}

    def tables(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` for ``tokens`` ``[B, h, N, D]``: each ``[B or 1, 1, N, 2 (y, x), 2 (half), D / 4]``."""
        key = (tokens.dtype, tokens.device, tokens.size(-1))
        found = self._tables.get(key)
        if found is None:
            cos_table, sin_table = self.rope._tables_for(tokens, self.positions, self.max_position)  # [L, D / 2]
            positions = self.positions
            if positions.shape[0] > 1 and positions.stride(0) == 0:
                positions = positions[:1]  # the same positions for every sample: gather once and broadcast
            quarter = tokens.size(-1) // 4
            found = tuple(  # [B', N, 2, D / 2] -> [B', 1, N, 2, 2, D / 4]
                F.embedding(positions, table).unflatten(-1, (2, quarter))[:, None] for table in (cos_table, sin_table)
            )
            self._tables[key] = found
        return found

    def rotate_(self, tokens: Tensor) -> Tensor:
        """Overwrite ``tokens`` (``[B, h, N, D]``, any strides, a fresh tensor nobody else holds) with
        ``rope(tokens, positions)``; returns ``tokens``.

        Per axis (channels ``:D/2`` by ``y``, ``D/2:`` by ``x``) with halves ``[t1 | t2]`` of width ``D / 4``, the
        reference computes ``[t1 c1 + (-t2) s1 | t2 c2 + t1 s2]``; here the same products are formed, in the same
        dtype (``(-a) b`` is exactly ``-(a b)`` and ``u + (-v)`` is exactly ``u - v``), so the result is
        bit-identical, without the reference's three concatenations and with two half-size temporaries. Both axes are
        rotated together (one view). Needs ``D % 4 == 0`` (as the reference: for other even ``D`` its halves do not
        match and it raises); otherwise the reference rotation is called.
        """
        D = tokens.size(-1)
        if D % 4 != 0:
            return tokens.copy_(self.rope(tokens, self.positions, self.max_position))
        cos, sin = self.tables(tokens)
        halves = tokens.unflatten(-1, (2, 2, D // 4))  # [B, h, N, axis, half, D / 4], a view
        t1, t2 = halves[..., 0, :], halves[..., 1, :]
        t1_s2 = t1 * sin[..., 1, :]
        t2_s1 = t2 * sin[..., 0, :]
        t1.mul_(cos[..., 0, :]).sub_(t2_s1)
        t2.mul_(cos[..., 1, :]).add_(t1_s2)
        return tokens
