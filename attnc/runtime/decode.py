"""Split-KV decoding with GQA packing (flash-decoding): the tile lists, the split count, the launch of the
generated decode kernel (attnc.codegen.decode) and the exact combine of its splits.

A decode step has few query rows, so the forward's grid (query tiles x batch x query heads) leaves most of a
GPU idle and reads each cache element once per query head. Here one program owns a (batch, kv head, split):
its rows are every query head of the GQA group times every query row, so K and V are read once per kv head,
and the keys are spread over `splits` programs whose partial results merge exactly through their lse.

Which key tiles a program reads comes from the block classes of the mask (`attnc.runtime.sparsity`, the
engine of `create_block_mask`: closed forms, and per-block value ranges for masks that read tensors such as
document ids), united over the rows of the group: a tile is listed when any row may attend into it, marked
full when every row attends to all of it. The lists hold only live tiles, so the splits share the work that
exists (a sliding window over a long cache reads only its window's tiles) and no split reads a skipped tile.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import triton

from attnc import arguments
from attnc.ir.program import Program
from attnc.ir.tiles import EMPTY, FULL
from attnc.runtime import sparsity
from attnc.runtime.config import next_power_of_two
from attnc.runtime.decode_combine import launch_combine
from attnc.runtime.launch import (
    Shapes,
    capture_args,
    check_inputs,
    compute_dtype,
    default_scale,
    empty_in_order_of,
    scalar_argument,
    score_factor_positive,
)

BLOCK_N = 64
MAX_BLOCK_M = 64
NUM_WARPS = 8  # 4 warps spill at D = 128 over paged caches (sm_90, tests/test_aot.py)
NUM_STAGES = 2
# A split gets at least this many key tiles (256 keys): fewer would cost more in the combine than they save.
MIN_TILES_PER_SPLIT = 4
# The interpreter has no SMs to fill: a small fixed count keeps the automatic choice exercised on the CPU.
INTERPRETER_SMS = 4


@dataclasses.dataclass(frozen=True)
class TileLists:
    """Per (batch, kv head): the live key tiles in key order (`tiles [B, Hkv, nKV]` int32, the first `counts`
    entries used), whether each listed tile is full for every row of the group (`full`, int8), how many."""

    tiles: torch.Tensor
    full: torch.Tensor
    counts: torch.Tensor


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """Where the keys live beyond `[B, Hkv, KV_LEN, D]`: `lengths [B]` int32 bounds each sequence's keys (none
    past it is loaded); with `block_table [B, max_pages]` int32, K and V are page pools `[num_pages, Hkv,
    page_size, D]` and key i of sequence b is slot i % page_size of page block_table[b, i // page_size]."""

    lengths: torch.Tensor | None = None
    block_table: torch.Tensor | None = None


def tile_lists(program: Program, tensors: Sequence[torch.Tensor], params: Sequence[int | float], shapes: Shapes,
               device: torch.device, block_n: int = BLOCK_N) -> TileLists:
    """The key tiles each (batch, kv head) must read, from the mask's block classes over all its query rows."""
    n_kv = triton.cdiv(shapes.KV_LEN, block_n)
    B, Hkv, G = shapes.B, shapes.Hkv, shapes.gqa_group
    mask = program.mask
    if mask is None or n_kv == 0:
        classes = torch.full((B, shapes.Hq, n_kv), FULL, dtype=torch.int8, device=device)
    elif not sparsity.analysable(mask):  # a read at an index moving with q and kv: every tile is masked
        classes = torch.full((B, shapes.Hq, n_kv), 1, dtype=torch.int8, device=device)
    else:
        grid = sparsity.classify_blocks(
            program, tensors, params, B=sparsity.broadcast_size(mask, "b", B),
            H=sparsity.broadcast_size(mask, "h", shapes.Hq), Q_LEN=shapes.Q_LEN, KV_LEN=shapes.KV_LEN,
            q_block=max(shapes.Q_LEN, 1), kv_block=block_n, device=device)
        classes = grid[:, :, 0].expand(B, shapes.Hq, n_kv)
    by_group = classes.reshape(B, Hkv, G, n_kv)
    live = (by_group != EMPTY).any(2)
    full = (by_group == FULL).all(2)
    # live tiles first, in key order (a stable sort of the dead flags)
    order = torch.sort((~live).to(torch.int8), dim=-1, stable=True).indices
    return TileLists(order.to(torch.int32).contiguous(), full.gather(-1, order).to(torch.int8).contiguous(),
                     live.sum(-1).to(torch.int32).contiguous())


def choose_splits(most_tiles: int, shapes: Shapes, row_blocks: int, device: torch.device, num_splits: int) -> int:
    """`num_splits` when positive; otherwise enough splits that batch x kv heads x row blocks x splits fills the
    device's SMs, with at least MIN_TILES_PER_SPLIT of the `most_tiles` a tile list may hold per split."""
    if num_splits > 0:
        return num_splits
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else INTERPRETER_SMS
    programs = max(shapes.B * shapes.Hkv * row_blocks, 1)
    wanted = math.ceil(sms / programs)
    return max(1, min(wanted, most_tiles // MIN_TILES_PER_SPLIT))


def rows_per_program(shapes: Shapes) -> int:
    """BLOCK_M: the group's rows (query heads x query rows), padded to a power of two, at most MAX_BLOCK_M (more
    rows take more programs, each reading the group's tiles)."""
    return min(next_power_of_two(shapes.gqa_group * shapes.Q_LEN), MAX_BLOCK_M)


def decode_constexprs(shapes: Shapes, dtype: torch.dtype, block_m: int, sm_scale: float, interpret: bool, *,
                      has_lengths: bool, page_size: int | None, factor_positive: bool = False) -> dict[str, Any]:
    """The decode kernel's compile-time arguments (shared by the launch and the ahead-of-time compile);
    `page_size` None: contiguous keys."""
    return {
        "HEAD_D": shapes.D, "HEAD_DV": shapes.Dv, "D_PAD": next_power_of_two(shapes.D),
        "DV_PAD": next_power_of_two(shapes.Dv), "BLOCK_M": block_m, "BLOCK_N": BLOCK_N,
        "KV_EVEN": shapes.KV_LEN % BLOCK_N == 0, "HAS_SEQ_LENS": has_lengths,
        "PAGED": page_size is not None, "PAGE_SIZE": page_size or 1,
        "UPCAST": interpret,  # the interpreter's 16-bit arithmetic is inexact: it computes on float32 copies
        "DOT_PRECISION": "ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        "SCALE_POSITIVE": sm_scale > 0,
        "FAST_MATH": not interpret and dtype in (torch.float16, torch.bfloat16),
        "SCORE_FACTOR_POSITIVE": factor_positive,  # as the forward's (`launch.score_factor_positive`)
    }


def check_decode_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: KeyLayout) -> Shapes:
    """The call's shapes: `key, value [B, Hkv, KV_LEN, D]`, or page pools (KV_LEN: the block table's capacity)."""
    arguments.check_attention_tensors(query, key, value)
    if layout.block_table is None:
        return check_inputs(query, key, value, enable_gqa=True)
    # a page per sequence stands for its keys: only the heads, head dims and dtypes are checked here
    per_sequence = [t[:1].expand(query.shape[0], -1, -1, -1) for t in (key, value)]
    shapes = check_inputs(query, *per_sequence, enable_gqa=True)
    return dataclasses.replace(shapes, KV_LEN=layout.block_table.shape[1] * key.shape[2])


def launch_decode(kernel: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lists: TileLists, *,
                  shapes: Shapes, scale: float | None, tensors: Sequence[torch.Tensor],
                  params: Sequence[int | float], num_splits: int, interpret: bool,
                  layout: KeyLayout = KeyLayout(), factor_slot: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, Q_LEN, Dv] in q's dtype, lse [B, Hq, Q_LEN] in the compute dtype) for `q [B, Hq, Q_LEN, D]`,
    `k, v [B, Hkv, KV_LEN, D]` (or page pools, `layout`): every split's partial result, then their exact merge.
    `factor_slot`: the score mod's last factor (`KernelSource.score_factor`)."""
    rows = shapes.gqa_group * shapes.Q_LEN
    block_m = rows_per_program(shapes)
    row_blocks = triton.cdiv(rows, block_m)
    # Splits chosen from what a list can hold, not from its live tiles: reading the longest list's length back
    # from the device would make every decoding step wait for it (and could not be captured in a CUDA graph).
    # Each program shares its own list's live tiles with the other splits (the kernel divides N_TILES).
    splits = choose_splits(lists.tiles.shape[-1], shapes, row_blocks, q.device, num_splits)
    acc = compute_dtype(q.dtype)
    out_parts = torch.empty(splits, shapes.B, shapes.Hq, shapes.Q_LEN, shapes.Dv, dtype=acc, device=q.device)
    lse_parts = torch.empty(splits, shapes.B, shapes.Hq, shapes.Q_LEN, dtype=acc, device=q.device)
    if rows and shapes.B and shapes.Hkv:
        sm_scale = scale if scale is not None else default_scale(shapes)
        paged = layout.block_table is not None
        table = layout.block_table if paged else lists.counts  # a dummy 2-D int32 tensor when not paged
        grid = (shapes.B * shapes.Hkv, splits, row_blocks)
        kernel[grid](
            q, k, v, out_parts, lse_parts, lists.tiles, lists.full, lists.counts,
            lists.counts if layout.lengths is None else layout.lengths, table,
            *q.stride(), *k.stride(), *v.stride(), *out_parts.stride(), *lse_parts.stride(),
            *lists.tiles.stride(), *lists.counts.stride(), *table.stride(), k.shape[0] if paged else 0,
            scalar_argument(float(sm_scale), q.dtype), shapes.Hkv, shapes.gqa_group, shapes.Q_LEN, shapes.KV_LEN,
            *capture_args(tensors, [scalar_argument(p, q.dtype) for p in params]),
            **decode_constexprs(shapes, q.dtype, block_m, sm_scale, interpret, has_lengths=layout.lengths is not None,
                                page_size=k.shape[2] if paged else None,
                                factor_positive=score_factor_positive(params, factor_slot)),
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
    out = empty_in_order_of(q, (shapes.B, shapes.Hq, shapes.Q_LEN, shapes.Dv))
    lse = torch.empty(shapes.B, shapes.Hq, shapes.Q_LEN, dtype=acc, device=q.device)
    launch_combine(out_parts, lse_parts, out, lse, next_power_of_two(shapes.Dv))
    return out, lse
