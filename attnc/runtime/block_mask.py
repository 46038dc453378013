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


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BlockMask:
    """Which (query block, key block) tiles attention visits; field names and layout as FlexAttention's.

    kv side: `kv_num_blocks [B, H, nQ]`, `kv_indices [B, H, nQ, nKV]` (partial blocks) and
    `full_kv_num_blocks` / `full_kv_indices` (full blocks; None when the map has no full/partial split).
    q side (the transpose, for the backward): `q_num_blocks [B, H, nKV]`, `q_indices [B, H, nKV, nQ]` and
    `full_q_num_blocks` / `full_q_indices`.
    """

    seq_lengths: tuple[int, int]
    kv_num_blocks: Tensor
    kv_indices: Tensor
    full_kv_num_blocks: Tensor | None
    full_kv_indices: Tensor | None
    q_num_blocks: Tensor
    q_indices: Tensor
    full_q_num_blocks: Tensor | None
    full_q_indices: Tensor | None
    BLOCK_SIZE: tuple[int, int]
    mask_mod: Callable | None = None

    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = (
        "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
        "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "BLOCK_SIZE", block_size_pair(self.BLOCK_SIZE))  # accept an int, as torch does
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
        return cls(
            (int(seq_lengths[0]), int(seq_lengths[1])), kv_num, kv_idx, *full_kv, q_num, q_idx, *full_q,
            BLOCK_SIZE, mask_mod,  # type: ignore[arg-type]  # __post_init__ makes it a pair
        )

    # -- invariants ----------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Shapes, dtypes and block counts agree with the sequence lengths and block size."""
        n_q, n_kv = self.num_blocks
        batch_heads = tuple(self.kv_num_blocks.shape[:2])
        expected = {
            "kv_num_blocks": (*batch_heads, n_q), "kv_indices": (*batch_heads, n_q, n_kv),
            "full_kv_num_blocks": (*batch_heads, n_q), "full_kv_indices": (*batch_heads, n_q, n_kv),
            "q_num_blocks": (*batch_heads, n_kv), "q_indices": (*batch_heads, n_kv, n_q),
            "full_q_num_blocks": (*batch_heads, n_kv), "full_q_indices": (*batch_heads, n_kv, n_q),
        }
        for name, shape in expected.items():
            _check_tensor(name, getattr(self, name), shape)
        if (self.full_kv_num_blocks is None) != (self.full_q_num_blocks is None):
            raise ValueError("BlockMask: the kv-side and q-side full-block lists must both be given or both None")

    # -- geometry ------------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> tuple[int, int]:
        """(query blocks, key blocks): the sequence lengths divided by the block size, rounded up."""
        (q_len, kv_len), (q_block, kv_block) = self.seq_lengths, self.BLOCK_SIZE
        return math.ceil(q_len / q_block), math.ceil(kv_len / kv_block)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, Q_LEN, KV_LEN); B and H are 1 where the map broadcasts."""
        batch, heads = self.kv_num_blocks.shape[:2]
        return (batch, heads, *self.seq_lengths)

    def numel(self) -> int:
        return math.prod(self.shape)

    # -- views ---------------------------------------------------------------------------------------

    def to_dense(self) -> Tensor:
        """int32 `[B, H, nQ, nKV]`: 1 where a block is visited (partial or full), 0 where it is skipped."""
        dense = listed_to_dense(self.kv_num_blocks, self.kv_indices)
        if self.full_kv_num_blocks is not None:
            dense = dense | listed_to_dense(self.full_kv_num_blocks, self.full_kv_indices)
        return dense

    def sparsity(self) -> float:
        """Percent of blocks skipped. Counted in blocks, so a ragged last block weighs as a whole one."""
        visited = int(self.kv_num_blocks.sum())
        if self.full_kv_num_blocks is not None:
            visited += int(self.full_kv_num_blocks.sum())
        total = math.prod(self.kv_indices.shape)
        return 100.0 * (1.0 - visited / total) if total else 0.0

    def to(self, device: torch.device | str) -> BlockMask:
        """A copy with every tensor on `device`."""
        moved = {name: getattr(self, name) for name in self.TENSOR_FIELDS}
        return dataclasses.replace(self, **{k: v if v is None else v.to(device) for k, v in moved.items()})

    def as_tuple(self, flatten: bool = True) -> tuple[Any, ...]:
        """FlexAttention's flat order: lengths, the eight block tensors, the block size, the mask mod."""
        lengths = self.seq_lengths if flatten else (self.seq_lengths,)
        block = self.BLOCK_SIZE if flatten else (self.BLOCK_SIZE,)
        return (*lengths, *(getattr(self, name) for name in self.TENSOR_FIELDS), *block, self.mask_mod)

    def __repr__(self) -> str:
        name = getattr(self.mask_mod, "__name__", repr(self.mask_mod))
        return (f"BlockMask(shape={self.shape}, BLOCK_SIZE={self.BLOCK_SIZE}, "
                f"sparsity={self.sparsity():.2f}%, mask_mod={name})")


def _check_tensor(name: str, value: Tensor | None, shape: tuple[int, ...]) -> None:
    if value is None:
        if name in ("kv_num_blocks", "kv_indices", "q_num_blocks", "q_indices"):
            raise ValueError(f"BlockMask: {name} is required")
        return
    if value.dtype != torch.int32 or tuple(value.shape) != shape:
        raise ValueError(
            f"BlockMask: {name} must be int32 of shape {shape}, got {value.dtype} {tuple(value.shape)}"
        )


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
