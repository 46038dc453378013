"""Per-tile value ranges of the tensors a mask reads, so tiles are classified without visiting pairs.

A mask such as `doc[q_idx] == doc[kv_idx]` reads a tensor at a position that moves with one index.
Over the query rows `[q_lo, q_hi]` of a tile that load takes values in `[min, max]` of those rows, and
the tile classifier (`attnc.ir.tiles`) reasons with that interval instead of with every element: tiles
whose document-id intervals are disjoint never attend to each other (empty); intervals that are the
same single id on both sides allow every pair (full).

`tile_ranges` computes the intervals once per problem, for two kinds of loads:

- One-index loads, whose indices move with exactly one of q / kv (`doc[b, q_idx]`): evaluated at every
  position of that index (O(Q_LEN + KV_LEN) work, never O(Q_LEN * KV_LEN)), reduced per tile to min and
  max, stored as two extra captured tensors `[B or 1, H or 1, n_tiles]` read back at the tile number
  `q_lo // q_block` (or `kv_lo // kv_block`).
- Separable loads, whose index arguments each move with at most one of q / kv, some with q and some with
  kv (block-selection tables: `sel[h, q_idx // 64, kv_idx // 64]`). One axis goes first: each of its
  positions picks, through its arguments and the constant ones, a row of the tensor (its entries over
  every value of the other axis' arguments, F of them), and the rows are reduced per tile to min and
  max `[.., n_tiles, F]`. Then each position of the other axis picks one entry of every row, reduced per
  tile of that axis to `[B or 1, H or 1, nQ, nKV]`, read back at `(q_lo // q_block, kv_lo // kv_block)`.
  Only positions where a tile begins or an argument changes value are visited (within a run of equal
  arguments rows and entries repeat), and the axis that makes this cheaper goes first: at most
  Q_LEN * F + nQ * KV_LEN or its mirror, and about table size plus tile count for `t[q // c, kv // c]`;
  never O(Q_LEN * KV_LEN) for a table coarser than the positions. Memory stays bounded by stepping over
  a few tiles of the first axis at a time.

Indices are clamped into their dims as LOAD does; bool loads range as bools (min: all, max: any), which
the classifier reads as such. Float loads that reach a NaN range over their other values and get a third
table, the tile's NaN state (0: no NaN, 1: some, 2: all NaN; an all-NaN tile ranges over [0, 0]): a NaN
compares False with everything, so the classifier proves nothing about a tile from ordered values unless
its state is 0, and a tile of NaN only can never hold `x < load`. The tile boxes the classifier is asked
about must be the tiles of this grid.

Why min/max is sound for any data, sorted or not: every value the load takes in a tile lies in
`[min, max]` of that tile, so whatever the classifier proves for every value of the interval holds for
the values actually there. Unsorted data only widens the interval (fewer tiles decided), it never
makes a decision wrong. Sorted document ids make the intervals tight: a tile inside one document has
`min == max`, so whole documents' off-diagonal tiles come out empty and their inner tiles full. For a
separable load the values over a tile box are exactly the entries at (a row its q positions pick, an
entry its kv positions pick), every such combination occurring, so its interval is the tightest one:
the two reductions take min and max over precisely that product set.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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

Bounds = tuple[Node, ...]  # (min, max) or (min, max, NaN state)
_MOVING = frozenset({"q", "kv"})
# elements of the intermediate tables of a separable load per step, so memory stays bounded at any length
_STEP_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class TileRanges:
    """`extra_tensors` are appended after the program's captured tensors (LOAD slots `len(tensors)` on);
    `load_range(load_node)` is the IR pair `(min, max)` of that load over the current tile, followed by its
    NaN state for a float load that reaches a NaN, or None when no range is known (the classifier then
    treats the load as unknown)."""

    extra_tensors: tuple[Tensor, ...]
    load_range: Callable[[Node], Bounds | None]

    @property
    def tensor_specs(self) -> tuple[TensorSpec, ...]:
        """How a Program describes `extra_tensors`, for appending to `Program.tensors`."""
        return tuple(TensorSpec(DType.from_torch(t.dtype), t.ndim) for t in self.extra_tensors)


@dataclasses.dataclass(frozen=True)
class _Axis:
    """An index ("q" or "kv"), its length and its tile size."""

    name: str
    length: int
    block: int

    @property
    def n_tiles(self) -> int:
        return math.ceil(self.length / self.block)

    @property
    def tile_number(self) -> Node:
        return node(Op.FLOORDIV, DType.int32, var(f"{self.name}_lo"), const(self.block, DType.int32))


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Evaluates a load's expressions along one axis, for every b and h the load reads."""

    tensors: Sequence[Tensor]
    params: Sequence
    batch: int
    heads: int
    device: torch.device

    def along(self, n: Node, axis: _Axis, start: int, stop: int) -> Tensor:
        """`n` at positions `start .. stop - 1` of `axis`: `[batch, heads, stop - start]`."""
        # The other index is a single 0 position: `n` does not read it.
        b, h, zero, _ = index_grids(self.batch, self.heads, 1, 1, self.device)
        positions = torch.arange(start, stop, dtype=torch.int32, device=self.device)
        q, kv = (positions.view(1, 1, -1, 1), zero) if axis.name == "q" else (zero, positions.view(1, 1, 1, -1))
        values = evaluate(n, Env(b, h, q, kv, tensors=self.tensors, params=self.params))
        shape = (self.batch, self.heads, q.shape[2], kv.shape[3])
        return values.expand(shape).reshape(self.batch, self.heads, stop - start)

    def index(self, n: Node, axis: _Axis, start: int, stop: int, size: int) -> Tensor:
        """Index argument `n` along `axis`, clamped into a dim of `size` as LOAD clamps it."""
        return self.along(n, axis, start, stop).clamp(0, size - 1).long()


def tile_ranges(program: Program, tensors: Sequence[Tensor], params: Sequence, *, B: int, H: int, Q_LEN: int,
                KV_LEN: int, q_block: int, kv_block: int) -> TileRanges:
    """Min/max tables for every one-index or separable load of `program.mask` (see the module docstring).
    `tensors` / `params` are the current captured values."""
    if len(tensors) != len(program.tensors):
        raise ValueError(f"tile_ranges: the program captures {len(program.tensors)} tensors, got {len(tensors)}")
    axes = {"q": _Axis("q", Q_LEN, q_block), "kv": _Axis("kv", KV_LEN, kv_block)}
    extra: list[Tensor] = []
    bounds: dict[Node, Bounds] = {}
    for load_node in ranged_loads(program.mask):
        tables = _tables(load_node, axes, _reader(load_node, B, H, tensors, params))
        if tables is None:
            continue
        slot = len(tensors) + len(extra)
        tables = (*_narrowed(tables[:2]), *tables[2:])
        extra += tables
        tiles = tuple(axis.tile_number for name, axis in axes.items() if name in load_node.deps)
        dtypes = (load_node.dtype, load_node.dtype, DType.int32)
        bounds[load_node] = tuple(_tile_load(slot + i, table, dtypes[i], tiles) for i, table in enumerate(tables))
    return TileRanges(tuple(extra), types.MappingProxyType(bounds).get)


def ranged_loads(mask: Node | None) -> list[Node]:
    """The loads of `mask` that get ranges: one-index and separable loads, operands first."""
    if mask is None:
        return []
    return [n for n in mask.walk() if n.op is Op.LOAD and (len(n.deps & _MOVING) == 1 or separable(n))]


def separable(n: Node) -> bool:
    """True for a LOAD at positions that move with both q and kv through index arguments that each move
    with at most one of them (`sel[h, q_idx // 64, kv_idx // 64]`, not `t[q_idx - kv_idx]`)."""
    return n.op is Op.LOAD and n.deps >= _MOVING and all(len(i.deps & _MOVING) <= 1 for i in n.src)


def _reader(load_node: Node, B: int, H: int, tensors: Sequence[Tensor], params: Sequence) -> _Reader:
    batch = B if "b" in load_node.deps else 1
    heads = H if "h" in load_node.deps else 1
    return _Reader(tensors, params, batch, heads, tensors[load_node.arg].device)


def _tables(load_node: Node, axes: dict[str, _Axis], reader: _Reader) -> tuple[Tensor, ...] | None:
    """(min, max) tables of a ranged load, or None when there is nothing to range over. A float load that
    reaches a NaN ranges over its other values and has a third table, its NaN state (see the module
    docstring): an interval with a NaN end would prove things that do not hold."""
    tensor = reader.tensors[load_node.arg]
    if not tensor.is_floating_point() or not bool(tensor.isnan().any()):
        return _min_max(load_node, axes, reader)
    is_nan = tensor.isnan()
    nan = _min_max(load_node, axes, _replaced(reader, load_node.arg, is_nan.to(tensor.dtype)))
    if nan is None or not bool(nan[1].any()):  # no tile reaches a NaN
        return _min_max(load_node, axes, reader)
    low = _min_max(load_node, axes, _replaced(reader, load_node.arg, tensor.masked_fill(is_nan, math.inf)))
    high = _min_max(load_node, axes, _replaced(reader, load_node.arg, tensor.masked_fill(is_nan, -math.inf)))
    assert low is not None and high is not None
    every, some = nan[0] > 0, nan[1] > 0
    zero = torch.zeros((), dtype=low[0].dtype, device=low[0].device)
    state = some.to(torch.int8) + every.to(torch.int8)
    return torch.where(every, zero, low[0]), torch.where(every, zero, high[1]), state


def _replaced(reader: _Reader, slot: int, tensor: Tensor) -> _Reader:
    """`reader` reading `tensor` in place of captured tensor `slot`."""
    tensors = list(reader.tensors)
    tensors[slot] = tensor
    return dataclasses.replace(reader, tensors=tensors)


def _min_max(load_node: Node, axes: dict[str, _Axis], reader: _Reader) -> tuple[Tensor, Tensor] | None:
    if separable(load_node):
        return _separable_tables(load_node, axes, reader)
    (moving,) = load_node.deps & _MOVING
    axis = axes[moving]
    return _per_tile(reader.along(load_node, axis, 0, axis.length), axis.block) if axis.length else None


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


# -- separable loads -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Side:
    """The arguments of a separable load that move with `axis`: the tensor dims they index (`dims`, `size`
    entries over them) and, at each position where a tile or a run of equal argument values (for some
    b, h) begins (`starts`, in tile `tiles`), their clamped values (`indices`, `[batch, heads, starts]`).
    Within a run every position reads the same entries, so a tile's min and max are those of its starts."""

    axis: _Axis
    dims: tuple[int, ...]
    indices: tuple[Tensor, ...]
    starts: Tensor
    tiles: Tensor
    size: int


def _side(load_node: Node, tensor: Tensor, axis: _Axis, reader: _Reader) -> _Side:
    dims = tuple(d for d, index in enumerate(load_node.src) if axis.name in index.deps)
    indices = [reader.index(load_node.src[d], axis, 0, axis.length, tensor.shape[d]) for d in dims]
    begins = torch.arange(axis.length, device=reader.device) % axis.block == 0
    for index in indices:
        begins[1:] |= (index[..., 1:] != index[..., :-1]).flatten(0, -2).any(dim=0)
    starts = begins.nonzero().squeeze(1)
    size = math.prod(tensor.shape[d] for d in dims)
    return _Side(axis, dims, tuple(i[..., starts] for i in indices), starts, starts // axis.block, size)


@dataclasses.dataclass(frozen=True)
class _Separable:
    """A separable load ranged `outer` side first: the constant and `outer` arguments pick a row of the
    tensor (`rows`: those dims first, the `inner` ones flattened into the row's entries), then the
    `inner` arguments pick an entry of it."""

    load: Node
    tensor: Tensor
    outer: _Side
    inner: _Side
    reader: _Reader

    @property
    def cost(self) -> int:
        """Elements gathered: a row per outer start, an entry per outer tile and inner start."""
        return self.outer.starts.numel() * self.inner.size + self.outer.axis.n_tiles * self.inner.starts.numel()

    @functools.cached_property
    def constant_dims(self) -> tuple[int, ...]:
        return tuple(d for d in range(self.tensor.ndim) if d not in self.outer.dims + self.inner.dims)

    @functools.cached_property
    def constant_indices(self) -> list[Tensor]:
        """The arguments moving with neither axis, `[batch, heads, 1]`: the same at every position."""
        return [self.reader.index(self.load.src[d], self.outer.axis, 0, 1, self.tensor.shape[d])
                for d in self.constant_dims]

    def rows(self, run: slice) -> Tensor:
        """The rows the outer starts `run` pick: `[batch, heads, starts, inner.size]`."""
        count = run.stop - run.start
        index = [i.expand(*i.shape[:2], count) for i in self.constant_indices]
        index += [i[..., run] for i in self.outer.indices]
        laid_out = self.tensor.permute(*self.constant_dims, *self.outer.dims, *self.inner.dims)
        return laid_out[tuple(index)].flatten(3).to(self.load.dtype.torch)

    @functools.cached_property
    def entries(self) -> Tensor:
        """The entry of a row (row-major over `inner.dims`) each inner start picks: `[batch, heads, starts]`."""
        flat = torch.zeros((), dtype=torch.long, device=self.tensor.device)
        for d, index in zip(self.inner.dims, self.inner.indices, strict=True):
            flat = flat * self.tensor.shape[d] + index
        return flat


def _separable_tables(load_node: Node, axes: dict[str, _Axis], reader: _Reader) -> tuple[Tensor, Tensor] | None:
    """`[batch, heads, nQ, nKV]` (min, max) of a separable load over every tile box; the orientation with
    the smaller cost picks rows, a few outer tiles per step so memory stays bounded."""
    tensor = reader.tensors[load_node.arg]
    if axes["q"].length == 0 or axes["kv"].length == 0 or tensor.numel() == 0:
        return None
    sides = _side(load_node, tensor, axes["q"], reader), _side(load_node, tensor, axes["kv"], reader)
    plan = min((_Separable(load_node, tensor, *pair, reader) for pair in (sides, sides[::-1])), key=lambda p: p.cost)
    n_tiles = plan.outer.axis.n_tiles
    edges = torch.searchsorted(plan.outer.tiles, torch.arange(n_tiles + 1, device=reader.device)).tolist()
    widest = max(end - begin for begin, end in itertools.pairwise(edges))
    per_tile = reader.batch * reader.heads * (widest * plan.inner.size + plan.inner.starts.numel())
    step = max(1, _STEP_ELEMENTS // per_tile)
    steps = [_step_tables(plan, first, min(first + step, n_tiles), edges) for first in range(0, n_tiles, step)]
    low, high = (torch.cat(tables, dim=2) for tables in zip(*steps, strict=True))
    if plan.outer.axis.name == "kv":  # built [.., nKV, nQ]
        low, high = low.transpose(2, 3).contiguous(), high.transpose(2, 3).contiguous()
    return low, high


def _step_tables(plan: _Separable, first: int, last: int, edges: list[int]) -> tuple[Tensor, Tensor]:
    """(min, max) `[batch, heads, last - first, inner tiles]` for outer tiles `first .. last - 1`
    (`edges[t]`: the first outer start of tile t)."""
    run = slice(edges[first], edges[last])
    rows, tiles = plan.rows(run), plan.outer.tiles[run] - first
    tables = []
    for reduce in ("amin", "amax"):
        per_tile = _segment_reduce(rows, tiles, last - first, 2, reduce)  # [batch, heads, tiles, inner.size]
        picks = plan.entries.unsqueeze(2).expand(*per_tile.shape[:3], plan.entries.shape[-1])
        tables.append(_segment_reduce(per_tile.gather(3, picks), plan.inner.tiles, plan.inner.axis.n_tiles, 3,
                                      reduce))
    return tables[0], tables[1]


def _segment_reduce(values: Tensor, tiles: Tensor, n_tiles: int, dim: int, reduce: str) -> Tensor:
    """`reduce` ("amin" / "amax") over `dim` of `values` per tile, `tiles` giving each position's tile
    (every tile has a position)."""
    shape, view = list(values.shape), [1] * values.ndim
    shape[dim], view[dim] = n_tiles, -1
    # bools are reduced as bytes (min: all, max: any), which every device's scatter supports
    wide = values.to(torch.uint8) if values.dtype == torch.bool else values
    out = torch.empty(shape, dtype=wide.dtype, device=values.device)
    out.scatter_reduce_(dim, tiles.view(view).expand_as(wide), wide, reduce, include_self=False)
    return out.to(values.dtype)


# -- the tables as IR --------------------------------------------------------------------------------------------


def _narrowed(tables: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """int64 tables as int32 when every value fits: the classifier tracks a value's possible range
    by its dtype, and int32 bounds keep its integer reasoning within limits (document ids are small)."""
    low, high = tables
    info = torch.iinfo(torch.int32)
    if low.dtype != torch.int64 or low.numel() == 0 or low.min() < info.min or high.max() > info.max:
        return low, high
    return low.to(torch.int32), high.to(torch.int32)


def _tile_load(slot: int, table: Tensor, dtype: DType, tiles: tuple[Node, ...]) -> Node:
    """The table's entry for the current tile (`tiles`: its number along each axis the load moves with),
    as a value of the ranged load's dtype."""
    # Tables are [B or 1, H or 1, *n_tiles]; the LOAD clamps b and h, so size-1 dims broadcast.
    entry = load(slot, DType.from_torch(table.dtype), var("b"), var("h"), *tiles)
    return entry if entry.dtype is dtype else node(Op.CAST, dtype, entry)
