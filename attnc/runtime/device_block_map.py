"""Launch the generated block-map builder (`attnc.codegen.block_map`): block classes on the device.

The builder writes int8 classes `[B, H, nQ, nKV]` (EMPTY 0, PARTIAL 1, FULL 2), the same array
`sparsity.classify_blocks` computes on the host from the mask's structure; `sparsity.split_classes` and
`BlockMask.from_block_classes` turn either into the BlockMask layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import triton

from attnc.runtime.launch import capture_args

# Pairs evaluated at once per undecided block, with 8 warps: no spills at sm_90 for dense mask tensors,
# relative tables and document ids, where 128 x 128 with 4 warps spills.
_SUB_TILE = 64
# Key blocks per program: amortises the per-program setup, keeps a grid of thousands of programs.
_KV_BLOCKS_PER_PROGRAM = 8


def _sub_tile(block: int, interpret: bool) -> int:
    # The interpreter pays per operation, not per element: one sub-tile covering the whole block is fastest.
    limit = triton.next_power_of_2(block) if interpret else _SUB_TILE
    return min(limit, triton.next_power_of_2(block))


def device_block_classes(kernel: Any, tensors: Sequence[torch.Tensor], params: Sequence[int | float], *, B: int,
                         H: int, Q_LEN: int, KV_LEN: int, q_block: int, kv_block: int, device: torch.device,
                         interpret: bool) -> torch.Tensor:
    """Run `kernel` (from `generate_block_map`) over every block of a `[B, H, Q_LEN, KV_LEN]` mask."""
    nq, nkv = triton.cdiv(Q_LEN, q_block), triton.cdiv(KV_LEN, kv_block)
    classes = torch.empty((B, H, nq, nkv), dtype=torch.int8, device=device)
    if classes.numel() == 0:
        return classes
    consts = launch_constants(q_block, kv_block, n_kv_blocks=nkv, interpret=interpret)
    grid = (nq, triton.cdiv(nkv, consts["KV_BLOCKS_PER_PROGRAM"]), B * H)
    kernel[grid](classes, *classes.stride()[:3], H, Q_LEN, KV_LEN, nkv, *capture_args(tensors, params), **consts)
    return classes


def launch_constants(q_block: int, kv_block: int, *, n_kv_blocks: int, interpret: bool) -> dict[str, int]:
    """The builder's constexprs and warps for blocks of q_block x kv_block."""
    return {"Q_BLOCK": q_block, "KV_BLOCK": kv_block, "SUB_M": _sub_tile(q_block, interpret),
            "SUB_N": _sub_tile(kv_block, interpret),
            "KV_BLOCKS_PER_PROGRAM": min(_KV_BLOCKS_PER_PROGRAM, n_kv_blocks), "num_warps": 8}
