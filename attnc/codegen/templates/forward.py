# attnc forward kernel skeleton.
#
# This file is real Triton: codegen fills the lines `# HOLE: <name>` with generated code at the same
# indentation, and leaves everything else byte for byte. One program computes BLOCK_M query rows of one
# (batch, query head) with an online softmax in base 2, never materialising the score matrix.
#
# Holes:
#   helpers        @triton.jit helpers the variant's expressions call (floor division, tanh, ...)
#   constants      module constants (DO_NOT_SPECIALIZE: runtime parameters never trigger a recompile)
#   capture_args   kernel arguments for captured tensors (pointer, strides, sizes) and runtime parameters
#   capture_pass   the same names, passed on to the tile function
#   hoist_program  expressions that depend only on b and h (computed once per program)
#   hoist_q        expressions that depend on the query index but not the key index (once per program)
#   hoisted_params the hoisted values the tile function reads (its parameter names)
#   hoisted_pass   the same names, passed at each call
#   score_mod      computes `score` from `score` (the scaled q.k) and the indices
#   mask_mod       computes `mask` (bool); evaluated only on partial tiles
#   affine_bias    for a score mod `score + alpha * kv + beta * q + gamma` (attnc.codegen.bias, AFFINE_BIAS):
#                  computes bias_alpha, bias_beta, bias_gamma once per program; score_mod is then unused
#   tile_test      computes `may_true` / `may_false` for the tile box [q_lo, q_hi] x [kv_lo, kv_hi]
#                  from the terms that move with the key tile; hoist_tile_test computes the rest once per
#                  program, passed to _visit_tile as tile_test_params
#                  (attnc.ir.tiles): False / False means the tile is empty / full
#   kv_ranges      computes the closed-form key ranges of this query tile and loops over their tiles,
#                  calling _visit_tile once per tile (tiles shared by two ranges are visited once); with
#                  one range and a known full range (a mask with a diagonal band), the tiles inside the
#                  full range come first in a loop of their own (OFF_BAND: no tile test, no mask), then
#                  the rest of the range in one flat loop (ON_BAND: masked, untested); both pipelined
#
# COMPUTE, the dtype of the arithmetic, is no launch argument: the kernel derives it from Q's element type
# (float64 for float64 inputs, float32 for every other) and passes it to the tile functions; the generated
# code writes float32 values in it (attnc.codegen.emit).
#
# Hopper options (constexprs): USE_TMA loads K and V through tensor descriptors (TMA; the launcher sets it
# only for unit last strides and 16-byte aligned rows); WARP_SPECIALIZE splits the loops without branches
# (no mask, off-band) into producer and consumer warps.
# TILE_DIVISORS (constexpr, set per launch): what the parameters dividing the tile index are (2: positive
# multiples of the tile length, 1: positive, 0: anything), so that the divisions take their cheapest exact
# form (attnc.codegen.skeleton.TileIndex).
import triton
import triton.language as tl

# How _visit_tile treats a tile: inside the full range (no test, no mask), beside it (masked, no test),
# or anywhere else (the tile test decides).
OFF_BAND = tl.constexpr(0)
ON_BAND = tl.constexpr(1)
TESTED = tl.constexpr(2)

# HOLE: constants


# HOLE: helpers


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
    stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
    # HOLE: capture_args
    # HOLE: hoisted_params
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, apply_mask, tile_live, CHECK_KV: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    SCALE_POSITIVE: tl.constexpr, FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr,
    SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    # apply_mask and tile_live are literals (compile-time branches) on the loops that know their tiles'
    # class, and the tile test's verdicts (branches uniform across the program) on the tested path, where an
    # empty tile is loaded (so that the loads stay in the software pipeline) but not computed. CHECK_KV: the
    # tile may reach past KV_LEN (only the last tile of a sequence whose length is not a multiple of BLOCK_N).
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    kv_idx = offs_n[None, :]
    kv_in = offs_n < KV_LEN
    if USE_TMA:  # the descriptor's bounds zero the rows past KV_LEN and the columns past HEAD_D
        kt = tl.trans(K_desc.load([start_n, 0]))
    elif CHECK_KV or HEAD_D != D_PAD:
        kt = tl.load(K_head + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=kv_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
    else:
        kt = tl.load(K_head + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd)
    if UPCAST:
        kt = kt.to(COMPUTE)
    if USE_TMA:
        v = V_desc.load([start_n, 0])
    elif CHECK_KV or HEAD_DV != DV_PAD:
        v = tl.load(V_head + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                    mask=kv_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    else:
        v = tl.load(V_head + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)
    if UPCAST:
        v = v.to(COMPUTE)
    if tile_live:
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
        # Online softmax in base 2 (`_online_softmax`): the scale (with log2(e)) reaches each score in the same
        # multiply-add that subtracts the maximum.
        tile_bias = 0.0
        if AFFINE_BIAS:
            # an affine bias (attnc.codegen.bias): its per-column term rides on the multiply-add that scales the
            # score, its value for this tile joins the row maximum, its per-row term waits for the epilogue
            score = qk * qk_scale + bias_cols
            tile_bias = bias_kv * (start_n - q_origin).to(COMPUTE) + bias_at_q0
        elif HAS_SCORE_MOD:
            score = qk * sm_scale
            # the score mod may move a positive last factor into this (attnc.codegen.skeleton.score_value_lines);
            # in the compute dtype, exactly: a float constant would reach _online_softmax in float32
            score_log2e = tl.full([], LOG2E, COMPUTE)
            # HOLE: score_mod
        else:
            score = qk if SCALE_POSITIVE else qk * qk_scale
        if apply_mask:
            # HOLE: mask_mod
            score = tl.where(mask, score, float("-inf"))
        if CHECK_KV:
            score = tl.where(kv_in[None, :], score, float("-inf"))
        softmax_scale = score_log2e if HAS_SCORE_MOD and not AFFINE_BIAS else qk_scale
        acc, l_i, m_i = _online_softmax(acc, l_i, m_i, score, v, softmax_scale, tile_bias, AFFINE_BIAS,
                                        HAS_SCORE_MOD, SCALE_POSITIVE, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _visit_tile(
    acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
    stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, b_idx, h_idx, q_idx, q_lo, q_hi, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
    # HOLE: capture_args
    # HOLE: hoisted_params
    # HOLE: tile_test_params
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, KV_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_POSITIVE: tl.constexpr, FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr,
    SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
    TILE_KIND: tl.constexpr,
):
    if TILE_KIND == OFF_BAND:
        # inside the full range, before KV_LEN: every pair is allowed, nothing to test or mask
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
            stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
            # HOLE: capture_pass
            # HOLE: hoisted_pass
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, True, False, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    elif TILE_KIND == ON_BAND:
        # beside the full range: masked without a test, so that the loop has no branch and is pipelined
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
            stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
            # HOLE: capture_pass
            # HOLE: hoisted_pass
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, True, True, not KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    else:
        # Classify the tile from the mask's structure: empty tiles cost their loads and this scalar test, full
        # tiles skip the mask, partial tiles evaluate it.
        kv_lo = start_n
        kv_hi = tl.minimum(start_n + BLOCK_N, KV_LEN) - 1
        # HOLE: tile_test
        # one attend call for empty, partial and full tiles: an empty tile is loaded but not computed, the
        # mask is evaluated only when may_false holds
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
            stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
            # HOLE: capture_pass
            # HOLE: hoisted_pass
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, may_false, may_true, not KV_EVEN, UPCAST, DOT_PRECISION,
            USE_TMA, SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    return acc, l_i, m_i


@triton.jit(do_not_specialize=DO_NOT_SPECIALIZE)
def attnc_forward(
    Q, K, V, OUT, LSE,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm, stride_ls,
    KV_NUM_BLOCKS, KV_INDICES, FULL_KV_NUM_BLOCKS, FULL_KV_INDICES,
    stride_nb, stride_nh, stride_nm,
    stride_ib, stride_ih, stride_im, stride_in,
    stride_fnb, stride_fnh, stride_fnm,
    stride_fib, stride_fih, stride_fim, stride_fin,
    sm_scale, H_Q, GQA_GROUP, Q_LEN, KV_LEN,
    # HOLE: capture_args
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPARSE_Q_BLOCK: tl.constexpr, SPARSE_KV_BLOCK: tl.constexpr,
    USE_BLOCK_MASK: tl.constexpr, HAS_FULL_BLOCKS: tl.constexpr, HAS_MASK: tl.constexpr,
    KV_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr,
):
    # Three ways to find the key tiles: a BlockMask's lists (USE_BLOCK_MASK), the mask's own closed-form
    # ranges and tile test (HAS_MASK), or every tile (no mask).
    # The dtype of the arithmetic, from the inputs' (not a launch argument, so it cannot disagree with them):
    # float64 inputs are computed in float64 throughout, every other dtype in float32
    COMPUTE: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    sm_scale = _float_argument(sm_scale, COMPUTE)
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H_Q
    off_h = off_bh % H_Q
    off_hkv = off_h // GQA_GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    m_in = offs_m < Q_LEN

    q = tl.load(Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if UPCAST:
        q = q.to(COMPUTE)
    K_head = K + off_b.to(tl.int64) * stride_kb + off_hkv.to(tl.int64) * stride_kh
    V_head = V + off_b.to(tl.int64) * stride_vb + off_hkv.to(tl.int64) * stride_vh
    if USE_TMA:
        K_desc = tl.make_tensor_descriptor(K_head, shape=[KV_LEN, HEAD_D], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, D_PAD])
        V_desc = tl.make_tensor_descriptor(V_head, shape=[KV_LEN, HEAD_DV], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, DV_PAD])
    else:
        K_desc = K_head
        V_desc = V_head

    b_idx = off_b
    h_idx = off_h
    q_idx = offs_m[:, None]
    # HOLE: hoist_program
    # HOLE: hoist_q
    q_origin = start_m * BLOCK_M
    if AFFINE_BIAS:
        # the bias alpha * kv + beta * q + gamma in base 2, rebased on this tile's first query (q_origin)
        # HOLE: affine_bias
        bias_kv = bias_alpha * LOG2E
        bias_cols = bias_kv * tl.arange(0, BLOCK_N).to(COMPUTE)[None, :]
        bias_at_q0 = ((bias_alpha + bias_beta) * q_origin.to(COMPUTE) + bias_gamma) * LOG2E
        bias_rows = bias_beta * LOG2E * (offs_m - q_origin).to(COMPUTE)
    else:
        bias_kv = 0.0
        bias_cols = 0.0
        bias_at_q0 = 0.0
        bias_rows = 0.0

    m_i = tl.full([BLOCK_M], float("-inf"), COMPUTE)
    l_i = tl.zeros([BLOCK_M], COMPUTE)
    acc = tl.zeros([BLOCK_M, DV_PAD], COMPUTE)
    qk_scale = sm_scale * LOG2E

    # Every path visits the tiles it knows to be free of masking first, in a loop without branches, then
    # the tiles that need the mask: both loops are software-pipelined, and no masked work runs between the
    # pipeline stages of the hot loop.
    if USE_BLOCK_MASK:
        # FlexAttention's BlockMask layout: full blocks never evaluate the mask, partial blocks do. Each
        # list is walked as one flat loop over its tiles (a block holds SPARSE_KV_BLOCK // BLOCK_N tiles).
        sparse_row = (start_m * BLOCK_M) // SPARSE_Q_BLOCK
        TILES_PER_BLOCK: tl.constexpr = SPARSE_KV_BLOCK // BLOCK_N
        if HAS_FULL_BLOCKS:
            n_full = tl.load(FULL_KV_NUM_BLOCKS + off_b * stride_fnb + off_h * stride_fnh
                             + sparse_row * stride_fnm)
            full_list = FULL_KV_INDICES + off_b * stride_fib + off_h * stride_fih + sparse_row * stride_fim
            for t in tl.range(0, n_full * TILES_PER_BLOCK, warp_specialize=WARP_SPECIALIZE):
                block = tl.load(full_list + (t // TILES_PER_BLOCK) * stride_fin)
                acc, l_i, m_i = _attend_tile(
                    acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
                    stride_kn, stride_kd, stride_vn, stride_vd,
                    block * SPARSE_KV_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_N, b_idx, h_idx, q_idx,
                    sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
                    # HOLE: capture_pass
                    # HOLE: hoisted_pass
                    HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, True, not KV_EVEN, UPCAST, DOT_PRECISION,
                    USE_TMA, SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                )
        n_partial = tl.load(KV_NUM_BLOCKS + off_b * stride_nb + off_h * stride_nh + sparse_row * stride_nm)
        partial_list = KV_INDICES + off_b * stride_ib + off_h * stride_ih + sparse_row * stride_im
        for t in tl.range(0, n_partial * TILES_PER_BLOCK):
            block = tl.load(partial_list + (t // TILES_PER_BLOCK) * stride_in)
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                block * SPARSE_KV_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_N, b_idx, h_idx, q_idx,
                sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
                # HOLE: capture_pass
                # HOLE: hoisted_pass
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, HAS_MASK, True, not KV_EVEN, UPCAST, DOT_PRECISION,
                USE_TMA, SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
    elif HAS_MASK:
        q_lo = start_m * BLOCK_M
        q_hi = tl.minimum(q_lo + BLOCK_M, Q_LEN) - 1
        # HOLE: hoist_tile_test
        # HOLE: kv_ranges
    else:
        # every tile: the whole ones in the pipelined loop, the one reaching past KV_LEN after it
        kv_whole = (KV_LEN // BLOCK_N) * BLOCK_N
        for start_n in tl.range(0, kv_whole, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
                # HOLE: capture_pass
                # HOLE: hoisted_pass
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, True, False, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
        if not KV_EVEN:
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                kv_whole, b_idx, h_idx, q_idx, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_kv, bias_at_q0,
                # HOLE: capture_pass
                # HOLE: hoisted_pass
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, True, True, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )

    # Rows with no allowed key: l = 0, so the output is 0 and the lse is -inf (never NaN).
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
             + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
             out.to(OUT.dtype.element_ty), mask=m_in[:, None] & (offs_dv[None, :] < HEAD_DV))
    log2_l = tl.log2(l_safe)
    m_i = m_i + bias_rows  # an affine bias's per-row term, left out of the loop (it cancels in softmax)
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + log2_l) * LN2)
    LSE_rows = LSE + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lm
    tl.store(LSE_rows, lse, mask=m_in)
    # For the backward, the two terms of the base-2 lse apart (planes 1 and 2 of the statistics buffer): one
    # float cannot hold both a large row maximum and the fraction of log2(l) (at logits near 1e9 an ulp of
    # the lse is 64), so the backward subtracts the maximum exactly as this kernel did, then log2(l). An empty
    # row gets +inf and 0, so that its probabilities are exactly 0.
    tl.store(LSE_rows + stride_ls, tl.where(l_i == 0.0, float("inf"), m_i), mask=m_in)
    tl.store(LSE_rows + 2 * stride_ls, log2_l, mask=m_in)
