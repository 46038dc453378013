# attnc split-KV decode kernel skeleton (flash-decoding with GQA packing).
#
# This file is real Triton: codegen fills the lines `# HOLE: <name>` with generated code at the same
# indentation, and leaves everything else byte for byte.
#
# One program owns one (batch, kv head, split) and BLOCK_M rows of its group: the rows are the pairs (query
# head of the GQA group, query row), row r being head `kv_head * GQA_GROUP + r // Q_LEN` at query row
# `r % Q_LEN`, so a tile of K and V is loaded once for every query head that reads it. The key tiles come from
# a list per (batch, kv head) (TILES, the live tiles in key order, and N_TILES, how many): the grid's splits
# share each list's live entries evenly (split s of S visits entries [s * per, (s + 1) * per), per =
# ceil(N_TILES / S)), so a split only reads tiles the mask keeps and the host never needs the lists' lengths.
# TILE_FULL says which listed tiles are full for every row of the group: those never evaluate the mask.
# SEQ_LENS (HAS_SEQ_LENS) bounds each sequence's keys, so nothing past its length is loaded. PAGED: K and V are
# page pools read through BLOCK_TABLE [B, max_pages] inside the kernel (pages of PAGE_SIZE keys, any order).
# Each program writes its rows' output over its split's keys (normalised by the split's own row sum) and lse,
# in the compute dtype; the combine merges the splits exactly through their lse.
#
# Holes:
#   helpers        @triton.jit helpers the variant's expressions call (floor division, tanh, ...)
#   constants      module constants (DO_NOT_SPECIALIZE: runtime parameters never trigger a recompile)
#   capture_args   kernel arguments for captured tensors (pointer, strides, sizes) and runtime parameters
#   capture_pass   the same names, passed on to the tile function
#   hoist_program  expressions that depend only on b and h (per row here: h moves with the row)
#   hoist_q        expressions that depend on the query index but not the key index
#   hoisted_params the hoisted values the tile function reads (its parameter names)
#   hoisted_pass   the same names, passed at each call
#   score_mod      computes `score` from `score` (the scaled q.k) and the indices
#   mask_mod       computes `mask` (bool); evaluated only on tiles not listed as full
import triton
import triton.language as tl

# HOLE: constants


# HOLE: helpers


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, K_head, V_head, stride_kb, stride_kn, stride_kd, stride_vb, stride_vn, stride_vd,
    PAGES, stride_pp, start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, apply_mask,
    # HOLE: capture_args
    # HOLE: hoisted_params
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, CHECK_KV: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
    NUM_PAGES, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr, COMPUTE: tl.constexpr,
):
    # KV_LEN: this sequence's valid length, so keys past it are never loaded (a cache may hold anything there)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    kv_idx = offs_n[None, :]
    kv_in = offs_n < KV_LEN
    if PAGED:
        # each key's page from the sequence's row of the block table (a tile may span several pages); a page
        # number outside the pool is never dereferenced
        page = tl.load(PAGES + (offs_n // PAGE_SIZE) * stride_pp, mask=kv_in, other=0)
        kv_in = kv_in & (page >= 0) & (page < NUM_PAGES)
        page = tl.where(kv_in, page, 0).to(tl.int64)
        k_rows = page * stride_kb + (offs_n % PAGE_SIZE) * stride_kn
        v_rows = page * stride_vb + (offs_n % PAGE_SIZE) * stride_vn
    else:
        k_rows = offs_n * stride_kn
        v_rows = offs_n * stride_vn
    kt = tl.load(K_head + k_rows[None, :] + offs_d[:, None] * stride_kd,
                 mask=kv_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    v = tl.load(V_head + v_rows[:, None] + offs_dv[None, :] * stride_vd,
                mask=kv_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        kt = kt.to(COMPUTE)
        v = v.to(COMPUTE)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
    # Online softmax in base 2, as in the forward kernel.
    if HAS_SCORE_MOD:
        score = qk * sm_scale
        # the score mod may move a positive last factor into this (attnc.codegen.skeleton.score_value_lines);
        # in the compute dtype, exactly: a float constant would reach _online_softmax in float32
        score_log2e = tl.full([], LOG2E, COMPUTE)
        # HOLE: score_mod
    elif SCALE_POSITIVE:  # the scale is applied with the maximum below
        score = qk
    else:
        score = qk * qk_scale
    if apply_mask:
        # HOLE: mask_mod
        score = tl.where(mask, score, float("-inf"))
    if CHECK_KV:
        score = tl.where(kv_in[None, :], score, float("-inf"))
    softmax_scale = score_log2e if HAS_SCORE_MOD else qk_scale
    return _online_softmax(acc, l_i, m_i, score, v, softmax_scale, 0.0, False, HAS_SCORE_MOD, SCALE_POSITIVE,
                           DOT_PRECISION)


@triton.jit(do_not_specialize=DO_NOT_SPECIALIZE)
def attnc_decode(
    Q, K, V, OUT_PART, LSE_PART, TILES, TILE_FULL, N_TILES, SEQ_LENS, BLOCK_TABLE,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_os, stride_ob, stride_oh, stride_om, stride_od,
    stride_ls, stride_lb, stride_lh, stride_lm,
    stride_tb, stride_th, stride_tn,
    stride_cb, stride_ch,
    stride_btb, stride_btp, NUM_PAGES,
    sm_scale, H_KV, GQA_GROUP, Q_LEN, KV_LEN,
    # HOLE: capture_args
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KV_EVEN: tl.constexpr, HAS_SEQ_LENS: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, SCALE_POSITIVE: tl.constexpr, FAST_MATH: tl.constexpr,
    SCORE_FACTOR_POSITIVE: tl.constexpr,
):
    COMPUTE: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    sm_scale = _float_argument(sm_scale, COMPUTE)
    off_bh = tl.program_id(0)
    split = tl.program_id(1)
    row_block = tl.program_id(2)
    off_b = off_bh // H_KV
    off_hkv = off_bh % H_KV
    # the rows: (query head of the group, query row) pairs; padding rows repeat the group's last row
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < GQA_GROUP * Q_LEN
    rows = tl.minimum(rows, GQA_GROUP * Q_LEN - 1)
    head = off_hkv * GQA_GROUP + rows // Q_LEN
    q_row = rows % Q_LEN
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    q = tl.load(Q + off_b.to(tl.int64) * stride_qb + head[:, None].to(tl.int64) * stride_qh
                + q_row[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if UPCAST:
        q = q.to(COMPUTE)
    if PAGED:  # K and V are page pools [num_pages, H_KV, PAGE_SIZE, D]: the tiles find their pages
        K_head = K + off_hkv.to(tl.int64) * stride_kh
        V_head = V + off_hkv.to(tl.int64) * stride_vh
    else:
        K_head = K + off_b.to(tl.int64) * stride_kb + off_hkv.to(tl.int64) * stride_kh
        V_head = V + off_b.to(tl.int64) * stride_vb + off_hkv.to(tl.int64) * stride_vh
    pages = BLOCK_TABLE + off_b.to(tl.int64) * stride_btb
    kv_len = KV_LEN
    if HAS_SEQ_LENS:
        kv_len = tl.minimum(tl.load(SEQ_LENS + off_b), KV_LEN)

    b_idx = off_b
    h_idx = head[:, None]
    q_idx = q_row[:, None]
    # HOLE: hoist_program
    # HOLE: hoist_q

    m_i = tl.full([BLOCK_M], float("-inf"), COMPUTE)
    l_i = tl.zeros([BLOCK_M], COMPUTE)
    acc = tl.zeros([BLOCK_M, DV_PAD], COMPUTE)
    qk_scale = sm_scale * LOG2E

    n_tiles = tl.load(N_TILES + off_b * stride_cb + off_hkv * stride_ch)
    splits = tl.num_programs(1)
    per_split = (n_tiles + splits - 1) // splits
    first = split * per_split
    last = tl.minimum(first + per_split, n_tiles)
    tile_list = off_b.to(tl.int64) * stride_tb + off_hkv.to(tl.int64) * stride_th
    for t in tl.range(first, last):
        tile = tl.load(TILES + tile_list + t * stride_tn)
        partial = tl.load(TILE_FULL + tile_list + t * stride_tn) == 0
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, K_head, V_head, stride_kb, stride_kn, stride_kd, stride_vb, stride_vn, stride_vd,
            pages, stride_btp, tile * BLOCK_N, b_idx, h_idx, q_idx, sm_scale, qk_scale, kv_len, partial,
            # HOLE: capture_pass
            # HOLE: hoisted_pass
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, HAS_SEQ_LENS or not KV_EVEN, PAGED, PAGE_SIZE, NUM_PAGES,
            UPCAST, DOT_PRECISION, SCALE_POSITIVE, FAST_MATH, SCORE_FACTOR_POSITIVE, COMPUTE,
        )

    # Rows with no allowed key in this split: l = 0, output 0 and lse -inf (the combine gives them no weight).
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    out_rows = (split.to(tl.int64) * stride_os + off_b.to(tl.int64) * stride_ob
                + head.to(tl.int64) * stride_oh + q_row * stride_om)
    tl.store(OUT_PART + out_rows[:, None] + offs_dv[None, :] * stride_od, out.to(OUT_PART.dtype.element_ty),
             mask=row_in[:, None] & (offs_dv[None, :] < HEAD_DV))
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)  # m_i is in base 2
    lse_rows = (split.to(tl.int64) * stride_ls + off_b.to(tl.int64) * stride_lb
                + head.to(tl.int64) * stride_lh + q_row * stride_lm)
    tl.store(LSE_PART + lse_rows, lse, mask=row_in)
