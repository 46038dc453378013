"""Per-tile value ranges of the tensors a mask reads, so tiles are classified without visiting pairs.

A mask such as `doc[q_idx] == doc[kv_idx]` reads a tensor at a position that moves with one index.
Over the query rows `[q_lo, q_hi]` of a tile that load takes values in `[min, max]` of those rows, and
the tile classifier (`attnc.ir.tiles`) reasons with that interval instead of with every element: tiles
whose document-id intervals are disjoint never attend to each other (empty); intervals that are the
same single id on both sides allow every pair (full).

`tile_ranges` computes the intervals once per problem. Each load whose indices move with exactly one
of q / kv is evaluated at every position of that index (O(Q_LEN + KV_LEN) work, never
O(Q_LEN * KV_LEN)), reduced per tile to its min and max, and stored as two extra captured tensors
`[B or 1, H or 1, n_tiles]`. The classifier reads them back through LOADs at the tile number
`q_lo // q_block` (or `kv_lo // kv_block`), so the tile boxes it is asked about must be the tiles of
this grid.

Why min/max is sound for any data, sorted or not: every value the load takes in a tile lies in
`[min, max]` of that tile, so whatever the classifier proves for every value of the interval holds for
the values actually there. Unsorted data only widens the interval (fewer tiles decided), it never
makes a decision wrong. Sorted document ids make the intervals tight: a tile inside one document has
`min == max`, so whole documents' off-diagonal tiles come out empty and their inner tiles full.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnc.ir.dtypes import DType
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.node import Node, const, load, node, var
from attnc.ir.ops import Op
from attnc.ir.program import Program, TensorSpec

Pair = tuple[Node, Node]
_MOVING = frozenset({"q", "kv"})


@dataclasses.dataclass(frozen=True)
class TileRanges:
    """`extra_tensors` are appended after the program's captured tensors (LOAD slots `len(tensors)` on);
    `load_range(load_node)` is the IR pair `(min, max)` of that load over the current tile, or None
    when no range is known (the classifier then treats the load as unknown)."""

    extra_tensors: tuple[Tensor, ...]
    load_range: Callable[[Node], Pair | None]

    @property
    def tensor_specs(self) -> tuple[TensorSpec, ...]:
        """How a Program describes `extra_tensors`, for appending to `Program.tensors`."""
        return tuple(TensorSpec(DType.from_torch(t.dtype), t.ndim) for t in self.extra_tensors)


@dataclasses.dataclass(frozen=True)
class _Axis:
    """The index a load moves with ("q" or "kv"), its length and its tile size."""

    name: str
    length: int
    block: int

    @property
    def tile_number(self) -> Node:
        return node(Op.FLOORDIV, DType.int32, var(f"{self.name}_lo"), const(self.block, DType.int32))


def tile_ranges(program: Program, tensors: Sequence[Tensor], params: Sequence, *, B: int, H: int, Q_LEN: int,
                KV_LEN: int, q_block: int, kv_block: int) -> TileRanges:
    """Min/max tables for every load of `program.mask` whose indices move with exactly one of q / kv
    (and possibly b, h and runtime parameters). `tensors` / `params` are the current captured values."""
    if len(tensors) != len(program.tensors):
        raise ValueError(f"tile_ranges: the program captures {len(program.tensors)} tensors, got {len(tensors)}")
    axes = {"q": _Axis("q", Q_LEN, q_block), "kv": _Axis("kv", KV_LEN, kv_block)}
    extra: list[Tensor] = []
    pairs: dict[Node, Pair] = {}
    for load_node in ranged_loads(program.mask):
        (moving,) = load_node.deps & _MOVING
        axis = axes[moving]
        values = _values_along(load_node, axis, B, H, tensors, params)
        if values is None:
            continue
        slot, dtype = len(tensors) + len(extra), load_node.dtype
        low, high = _narrowed(_per_tile(values, axis.block))
        extra += [low, high]
        pairs[load_node] = (_tile_load(slot, low, dtype, axis), _tile_load(slot + 1, high, dtype, axis))
    return TileRanges(tuple(extra), types.MappingProxyType(pairs).get)


def ranged_loads(mask: Node | None) -> list[Node]:
    """The loads of `mask` whose indices move with exactly one of q / kv, operands first."""
    if mask is None:
        return []
    return [n for n in mask.walk() if n.op is Op.LOAD and len(n.deps & _MOVING) == 1]


def _values_along(load_node: Node, axis: _Axis, B: int, H: int, tensors: Sequence[Tensor],
                  params: Sequence) -> Tensor | None:
    """The load at every position of `axis` (and every b, h it reads): `[B or 1, H or 1, length]`.
    None when there is nothing to range over or a value is NaN (NaN compares false with everything,
    so an interval with a NaN end would prove things that do not hold)."""
    if axis.length == 0:
        return None
    batch = B if "b" in load_node.deps else 1
    heads = H if "h" in load_node.deps else 1
    # The other index is a single 0 position: the load does not read it.
    q_len, kv_len = (axis.length, 1) if axis.name == "q" else (1, axis.length)
    grids = index_grids(batch, heads, q_len, kv_len, tensors[load_node.arg].device)
    values = evaluate(load_node, Env(*grids, tensors=tensors, params=params))
    values = values.expand(batch, heads, q_len, kv_len).reshape(batch, heads, axis.length)
    if values.is_floating_point() and bool(values.isnan().any()):
        return None
    return values


def _per_tile(values: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """(min, max) over each tile of the last dim, both `[..., n_tiles]`, contiguous."""
    length = values.shape[-1]
    n_tiles = math.ceil(length / block)
    # The ragged last tile is padded with its own last value, which is already in the tile, so the
    # padding never widens an interval: each interval covers its tile's positions inside the length
    # (the only ones a block map classifies).
    pad = values[..., -1:].expand(*values.shape[:-1], n_tiles * block - length)
    tiles = torch.cat([values, pad], dim=-1).view(*values.shape[:-1], n_tiles, block)
    return tiles.amin(dim=-1).contiguous(), tiles.amax(dim=-1).contiguous()


def _narrowed(tables: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """int64 tables as int32 when every value fits: the classifier tracks a value's possible range
    by its dtype, and int32 bounds keep its integer reasoning within limits (document ids are small)."""
    low, high = tables
    info = torch.iinfo(torch.int32)
    if low.dtype != torch.int64 or low.numel() == 0 or low.min() < info.min or high.max() > info.max:
        return low, high
    return low.to(torch.int32), high.to(torch.int32)


def _tile_load(slot: int, table: Tensor, dtype: DType, axis: _Axis) -> Node:
    """The table's entry for the current tile, as a value of the ranged load's dtype."""
    # Tables are [B or 1, H or 1, n_tiles]; the LOAD clamps b and h, so size-1 dims broadcast.
    entry = load(slot, DType.from_torch(table.dtype), var("b"), var("h"), axis.tile_number)
    return entry if entry.dtype is dtype else node(Op.CAST, dtype, entry)
