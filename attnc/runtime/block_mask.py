"""Block maps in FlexAttention's `BlockMask` layout, and a dense builder for them.

Attention is computed in tiles of `BLOCK_SIZE = (Q_BLOCK, KV_BLOCK)`. For every query block a kernel
needs the key blocks to visit, split in two lists: *partial* blocks (some pairs masked: the kernel
evaluates the mask) and *full* blocks (every pair allowed: the mask is skipped). Blocks on which the
mask is false everywhere are *empty* and never visited. The backward walks the same map from the key
side, so the transposed lists (for each key block, its query blocks) are stored too.

Each list is a count `[B, H, n_rows]` and an index table `[B, H, n_rows, n_cols]` (int32) whose first
`count` entries are the visited blocks in ascending order; the rest is padding (the remaining block
numbers, also ascending), so every entry is a valid block number and a kernel may prefetch past the
end. `B` and `H` may be 1 and then broadcast over the batch / heads.

`build_block_mask` evaluates a mask densely with torch, a bounded chunk at a time, and classifies the
blocks with vectorised reductions; it is the reference builder (generated device kernels produce the
same layout from `BlockMask.from_block_classes`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

# mask_fn(b, h, q_idx, kv_idx) on broadcastable int32 index tensors -> bool tensor (or Python bool).
MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Any]

# Upper bound on mask elements evaluated at once: 2^24 bools is 16 MiB (int32 temporaries 64 MiB),
# so a 16K x 16K mask is built in pieces instead of as 256M elements.
CHUNK_ELEMENTS = 1 << 24


def block_size_pair(block_size: int | tuple[int, int]) -> tuple[int, int]:
    pair = tuple(block_size) if isinstance(block_size, (tuple, list)) else (block_size, block_size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"BLOCK_SIZE must be a positive int or a (q, kv) pair of them, got {block_size!r}")
    return pair  # type: ignore[return-value]


def _ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Bool blocks `[..., n]` -> (count `[...]`, indices `[..., n]`): set blocks first, each part ascending."""
    count = blocks.sum(-1, dtype=torch.int32)
    # A stable descending sort of 1/0 keys puts the set blocks first, both groups in ascending order.
    order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
    return count.contiguous(), order.to(torch.int32).contiguous()


def listed_to_dense(count: Tensor, indices: Tensor) -> Tensor:
    """Inverse of `_ordered`: int32 `[..., n]`, 1 at the first `count` listed blocks."""
    n = indices.shape[-1]
    listed = torch.arange(n, device=indices.device) < count.unsqueeze(-1)
    # Padding entries are sent to a spare column n, which is cut off: duplicates can't clear a real 1.
    target = torch.where(listed, indices.long(), n)
    dense = torch.zeros((*indices.shape[:-1], n + 1), dtype=torch.int32, device=indices.device)
    dense.scatter_(-1, target, 1)
    return dense[..., :n]


class BlockMaskError(ValueError, AssertionError):
    """A BlockMask whose lists are inconsistent. A ValueError, and an AssertionError where FlexAttention's
    BlockMask raises one for the same fault, so code written against either catches it."""


def sliced_mask_mod_error(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Any:
    """The mask_mod of a sliced BlockMask: its lists no longer say which rows and heads it applies to."""
    raise RuntimeError(
        "attnc: a sliced BlockMask has no mask_mod: slicing (bm[...]) keeps the block lists but not the "
        "positions they came from. Set one built from the original mask, e.g. "
        "`sliced.mask_mod = lambda b, h, q, kv: base.mask_mod(b, h, q + offset, kv)`."
    )


@dataclasses.dataclass(eq=False, repr=False)
class BlockMask:
    """Which (query block, key block) tiles attention visits; field names and layout as FlexAttention's.

    kv side: `kv_num_blocks [*batch, nQ]`, `kv_indices [*batch, nQ, nKV]` (partial blocks) and
    `full_kv_num_blocks` / `full_kv_indices` (full blocks; None when the map has no full/partial split).
    q side (the transpose, for the backward): `q_num_blocks [*batch, nKV]`, `q_indices [*batch, nKV, nQ]` and
    `full_q_num_blocks` / `full_q_indices` (None when built with `compute_q_blocks=False`).
    `*batch` is `(B, H)` as built (either may be 1 and broadcast); indexing (`bm[0]`) may drop them, as in
    torch. `mask_mod` and `seq_lengths` may be reassigned (FlexAttention's decoding idiom); the lists are
    checked again wherever a kernel reads them.
    """

    seq_lengths: tuple[int, int]
    kv_num_blocks: Tensor
    kv_indices: Tensor
    full_kv_num_blocks: Tensor | None
    full_kv_indices: Tensor | None
    q_num_blocks: Tensor | None
    q_indices: Tensor | None
    full_q_num_blocks: Tensor | None
    full_q_indices: Tensor | None
    BLOCK_SIZE: tuple[int, int] = (128, 128)
    mask_mod: Callable | None = None

    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = (
        "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
        "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices",
    )

    def __post_init__(self) -> None:
        self.BLOCK_SIZE = block_size_pair(self.BLOCK_SIZE)  # accept an int, as torch does
        self.seq_lengths = _lengths(self.seq_lengths)
        self.check_invariants()

    @classmethod
    def from_block_classes(
        cls, partial: Tensor, full: Tensor | None, *, BLOCK_SIZE: int | tuple[int, int],
        seq_lengths: tuple[int, int], mask_mod: Callable | None = None,
    ) -> BlockMask:
        """Build from bool block classifications `[B, H, nQ, nKV]` (partial and full must not overlap)."""
        kv_num, kv_idx = _ordered(partial)
        q_num, q_idx = _ordered(partial.transpose(-2, -1))
        full_kv = _ordered(full) if full is not None else (None, None)
        full_q = _ordered(full.transpose(-2, -1)) if full is not None else (None, None)
        built = cls(
            (int(seq_lengths[0]), int(seq_lengths[1])), kv_num, kv_idx, *full_kv, q_num, q_idx, *full_q,
            BLOCK_SIZE, mask_mod,  # type: ignore[arg-type]  # __post_init__ makes it a pair
        )
        built.check_lengths()
        return built

    @classmethod
    def from_kv_blocks(
        cls, kv_num_blocks: Tensor, kv_indices: Tensor, full_kv_num_blocks: Tensor | None = None,
        full_kv_indices: Tensor | None = None, BLOCK_SIZE: int | tuple[int, int] = 128,
        mask_mod: Callable | None = None, seq_lengths: tuple[int, int] | None = None,
        compute_q_blocks: bool = True,
    ) -> BlockMask:
        """FlexAttention's constructor from kv-side lists (`[*batch, nQ]` counts, `[*batch, nQ, nKV]` indices;
        int32, as torch requires). The q-side lists are derived when `compute_q_blocks`; `seq_lengths`
        defaults to whole blocks."""
        _check_listed("kv_num_blocks", "kv_indices", kv_num_blocks, kv_indices)
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise BlockMaskError("BlockMask.from_kv_blocks: full_kv_num_blocks and full_kv_indices must be given "
                                 "together (or both omitted)")
        if full_kv_num_blocks is not None:
            _check_listed("full_kv_num_blocks", "full_kv_indices", full_kv_num_blocks, full_kv_indices)
        block = block_size_pair(BLOCK_SIZE)
        if seq_lengths is None:
            seq_lengths = (kv_indices.shape[-2] * block[0], kv_indices.shape[-1] * block[1])
        q_side: tuple[Tensor | None, ...] = (None, None, None, None)
        if compute_q_blocks:
            q_side = (*_transposed(kv_num_blocks, kv_indices),
                      *(_transposed(full_kv_num_blocks, full_kv_indices) if full_kv_num_blocks is not None
                        else (None, None)))
        return cls(seq_lengths, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,  # type: ignore[arg-type]
                   *q_side, block, mask_mod)

    # -- invariants ----------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Shapes and dtypes of the lists agree with each other, and they cover the sequence lengths."""
        if not isinstance(self.kv_indices, Tensor) or self.kv_indices.dim() < 2:
            raise BlockMaskError("BlockMask: kv_indices must be a tensor with at least 2 dimensions "
                                 "([*batch, query blocks, key blocks])")
        *batch, n_q, n_kv = self.kv_indices.shape
        expected = {
            "kv_num_blocks": (*batch, n_q), "kv_indices": (*batch, n_q, n_kv),
            "full_kv_num_blocks": (*batch, n_q), "full_kv_indices": (*batch, n_q, n_kv),
            "q_num_blocks": (*batch, n_kv), "q_indices": (*batch, n_kv, n_q),
            "full_q_num_blocks": (*batch, n_kv), "full_q_indices": (*batch, n_kv, n_q),
        }
        for name, shape in expected.items():
            _check_tensor(name, getattr(self, name), shape)
        for count, indices in (("full_kv_num_blocks", "full_kv_indices"), ("q_num_blocks", "q_indices"),
                               ("full_q_num_blocks", "full_q_indices")):
            if (getattr(self, count) is None) != (getattr(self, indices) is None):
                raise BlockMaskError(f"BlockMask: {count} and {indices} must be given together (or both None)")
        if self.full_kv_num_blocks is None and self.full_q_num_blocks is not None:
            raise BlockMaskError("BlockMask: full_q lists without full_kv lists; the kv-side and q-side "
                                 "full-block lists must both be given or both None")
        if self.q_num_blocks is not None and (self.full_kv_num_blocks is None) != (self.full_q_num_blocks is None):
            raise BlockMaskError("BlockMask: the kv-side and q-side full-block lists must both be given or both None")

    def check_lengths(self) -> None:
        """The lists cover the sequences as a kernel reads them: a list row for every query block (more rows
        are ignored: `bm[:, :, rows]` keeps seq_lengths) and exactly the key blocks of the keys (more would
        send a kernel past their end)."""
        (need_q, need_kv), (n_q, n_kv) = self.num_blocks, tuple(self.kv_indices.shape[-2:])
        if n_q < need_q or n_kv != need_kv:
            raise BlockMaskError(f"BlockMask: seq_lengths {self.seq_lengths} with BLOCK_SIZE {self.BLOCK_SIZE} make "
                                 f"{(need_q, need_kv)} blocks, but kv_indices has {(n_q, n_kv)}: set seq_lengths to "
                                 "the lengths the lists were built for, or cut the map with BlockMask.adjust")

    # -- geometry ------------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> tuple[int, int]:
        """(query blocks, key blocks): the sequence lengths divided by the block size, rounded up."""
        (q_len, kv_len), (q_block, kv_block) = self.seq_lengths, self.BLOCK_SIZE
        return math.ceil(q_len / q_block), math.ceil(kv_len / kv_block)

    @property
    def shape(self) -> tuple[int, ...]:
        """(*batch, Q_LEN, KV_LEN): (B, H, Q_LEN, KV_LEN) as built; B and H are 1 where the map broadcasts."""
        return (*self.kv_indices.shape[:-2], *self.seq_lengths)

    def numel(self) -> int:
        return math.prod(self.shape)

    # -- views ---------------------------------------------------------------------------------------

    def to_dense(self) -> Tensor:
        """int32 `[*batch, nQ, nKV]`: 1 where a block is visited (partial or full), 0 where it is skipped."""
        dense = listed_to_dense(self.kv_num_blocks, self.kv_indices)
        if self.full_kv_num_blocks is not None:
            dense = dense | listed_to_dense(self.full_kv_num_blocks, self.full_kv_indices)
        return dense

    def sparsity(self) -> float:
        """Percent of the score matrix skipped, weighted as FlexAttention weights it: every visited block
        counts its full BLOCK_SIZE area (so a ragged last block counts as a whole one)."""
        visited = int(self.kv_num_blocks.sum())
        if self.full_kv_num_blocks is not None:
            visited += int(self.full_kv_num_blocks.sum())
        total = self.numel()
        return 100.0 * (1.0 - visited * self.BLOCK_SIZE[0] * self.BLOCK_SIZE[1] / total) if total else 0.0

    def to(self, device: torch.device | str) -> BlockMask:
        """A copy with every tensor on `device`."""
        moved = {name: getattr(self, name) for name in self.TENSOR_FIELDS}
        return dataclasses.replace(self, **{k: v if v is None else v.to(device) for k, v in moved.items()})

    def as_tuple(self, flatten: bool = True) -> tuple[Any, ...]:
        """FlexAttention's flat order: lengths, the eight block tensors, its four deterministic-dQ entries
        (None: attnc's backward needs none), the block size, the mask mod."""
        lengths = self.seq_lengths if flatten else (self.seq_lengths,)
        block = self.BLOCK_SIZE if flatten else (self.BLOCK_SIZE,)
        return (*lengths, *(getattr(self, name) for name in self.TENSOR_FIELDS), None, None, None, None, *block,
                self.mask_mod)

    def __getitem__(self, index: Any) -> BlockMask:
        """Select batches, heads and query blocks, as FlexAttention's `bm[b]`, `bm[:, h]`, `bm[:, :, rows]`:
        an int keeps its dimension (with size 1, as torch's does), the q-side lists are derived again,
        `seq_lengths` is kept and the mask_mod is reset (it no longer knows which positions the rows are)."""
        index = index if isinstance(index, tuple) else (index,)
        leading = self.kv_num_blocks.dim()
        if len(index) > leading:
            raise IndexError(f"BlockMask: too many indices ({len(index)}) for lists with {leading} leading "
                             "dimensions (batch, heads, query blocks)")
        index = tuple(_kept(i, n) for i, n in zip(index, self.kv_num_blocks.shape, strict=False))
        kv_num, kv_idx = self.kv_num_blocks[index], self.kv_indices[index]
        full = (None, None)
        if self.full_kv_num_blocks is not None:
            full = (self.full_kv_num_blocks[index], self.full_kv_indices[index])  # type: ignore[index]
        return BlockMask.from_kv_blocks(kv_num, kv_idx, *full, BLOCK_SIZE=self.BLOCK_SIZE,
                                        mask_mod=sliced_mask_mod_error, seq_lengths=self.seq_lengths,
                                        compute_q_blocks=self.q_indices is not None)

    def _adjust(self, new_q_len: int, new_kv_len: int) -> BlockMask:
        """The map cut to shorter lengths (FlexAttention's `_adjust`): the leading query blocks and, in each,
        the listed key blocks that still exist."""
        return self.adjust(new_q_len, new_kv_len)

    def adjust(self, new_q_len: int, new_kv_len: int) -> BlockMask:
        """This map for sequences of `new_q_len` queries and `new_kv_len` keys, no longer than it was built
        for: the leading query blocks, and in each the listed key blocks that still exist."""
        rows, cols = math.ceil(new_q_len / self.BLOCK_SIZE[0]), math.ceil(new_kv_len / self.BLOCK_SIZE[1])
        n_q, n_kv = self.kv_indices.shape[-2:]
        if rows > n_q or cols > n_kv:
            raise BlockMaskError(f"BlockMask.adjust: lengths {(new_q_len, new_kv_len)} need {(rows, cols)} blocks "
                                 f"but the map has {(n_q, n_kv)}; build a new one for longer sequences")
        full = (None, None)
        if self.full_kv_num_blocks is not None:
            full = _cut(self.full_kv_num_blocks, self.full_kv_indices, rows, cols)  # type: ignore[arg-type]
        return BlockMask.from_kv_blocks(*_cut(self.kv_num_blocks, self.kv_indices, rows, cols), *full,
                                        BLOCK_SIZE=self.BLOCK_SIZE, mask_mod=self.mask_mod,
                                        seq_lengths=(new_q_len, new_kv_len),
                                        compute_q_blocks=self.q_indices is not None)

    def to_string(self, grid_size: int | tuple[int, int] = (20, 20), limit: int = 4) -> str:
        """The block pattern drawn in text, as FlexAttention draws it: per (batch, head) a grid of at most
        `grid_size` cells, each two characters: "█" every block visited, " " none, "░" some. `grid_size`
        -1 draws every block; `limit` bounds how many (batch, head) pairs are drawn."""
        dense = self.to_dense().cpu()
        *batch, rows, cols = dense.shape
        if grid_size == -1:
            max_rows, max_cols = rows, cols
        elif isinstance(grid_size, int):
            max_rows = max_cols = grid_size
        else:
            max_rows, max_cols = grid_size
        row_step, col_step = max(1, -(-rows // max_rows)), max(1, -(-cols // max_cols))
        drawings = []
        for n, position in enumerate(itertools.product(*(range(d) for d in batch))):
            if n == limit:
                drawings += ["...", "To print out more, set BlockMask.to_string(limit=N)",
                             "You can also index (BlockMask[batch, head]) to choose a specific batch or head"]
                break
            drawings.append(_draw(dense[position], position, row_step, col_step))
        return "\n".join(drawings)

    def __str__(self) -> str:
        return f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, \n{self.to_string().strip()}\n)"

    def __repr__(self) -> str:
        name = getattr(self.mask_mod, "__name__", repr(self.mask_mod))
        return (f"BlockMask(shape={self.shape}, BLOCK_SIZE={self.BLOCK_SIZE}, "
                f"sparsity={self.sparsity():.2f}%, mask_mod={name})")


def as_batched(block_mask: Any) -> Any:
    """The map as kernels read it, checked again (its `seq_lengths` or `mask_mod` may have been reassigned
    since it was built): an attnc BlockMask whose lists have both leading dimensions `(B, H)`; one indexed
    with an int (`bm[0]`, ours or torch's) gets them back as broadcast dimensions of size 1."""
    missing = max(0, 3 - block_mask.kv_num_blocks.dim())

    def widened(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape((1,) * missing + tuple(t.shape))

    lists = {name: widened(getattr(block_mask, name, None)) for name in BlockMask.TENSOR_FIELDS}
    batched = BlockMask(tuple(block_mask.seq_lengths), **lists, BLOCK_SIZE=block_size_pair(block_mask.BLOCK_SIZE),
                        mask_mod=block_mask.mask_mod)
    batched.check_lengths()
    return batched


def _kept(index: Any, size: int) -> Any:
    """An int index as a one-element slice, so the dimension stays."""
    if isinstance(index, int) and not isinstance(index, bool):
        if not -size <= index < size:
            raise IndexError(f"BlockMask: index {index} is out of range for a dimension of size {size}")
        return slice(index % size, index % size + 1)
    return index


def _draw(dense: Tensor, position: tuple[int, ...], row_step: int, col_step: int) -> str:
    lines = [f"{position}"]
    for r in range(0, dense.shape[0], row_step):
        cells = []
        for c in range(0, dense.shape[1], col_step):
            share = dense[r:r + row_step, c:c + col_step].float().mean().item()
            cells.append("██" if share == 1 else "  " if share == 0 else "░░")
        lines.append("".join(cells))
    return "\n".join(lines) + "\n"


def _lengths(seq_lengths: Any) -> tuple[int, int]:
    pair = tuple(seq_lengths)
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair):
        raise BlockMaskError("BlockMask: seq_lengths must be two non-negative ints (Q_LEN, KV_LEN), "
                             f"got {seq_lengths!r}")
    return pair  # type: ignore[return-value]


def _check_listed(count_name: str, indices_name: str, count: Any, indices: Any) -> None:
    for name, value in ((count_name, count), (indices_name, indices)):
        if not isinstance(value, Tensor) or value.dtype != torch.int32:
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise BlockMaskError(f"BlockMask: {name} must be an int32 tensor, got {kind}")
    if indices.dim() < 2 or tuple(count.shape) != tuple(indices.shape[:-1]):
        raise BlockMaskError(f"BlockMask: {indices_name} must be [*batch, query blocks, key blocks] and {count_name} "
                             f"its first dimensions; got {tuple(indices.shape)} and {tuple(count.shape)}")
    n = indices.shape[-1]
    if count.numel() and (int(count.min()) < 0 or int(count.max()) > n):
        raise BlockMaskError(f"BlockMask: {count_name} must lie in [0, {n}] (the key blocks per row)")
    listed = torch.arange(n, device=indices.device) < count.unsqueeze(-1)
    if bool(((indices < 0) | (indices >= n))[listed].any()):
        raise BlockMaskError(f"BlockMask: {indices_name} lists a block outside [0, {n})")


def _transposed(count: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    return _ordered(listed_to_dense(count, indices).transpose(-2, -1).bool())


def _cut(count: Tensor, indices: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """Lists of the first `rows` query blocks over the first `cols` key blocks."""
    dense = listed_to_dense(count, indices)[..., :rows, :cols].bool()
    return _ordered(dense)


def _check_tensor(name: str, value: Tensor | None, shape: tuple[int, ...]) -> None:
    if value is None:
        if name in ("kv_num_blocks", "kv_indices"):
            raise BlockMaskError(f"BlockMask: {name} is required")
        return
    if not isinstance(value, Tensor) or value.dtype != torch.int32 or tuple(value.shape) != shape:
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise BlockMaskError(f"BlockMask: {name} must be int32 of shape {shape}, got {got}")


# -- the dense builder -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Grid:
    """The problem a block map is built for: batch, heads, lengths, block size, device."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    q_block: int
    kv_block: int
    device: torch.device

    @property
    def n_q(self) -> int:
        return math.ceil(self.q_len / self.q_block)

    @property
    def n_kv(self) -> int:
        return math.ceil(self.kv_len / self.kv_block)

    def index(self, dim: int, start: int, stop: int) -> Tensor:
        """int32 indices start..stop-1 laid along `dim` of a 4-d broadcast shape."""
        shape = [1, 1, 1, 1]
        shape[dim] = stop - start
        return torch.arange(start, stop, dtype=torch.int32, device=self.device).view(shape)


def build_block_mask(
    mask_fn: MaskFn, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, *,
    device: torch.device | str | None = None, BLOCK_SIZE: int | tuple[int, int] = 128,
    mask_mod: Callable | None = None, chunk_elements: int = CHUNK_ELEMENTS,
) -> BlockMask:
    """Classify every block by evaluating `mask_fn(b, h, q_idx, kv_idx)` densely, in bounded chunks.

    The index tensors are int32 of shapes `[B,1,1,1]`, `[1,H,1,1]`, `[1,1,q,1]`, `[1,1,1,kv]` and never
    exceed the lengths (so a mask may index tensors of length Q_LEN / KV_LEN); the result must be bool
    and broadcastable to them. A block is full only if it lies inside `[0, Q_LEN) x [0, KV_LEN)` and the
    mask holds on all of it, so a ragged last block is never full. `B` / `H` None mean 1 (broadcast).
    `device` None means CUDA when available, else CPU. `mask_mod` (default `mask_fn`) is kept on the
    result for kernels that trace it.
    """
    q_block, kv_block = block_size_pair(BLOCK_SIZE)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    grid = _Grid(B or 1, H or 1, Q_LEN, KV_LEN, q_block, kv_block, torch.device(device))
    partial, full = _classify(mask_fn, grid, chunk_elements)
    return BlockMask.from_block_classes(
        partial, full, BLOCK_SIZE=(q_block, kv_block), seq_lengths=(Q_LEN, KV_LEN),
        mask_mod=mask_fn if mask_mod is None else mask_mod,
    )


def _classify(mask_fn: MaskFn, grid: _Grid, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """(partial, full) bool `[B, H, nQ, nKV]`, filled one chunk of q blocks x kv blocks at a time."""
    shape = (grid.batch, grid.heads, grid.n_q, grid.n_kv)
    partial = torch.zeros(shape, dtype=torch.bool, device=grid.device)
    full = torch.zeros(shape, dtype=torch.bool, device=grid.device)
    q_step, kv_step = _chunk_steps(grid, chunk_elements)
    for q0 in range(0, grid.n_q, q_step):
        for kv0 in range(0, grid.n_kv, kv_step):
            q1, kv1 = min(q0 + q_step, grid.n_q), min(kv0 + kv_step, grid.n_kv)
            any_set, all_set = _classify_chunk(mask_fn, grid, (q0, q1), (kv0, kv1))
            partial[:, :, q0:q1, kv0:kv1] = any_set & ~all_set
            full[:, :, q0:q1, kv0:kv1] = all_set
    return partial, full


def _chunk_steps(grid: _Grid, chunk_elements: int) -> tuple[int, int]:
    """Blocks per chunk (q, kv): whole key rows when they fit, so most masks need one chunk per q range."""
    per_block = grid.batch * grid.heads * grid.q_block * grid.kv_block
    kv_step = max(1, min(grid.n_kv, chunk_elements // per_block))
    q_step = max(1, min(grid.n_q, chunk_elements // (per_block * kv_step)))
    return q_step, kv_step


def _classify_chunk(
    mask_fn: MaskFn, grid: _Grid, q_blocks: tuple[int, int], kv_blocks: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(any, all) over each block of the chunk; out-of-range pairs count as masked."""
    (q0, q1), (kv0, kv1) = q_blocks, kv_blocks
    q_start, kv_start = q0 * grid.q_block, kv0 * grid.kv_block
    q_stop, kv_stop = min(q1 * grid.q_block, grid.q_len), min(kv1 * grid.kv_block, grid.kv_len)
    allowed = mask_fn(
        grid.index(0, 0, grid.batch), grid.index(1, 0, grid.heads),
        grid.index(2, q_start, q_stop), grid.index(3, kv_start, kv_stop),
    )
    rows, cols = (q1 - q0) * grid.q_block, (kv1 - kv0) * grid.kv_block
    padded = torch.zeros((grid.batch, grid.heads, rows, cols), dtype=torch.bool, device=grid.device)
    padded[:, :, : q_stop - q_start, : kv_stop - kv_start] = _as_bool(allowed)
    blocks = padded.view(grid.batch, grid.heads, q1 - q0, grid.q_block, kv1 - kv0, grid.kv_block)
    return blocks.any(dim=5).any(dim=3), blocks.all(dim=5).all(dim=3)


def _as_bool(allowed: Any) -> Tensor | bool:
    if isinstance(allowed, bool):
        return allowed
    if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
        kind = allowed.dtype if isinstance(allowed, Tensor) else type(allowed).__name__
        raise TypeError(
            f"a mask_mod must return a bool tensor, got {kind}; combine conditions with `&` / `|`, "
            "not `and` / `or`"
        )
    return allowed
