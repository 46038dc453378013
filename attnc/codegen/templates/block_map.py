# attnc block-map builder skeleton.
#
# This file is real Triton: codegen fills the lines `# HOLE: <name>` with generated code at the same
# indentation. One program classifies KV_BLOCKS_PER_PROGRAM consecutive key blocks of one query block of
# one (batch, head) as EMPTY (0), PARTIAL (1) or FULL (2) and writes the class to CLASSES[b, h, q_block,
# kv_block] (int8). Only the positions inside the sequences count: a ragged last block is classified by
# the pairs it really has.
#
# A block is first classified from the mask's structure (the tile test: a few scalar operations); only the
# blocks it cannot decide are evaluated element by element, SUB_M x SUB_N pairs at a time, so a block of
# any size needs a bounded number of registers.
#
# Holes:
#   helpers        @triton.jit helpers the variant's expressions call (floor division, tanh, ...)
#   constants      module constants (DO_NOT_SPECIALIZE: runtime parameters never trigger a recompile)
#   capture_args   kernel arguments for captured tensors (pointer, strides, sizes) and runtime parameters
#   hoist_program  expressions that depend only on b and h (computed once per program)
#   hoist_q        expressions that depend on the query index but not the key index (once per row strip)
#   mask_mod       computes `mask` (bool) for q_idx [SUB_M, 1] x kv_idx [1, SUB_N]
#   tile_test      computes `may_true` / `may_false` for the block box [q_lo, q_hi] x [kv_lo, kv_hi]
import triton
import triton.language as tl

# HOLE: constants


# HOLE: helpers


@triton.jit(do_not_specialize=DO_NOT_SPECIALIZE)
def attnc_block_map(
    CLASSES, stride_cb, stride_ch, stride_cq,
    H, Q_LEN, KV_LEN, N_KV_BLOCKS,
    # HOLE: capture_args
    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, SUB_M: tl.constexpr, SUB_N: tl.constexpr,
    KV_BLOCKS_PER_PROGRAM: tl.constexpr,
):
    # The dtype of a mask's float arithmetic (attnc.codegen.emit): the map is built once for inputs of any dtype,
    # in float32
    COMPUTE: tl.constexpr = tl.float32
    q_block = tl.program_id(0)
    kv_group = tl.program_id(1)
    off_bh = tl.program_id(2)
    b_idx = off_bh // H
    h_idx = off_bh % H
    q_lo = q_block * Q_BLOCK
    q_hi = tl.minimum(q_lo + Q_BLOCK, Q_LEN) - 1
    row = (CLASSES + b_idx.to(tl.int64) * stride_cb + h_idx.to(tl.int64) * stride_ch
           + q_block.to(tl.int64) * stride_cq)
    # HOLE: hoist_program
    for j in range(KV_BLOCKS_PER_PROGRAM):
        kv_block = kv_group * KV_BLOCKS_PER_PROGRAM + j
        kv_lo = kv_block * KV_BLOCK
        kv_hi = tl.minimum(kv_lo + KV_BLOCK, KV_LEN) - 1
        # HOLE: tile_test
        # EMPTY 0 when nothing may be true, FULL 2 when nothing may be false, else PARTIAL 1
        block_class = tl.where(may_true, tl.where(may_false, 1, 2), 0)
        if (kv_block < N_KV_BLOCKS) & may_true & may_false:
            # The structure left it open: count allowed and masked pairs inside the sequences.
            n_true = tl.zeros([], tl.int32)
            n_false = tl.zeros([], tl.int32)
            for sm in range(0, Q_BLOCK, SUB_M):
                rows = sm + tl.arange(0, SUB_M)
                q_idx = (q_lo + rows)[:, None]
                row_in = (rows < Q_BLOCK)[:, None] & (q_idx < Q_LEN)
                # HOLE: hoist_q
                for sn in range(0, KV_BLOCK, SUB_N):
                    cols = sn + tl.arange(0, SUB_N)
                    kv_idx = (kv_lo + cols)[None, :]
                    inside = row_in & (cols < KV_BLOCK)[None, :] & (kv_idx < KV_LEN)
                    # HOLE: mask_mod
                    allowed = mask != 0
                    n_true += tl.sum(tl.where(inside & allowed, 1, 0))
                    n_false += tl.sum(tl.where(inside & (allowed == 0), 1, 0))
            block_class = tl.where(n_true > 0, tl.where(n_false > 0, 1, 2), 0)
        if kv_block < N_KV_BLOCKS:
            tl.store(row + kv_block, block_class.to(tl.int8))
