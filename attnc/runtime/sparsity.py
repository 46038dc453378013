"""Block classification from the mask's structure: the engine behind `create_block_mask` and `tile_stats`.

Each (query block, key block) box is classified EMPTY / PARTIAL / FULL by the tile test of
`attnc.ir.tiles`, evaluated on the host for all boxes at once (O(blocks), never O(Q_LEN * KV_LEN)).
Masks that read tensors at query- or key-dependent positions are classified from per-block minima and
maxima of those reads (`tile_ranges`): reads that move with one index (document ids, lengths) in
O(Q_LEN + KV_LEN), separable reads whose index arguments each move with one index (block-selection
tables `sel[h, q_idx // 64, kv_idx // 64]`) in O(Q_LEN * F + nQ * KV_LEN) for rows of F entries. Only a
mask with a read at an argument that moves with both q and kv (`t[q_idx - kv_idx]`) is evaluated densely.

`with_block_sparsity` goes the other way: a BlockMask as IR, for the dense computations (the reference
backend, the deterministic captured gradients) that must visit exactly the blocks the kernels visit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnc.ir.dtypes import DType
from attnc.ir.node import Node, const, load, node, var
from attnc.ir.ops import Op
from attnc.ir.program import Program, TensorSpec
from attnc.ir.tiles import FULL, PARTIAL, classify_grid
from attnc.runtime.block_mask import block_size_pair
from attnc.runtime.tile_ranges import separable, tile_ranges

# query-block rows classified per step, so that intermediate tensors stay small at any length
_CHUNK_BLOCKS = 1 << 22


def analysable(mask: Node) -> bool:
    """True unless the mask reads a tensor at a position that depends on both q and kv through one index
    argument (a separable read, each argument moving with one of them, is ranged per block)."""
    return not any(n.op is Op.LOAD and n.deps >= {"q", "kv"} and not separable(n) for n in mask.walk())


def reads_data(mask: Node) -> bool:
    """True if the mask reads a tensor at a q- or kv-dependent position (its tiles need per-block value
    ranges, or a dense evaluation when one index argument depends on both)."""
    return any(n.op is Op.LOAD and n.deps & {"q", "kv"} for n in mask.walk())


def broadcast_size(mask: Node, index: str, size: int) -> int:
    """`size` if the mask depends on index variable `index` ("b" or "h"), else 1 (the map broadcasts)."""
    return size if index in mask.deps else 1


def block_grid(count: int, block: int, length: int, device: torch.device, dim: int) -> tuple[torch.Tensor, ...]:
    """Inclusive bounds of `count` blocks of `block` positions, clipped to `length`, shaped to broadcast
    along `dim` of [B, H, nQ, nKV]."""
    shape = [1, 1, 1, 1]
    shape[dim] = count
    lo = torch.arange(count, device=device, dtype=torch.int32) * block
    hi = torch.clamp(lo + block, max=length) - 1
    return lo.view(shape), hi.view(shape)


def classify_blocks(program: Program, tensors: Sequence[torch.Tensor], params: Sequence[int | float], *, B: int,
                    H: int, Q_LEN: int, KV_LEN: int, q_block: int, kv_block: int,
                    device: torch.device) -> torch.Tensor:
    """int8 classes [B, H, nQ, nKV] (EMPTY 0, PARTIAL 1, FULL 2) of the blocks of `program.mask`."""
    nq, nkv = -(-Q_LEN // q_block), -(-KV_LEN // kv_block)
    if program.mask is None or nq == 0 or nkv == 0:  # no mask, or no blocks to classify
        return torch.full((B, H, nq, nkv), FULL, dtype=torch.int8, device=device)
    ranges = tile_ranges(program, tensors, params, B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, q_block=q_block,
                         kv_block=kv_block)
    all_tensors = [*tensors, *ranges.extra_tensors]
    b = torch.arange(B, device=device, dtype=torch.int32).view(B, 1, 1, 1)
    h = torch.arange(H, device=device, dtype=torch.int32).view(1, H, 1, 1)
    kv_lo, kv_hi = block_grid(nkv, kv_block, KV_LEN, device, 3)
    q_lo, q_hi = block_grid(nq, q_block, Q_LEN, device, 2)
    rows = max(1, _CHUNK_BLOCKS // max(1, nkv * B * H))
    chunks = []
    for start in range(0, nq, rows):
        lo, hi = q_lo[:, :, start:start + rows], q_hi[:, :, start:start + rows]
        classes = classify_grid(program.mask, b=b, h=h, q_lo=lo, q_hi=hi, kv_lo=kv_lo, kv_hi=kv_hi,
                                tensors=all_tensors, params=params, load_range=ranges.load_range)
        chunks.append(classes.expand(B, H, lo.shape[2], nkv))
    return torch.cat(chunks, dim=2).to(torch.int8)


def split_classes(classes: torch.Tensor, *, Q_LEN: int, KV_LEN: int, q_block: int,
                  kv_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool block maps in the BlockMask convention: a block that sticks out past the
    sequence end is never full, only partial."""
    nq, nkv = classes.shape[-2:]
    q_inside = (torch.arange(nq, device=classes.device) + 1) * q_block <= Q_LEN
    kv_inside = (torch.arange(nkv, device=classes.device) + 1) * kv_block <= KV_LEN
    inside = q_inside[:, None] & kv_inside[None, :]
    full = (classes == FULL) & inside
    partial = (classes == PARTIAL) | ((classes == FULL) & ~inside)
    return partial, full


def with_block_sparsity(program: Program, tensors: list[torch.Tensor],
                        block_mask: Any) -> tuple[Program, list[torch.Tensor]]:
    """The program whose mask also requires the (q, kv) block to be listed in `block_mask` (read from its dense
    map, one more captured tensor): dense evaluation then means exactly what the kernels compute, which visit
    listed blocks only."""
    q_block, kv_block = block_size_pair(block_mask.BLOCK_SIZE)
    slot = len(tensors)
    index = (var("b"), var("h"), _div(var("q"), q_block), _div(var("kv"), kv_block))
    listed = node(Op.NE, DType.bool, load(slot, DType.int32, *index), const(0, DType.int32))
    mask = listed if program.mask is None else node(Op.AND, DType.bool, program.mask, listed)
    spec = TensorSpec(DType.int32, 4)
    return program.replace(mask=mask, tensors=(*program.tensors, spec)), [*tensors, block_mask.to_dense()]


def _div(index: Node, block: int) -> Node:
    return node(Op.FLOORDIV, DType.int32, index, const(block, DType.int32))
