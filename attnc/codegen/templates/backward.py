# attnc backward kernel skeletons: dK/dV (one program per key tile) and dQ (one program per query tile).
#
# This file is real Triton: codegen fills the lines `# HOLE: <name>` with generated code at the same
# indentation. Both kernels recompute the probabilities (never stored) from the forward's row statistics:
# its base-2 row maximum m and log2 of its row sum l, kept apart (planes 1 and 2 after the lse, `stride_ls`
# apart) so that the exponent is the forward's own at any magnitude of the logits:
#
#   z = score_mod(q.k * scale)        p = 2^(z log2(e) - m - log2(l))   (0 where masked or the row is empty)
#   dv += p^T do                      dz = p * (do.v - delta)   (delta = rowsum(do * out) - dlse)
#   ds = dz * dz/dscore               dq += ds k * scale        dk += ds^T q * scale
#
# Neither kernel spends an operation per score on l: the dQ kernel works with exp2(z log2(e) - m) and scales
# each row of dq by 1 / l at the end; the dK/dV kernel subtracts m + e (e, an integer part of log2(l) whose
# sum with m is exact) and reads dO and delta premultiplied by 2^(e - log2(l)) (`launch_backward.key_side_rows`).
#
# and the gradient of a captured tensor read by a LOAD node L is the sum of dz * dz/dL over the pairs
# that read each element (accumulated by the dQ kernel, pre-reduced within the tile by what the index
# depends on). The dK/dV kernel works on transposed tiles [BLOCK_N, BLOCK_M] so that its accumulators are
# key-major; index expressions broadcast the same way in both orientations.
#
# COMPUTE, the dtype of the arithmetic (float64 for float64 inputs, float32 otherwise), comes from Q's element
# type, as in the forward; the row statistics, delta and captured-gradient buffers the launcher passes have it.
#
# Hopper options (constexprs), as in the forward: USE_TMA streams the looped operands (Q and dO in the
# dK/dV kernel, K and V in the dQ kernel) through tensor descriptors; WARP_SPECIALIZE splits the loops
# without branches (no mask, off-band) into producer and consumer warps.
#
# Holes (per kernel; `_kv` / `_q` suffixes name the dK/dV and dQ versions):
#   helpers, constants, capture_args, capture_pass     as in the forward skeleton
#   grad_args, grad_pass                               gradient buffers of captured tensors (dQ kernel)
#   hoist_program_*, hoist_*, hoisted_params_*, hoisted_pass_*
#                                                      values computed once per program and passed on
#   score_mod_*     computes `score` (modified) and `dscore` (dz/dscore)
#   mask_mod_*      computes `mask`
#   grad_accumulate adds each captured tensor's contributions (dQ kernel)
#   tile_test_*     `may_true` / `may_false` for the tile box [q_lo, q_hi] x [kv_lo, kv_hi]
#   q_ranges        closed-form query ranges of a key tile, looping over their tiles (dK/dV kernel)
#   kv_ranges       closed-form key ranges of a query tile, looping over their tiles (dQ kernel)
# TILE_DIVISORS (constexpr, set per launch): what the parameters dividing the tile index are (2: positive
# multiples of the tile length, 1: positive, 0: anything), so that the divisions take their cheapest exact
# form (attnc.codegen.skeleton.TileIndex).
import triton
import triton.language as tl

# How the visit functions treat a tile: inside the full range (no test, no mask), beside it (masked, no
# test), or anywhere else (the tile test decides).
OFF_BAND = tl.constexpr(0)
ON_BAND = tl.constexpr(1)
TESTED = tl.constexpr(2)

# HOLE: constants


# HOLE: helpers


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
    stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
    start_m, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
    # HOLE: capture_args
    # HOLE: hoisted_params_kv
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, apply_mask, CHECK_Q: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q_idx = offs_m[None, :]
    q_in = offs_m < Q_LEN
    # q and dO stay in their row-major [BLOCK_M, D] layout: each feeds two matmuls, one of them through a
    # transposed view, which the tensor cores read from shared memory without a copy through registers
    if USE_TMA:  # the descriptors' bounds zero the rows past Q_LEN and the columns past the head dims
        q = Q_desc.load([start_m, 0])
        do = DO_desc.load([start_m, 0])
    elif CHECK_Q or HEAD_D != D_PAD or HEAD_DV != DV_PAD:
        q = tl.load(Q_head + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=q_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
        do = tl.load(DO_head + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                     mask=q_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    else:
        q = tl.load(Q_head + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
        do = tl.load(DO_head + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod)
    if UPCAST:
        q = q.to(COMPUTE)
        do = do.to(COMPUTE)
    # the forward's base-2 row maximum plus e, a part of log2(l) it adds exactly (rows past Q_LEN: p = 0)
    if CHECK_Q:
        m2 = tl.load(LSE_head + stride_ls + offs_m * stride_lm, mask=q_in, other=float("inf"))
        delta = tl.load(DELTA_head + offs_m * stride_lm, mask=q_in, other=0.0)
    else:  # every row of the tile is inside the sequence
        m2 = tl.load(LSE_head + stride_ls + offs_m * stride_lm)
        delta = tl.load(DELTA_head + offs_m * stride_lm)
    if UPCAST:
        # The interpreter's matmul (numpy) sums in an order that depends on the operands' roles, and at large
        # logits an ulp of q.k moves p by orders of magnitude: the forward's q k^T, transposed, gives the
        # forward's scores bit for bit. The tensor cores add each element's products in the same k order
        # whichever operand comes first, so a GPU computes k q^T directly.
        qkt = tl.trans(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION))
    else:
        qkt = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
    if AFFINE_BIAS:
        # an affine bias (attnc.codegen.bias) rebased on this program's first key: its per-key term rides on
        # the multiply-add that scales the score, the rest joins the subtracted row maximum
        score = qkt * qk_scale + bias_rows
    elif HAS_SCORE_MOD:
        # raw_score stays unmodified: the derivatives of the score mod read it
        raw_score = qkt * sm_scale
        score = raw_score
        dscore = 1.0
        # the score mod may move a positive last factor into this (attnc.codegen.skeleton.score_value_lines);
        # in the compute dtype, exactly: a float constant would reach _online_softmax in float32
        score_log2e = tl.full([], LOG2E, COMPUTE)
        # HOLE: score_mod_kv
    else:
        score = qkt if SCALE_POSITIVE else qkt * qk_scale
    if apply_mask:
        # HOLE: mask_mod_kv
        score = tl.where(mask, score, float("-inf"))
    if CHECK_Q:
        score = tl.where(q_in[None, :], score, float("-inf"))
    # pt = exp2(z - m - e) = p * 2^(log2(l) - e): the maximum is subtracted in the multiply-add that scales the
    # score, as in the forward, so the difference is exact whatever the logits' magnitude; the rest of the
    # normalisation, 2^(e - log2(l)) in (1/2, 1], arrives premultiplied into dO and delta (launch_backward)
    if AFFINE_BIAS:
        pt = tl.exp2(score - (m2 - (bias_b * (offs_m - kv_origin).to(COMPUTE) + bias_at_origin))[None, :])
    elif HAS_SCORE_MOD:
        pt = tl.exp2(score * score_log2e - m2[None, :])
    elif SCALE_POSITIVE:  # the scale and log2(e) ride on the multiply-add that subtracts the maximum
        pt = tl.exp2(score * qk_scale - m2[None, :])
    else:
        pt = tl.exp2(score - m2[None, :])
    if HAS_SCORE_MOD and not AFFINE_BIAS:  # an affine bias has dz/dscore = 1
        # p * dz/dscore before the dP matmul: one tensor lives across it instead of p and dz/dscore. Where p is 0
        # the pair contributes nothing, even where dz/dscore is not finite (a masked pair): dp - delta is finite
        pt_dscore = pt * dscore if DSCORE_FINITE else tl.where(pt == 0.0, 0.0, pt * dscore)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    weight = pt_dscore if HAS_SCORE_MOD and not AFFINE_BIAS else pt  # p, times dz/dscore where a mod has one
    dst = weight * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_visit(
    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
    stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
    start_m, b_idx, h_idx, kv_idx, kv_lo, kv_hi, sm_scale, qk_scale, Q_LEN,
    kv_origin, bias_rows, bias_b, bias_at_origin,
    # HOLE: capture_args
    # HOLE: hoisted_params_kv
    # HOLE: tile_test_params_kv
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, Q_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_POSITIVE: tl.constexpr, FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr,
    SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
    TILE_KIND: tl.constexpr,
):
    if TILE_KIND == OFF_BAND:  # inside the full range, before Q_LEN: nothing to test or mask
        dk, dv = _dkdv_tile(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
            stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
            start_m, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
            # HOLE: capture_pass
            # HOLE: hoisted_pass_kv
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, False, False, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    elif TILE_KIND == ON_BAND:  # beside the full range: masked, untested, so the loop has no branch
        dk, dv = _dkdv_tile(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
            stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
            start_m, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
            # HOLE: capture_pass
            # HOLE: hoisted_pass_kv
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, True, not Q_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    else:
        q_lo = start_m
        q_hi = tl.minimum(start_m + BLOCK_M, Q_LEN) - 1
        # HOLE: tile_test_kv
        if may_true:
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
                stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
                start_m, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
                # HOLE: capture_pass
                # HOLE: hoisted_pass_kv
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, may_false, not Q_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
    return dk, dv


@triton.jit(do_not_specialize=DO_NOT_SPECIALIZE)
def attnc_backward_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_lb, stride_lh, stride_lm, stride_ls,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    Q_NUM_BLOCKS, Q_INDICES, FULL_Q_NUM_BLOCKS, FULL_Q_INDICES,
    stride_nb, stride_nh, stride_nn,
    stride_ib, stride_ih, stride_in, stride_im,
    stride_fnb, stride_fnh, stride_fnn,
    stride_fib, stride_fih, stride_fin, stride_fim,
    sm_scale, H_Q, H_KV, GQA_GROUP, Q_LEN, KV_LEN,
    # HOLE: capture_args
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPARSE_Q_BLOCK: tl.constexpr, SPARSE_KV_BLOCK: tl.constexpr,
    USE_BLOCK_MASK: tl.constexpr, HAS_FULL_BLOCKS: tl.constexpr, HAS_MASK: tl.constexpr,
    Q_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr,
):
    # One program: BLOCK_N keys of one (batch, kv head), summed over the query heads that share them.
    # The dtype of the arithmetic, as in the forward: float64 for float64 inputs, float32 otherwise
    COMPUTE: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    sm_scale = _float_argument(sm_scale, COMPUTE)
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = off_bh // H_KV
    off_hkv = off_bh % H_KV
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    n_in = offs_n < KV_LEN
    k = tl.load(K + off_b.to(tl.int64) * stride_kb + off_hkv.to(tl.int64) * stride_kh
                + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=n_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    v = tl.load(V + off_b.to(tl.int64) * stride_vb + off_hkv.to(tl.int64) * stride_vh
                + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=n_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        k = k.to(COMPUTE)
        v = v.to(COMPUTE)
    dk = tl.zeros([BLOCK_N, D_PAD], COMPUTE)
    qk_scale = sm_scale * LOG2E
    dv = tl.zeros([BLOCK_N, DV_PAD], COMPUTE)
    b_idx = off_b
    kv_idx = offs_n[:, None]
    for g in range(GQA_GROUP):
        off_h = off_hkv * GQA_GROUP + g
        h_idx = off_h
        Q_head = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        DO_head = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
        LSE_head = LSE + off_b * stride_lb + off_h * stride_lh
        DELTA_head = DELTA + off_b * stride_lb + off_h * stride_lh
        if USE_TMA:
            Q_desc = tl.make_tensor_descriptor(Q_head, shape=[Q_LEN, HEAD_D], strides=[stride_qm, 1],
                                               block_shape=[BLOCK_M, D_PAD])
            DO_desc = tl.make_tensor_descriptor(DO_head, shape=[Q_LEN, HEAD_DV], strides=[stride_dom, 1],
                                                block_shape=[BLOCK_M, DV_PAD])
        else:
            Q_desc = Q_head
            DO_desc = DO_head
        # HOLE: hoist_program_kv
        # HOLE: hoist_kv
        kv_origin = start_n
        if AFFINE_BIAS:
            # the bias alpha * kv + beta * q + gamma in base 2, rebased on this program's first key
            # HOLE: affine_bias_kv
            bias_rows = bias_alpha * LOG2E * (offs_n - kv_origin).to(COMPUTE)[:, None]
            bias_b = bias_beta * LOG2E
            bias_at_origin = ((bias_alpha + bias_beta) * kv_origin.to(COMPUTE) + bias_gamma) * LOG2E
        else:
            bias_rows = 0.0
            bias_b = 0.0
            bias_at_origin = 0.0
        # As in the forward: the tiles known to be free of masking first, in branch-free loops, then the rest.
        if USE_BLOCK_MASK:
            # the BlockMask's query-side lists: for this key block, its full and partial query blocks, each
            # walked as one flat loop over its tiles
            sparse_col = start_n // SPARSE_KV_BLOCK
            TILES_PER_BLOCK: tl.constexpr = SPARSE_Q_BLOCK // BLOCK_M
            if HAS_FULL_BLOCKS:
                n_full = tl.load(FULL_Q_NUM_BLOCKS + off_b * stride_fnb + off_h * stride_fnh
                                 + sparse_col * stride_fnn)
                full_list = FULL_Q_INDICES + off_b * stride_fib + off_h * stride_fih + sparse_col * stride_fin
                for t in tl.range(0, n_full * TILES_PER_BLOCK, warp_specialize=WARP_SPECIALIZE):
                    block = tl.load(full_list + (t // TILES_PER_BLOCK) * stride_fim)
                    dk, dv = _dkdv_tile(
                        dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
                        stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
                        block * SPARSE_Q_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_M, b_idx, h_idx, kv_idx,
                        sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
                        # HOLE: capture_pass
                        # HOLE: hoisted_pass_kv
                        HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, False, not Q_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                        SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                    )
            n_partial = tl.load(Q_NUM_BLOCKS + off_b * stride_nb + off_h * stride_nh + sparse_col * stride_nn)
            partial_list = Q_INDICES + off_b * stride_ib + off_h * stride_ih + sparse_col * stride_in
            for t in tl.range(0, n_partial * TILES_PER_BLOCK):
                block = tl.load(partial_list + (t // TILES_PER_BLOCK) * stride_im)
                dk, dv = _dkdv_tile(
                    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
                    stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
                    block * SPARSE_Q_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_M, b_idx, h_idx, kv_idx,
                        sm_scale, qk_scale, Q_LEN, kv_origin, bias_rows, bias_b, bias_at_origin,
                    # HOLE: capture_pass
                    # HOLE: hoisted_pass_kv
                    HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, HAS_MASK, not Q_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                    SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                )
        elif HAS_MASK:
            kv_lo = start_n
            kv_hi = tl.minimum(start_n + BLOCK_N, KV_LEN) - 1
            # HOLE: hoist_tile_test_kv
            # HOLE: q_ranges
        else:
            # every query tile: the whole ones in the pipelined loop, the one reaching past Q_LEN after it
            q_whole = (Q_LEN // BLOCK_M) * BLOCK_M
            for start_m in tl.range(0, q_whole, BLOCK_M, warp_specialize=WARP_SPECIALIZE):
                dk, dv = _dkdv_tile(
                    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
                    stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
                    start_m, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN,
                    kv_origin, bias_rows, bias_b, bias_at_origin,
                    # HOLE: capture_pass
                    # HOLE: hoisted_pass_kv
                    HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, False, False, UPCAST, DOT_PRECISION, USE_TMA,
                    SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                )
            if not Q_EVEN:
                dk, dv = _dkdv_tile(
                    dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,
                    stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,
                    q_whole, b_idx, h_idx, kv_idx, sm_scale, qk_scale, Q_LEN,
                    kv_origin, bias_rows, bias_b, bias_at_origin,
                    # HOLE: capture_pass
                    # HOLE: hoisted_pass_kv
                    HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, False, True, UPCAST, DOT_PRECISION, USE_TMA,
                    SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                )
    dk = dk * sm_scale
    tl.store(DK + off_b.to(tl.int64) * stride_dkb + off_hkv.to(tl.int64) * stride_dkh
             + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=n_in[:, None] & (offs_d[None, :] < HEAD_D))
    tl.store(DV + off_b.to(tl.int64) * stride_dvb + off_hkv.to(tl.int64) * stride_dvh
             + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=n_in[:, None] & (offs_dv[None, :] < HEAD_DV))


@triton.jit
def _dq_tile(
    dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
    stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
    # HOLE: capture_args
    # HOLE: grad_args
    # HOLE: hoisted_params_q
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, apply_mask, CHECK_KV: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    kv_idx = offs_n[None, :]
    kv_in = offs_n < KV_LEN
    if USE_TMA:
        kt = tl.trans(K_desc.load([start_n, 0]))
        vt = tl.trans(V_desc.load([start_n, 0]))
    elif CHECK_KV or HEAD_D != D_PAD or HEAD_DV != DV_PAD:
        kt = tl.load(K_head + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=kv_in[None, :] & (offs_d[:, None] < HEAD_D), other=0.0)
        vt = tl.load(V_head + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                     mask=kv_in[None, :] & (offs_dv[:, None] < HEAD_DV), other=0.0)
    else:
        kt = tl.load(K_head + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd)
        vt = tl.load(V_head + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd)
    if UPCAST:
        kt = kt.to(COMPUTE)
        vt = vt.to(COMPUTE)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
    if AFFINE_BIAS:
        # an affine bias rebased on this program's first query: per-key term here, the rest in m2 (see below)
        score = qk * qk_scale + bias_cols
    elif HAS_SCORE_MOD:
        raw_score = qk * sm_scale
        score = raw_score
        dscore = 1.0
        # the score mod may move a positive last factor into this (attnc.codegen.skeleton.score_value_lines);
        # in the compute dtype, exactly: a float constant would reach _online_softmax in float32
        score_log2e = tl.full([], LOG2E, COMPUTE)
        # HOLE: score_mod_q
    else:
        score = qk if SCALE_POSITIVE else qk * qk_scale
    if apply_mask:
        # HOLE: mask_mod_q
        score = tl.where(mask, score, float("-inf"))
    if CHECK_KV:
        score = tl.where(kv_in[None, :], score, float("-inf"))
    # p here is the forward's unnormalised exp2(z - m) (in [0, 1]): each row's 1 / l multiplies its dq once, at
    # the end, and the captured tensors' gradients where they are accumulated
    if AFFINE_BIAS:
        p = tl.exp2(score - (m2 - bias_a * (start_n - q_origin).to(COMPUTE))[:, None])
    elif HAS_SCORE_MOD:
        p = tl.exp2(score * score_log2e - m2[:, None])
    elif SCALE_POSITIVE:  # the scale and log2(e) ride on the multiply-add that subtracts the maximum
        p = tl.exp2(score * qk_scale - m2[:, None])
    else:
        p = tl.exp2(score - m2[:, None])
    if HAS_SCORE_MOD and not AFFINE_BIAS:
        # p * dz/dscore before the dP matmul, as in the dK/dV kernel; dp - delta is finite, so dz is 0 where p is
        p_dscore = p * dscore if DSCORE_FINITE else tl.where(p == 0.0, 0.0, p * dscore)
    dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
    if HAS_SCORE_MOD and not AFFINE_BIAS:
        dz = p * (dp - delta[:, None])  # for the captured tensors' gradients; unused (and not computed) otherwise
        ds = p_dscore * (dp - delta[:, None])
    else:  # no mod, or an affine bias (dz/dscore = 1)
        ds = p * (dp - delta[:, None])
        dz = ds
    dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=DOT_PRECISION)
    # HOLE: grad_accumulate
    return dq


@triton.jit
def _dq_visit(
    dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
    stride_kn, stride_kd, stride_vn, stride_vd,
    start_n, b_idx, h_idx, q_idx, q_in, q_lo, q_hi, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
    # HOLE: capture_args
    # HOLE: grad_args
    # HOLE: hoisted_params_q
    # HOLE: tile_test_params_q
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, KV_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_POSITIVE: tl.constexpr, FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr,
    SCORE_FACTOR_POSITIVE: tl.constexpr,
    COMPUTE: tl.constexpr,
    TILE_KIND: tl.constexpr,
):
    if TILE_KIND == OFF_BAND:  # inside the full range, before KV_LEN: nothing to test or mask
        dq = _dq_tile(
            dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
            stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
            # HOLE: capture_pass
            # HOLE: grad_pass
            # HOLE: hoisted_pass_q
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, False, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    elif TILE_KIND == ON_BAND:  # beside the full range: masked, untested, so the loop has no branch
        dq = _dq_tile(
            dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
            stride_kn, stride_kd, stride_vn, stride_vd,
            start_n, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
            # HOLE: capture_pass
            # HOLE: grad_pass
            # HOLE: hoisted_pass_q
            HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, True, not KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
            SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
        )
    else:
        kv_lo = start_n
        kv_hi = tl.minimum(start_n + BLOCK_N, KV_LEN) - 1
        # HOLE: tile_test_q
        if may_true:
            dq = _dq_tile(
                dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
                # HOLE: capture_pass
                # HOLE: grad_pass
                # HOLE: hoisted_pass_q
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, may_false, not KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
    return dq


@triton.jit(do_not_specialize=DO_NOT_SPECIALIZE)
def attnc_backward_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_lb, stride_lh, stride_lm, stride_ls,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    KV_NUM_BLOCKS, KV_INDICES, FULL_KV_NUM_BLOCKS, FULL_KV_INDICES,
    stride_nb, stride_nh, stride_nm,
    stride_ib, stride_ih, stride_im, stride_in,
    stride_fnb, stride_fnh, stride_fnm,
    stride_fib, stride_fih, stride_fim, stride_fin,
    sm_scale, H_Q, GQA_GROUP, Q_LEN, KV_LEN,
    # HOLE: capture_args
    # HOLE: grad_args
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPARSE_Q_BLOCK: tl.constexpr, SPARSE_KV_BLOCK: tl.constexpr,
    USE_BLOCK_MASK: tl.constexpr, HAS_FULL_BLOCKS: tl.constexpr, HAS_MASK: tl.constexpr,
    KV_EVEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    FAST_MATH: tl.constexpr, TILE_DIVISORS: tl.constexpr, SCORE_FACTOR_POSITIVE: tl.constexpr,
):
    # One program: BLOCK_M query rows of one (batch, query head), over the key tiles they attend to.
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
    q_in = offs_m < Q_LEN
    q = tl.load(Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=q_in[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    do = tl.load(DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=q_in[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        q = q.to(COMPUTE)
        do = do.to(COMPUTE)
    LSE_rows = LSE + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lm
    m2 = tl.load(LSE_rows + stride_ls, mask=q_in, other=float("inf"))
    inv_l = tl.exp2(-tl.load(LSE_rows + 2 * stride_ls, mask=q_in, other=0.0))
    delta = tl.load(DELTA + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lm, mask=q_in, other=0.0)
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
    dq = tl.zeros([BLOCK_M, D_PAD], COMPUTE)
    qk_scale = sm_scale * LOG2E

    b_idx = off_b
    h_idx = off_h
    q_idx = offs_m[:, None]
    # HOLE: hoist_program_q
    # HOLE: hoist_q
    q_origin = start_m * BLOCK_M
    if AFFINE_BIAS:
        # the bias in base 2 rebased on this program's first query: its per-query terms leave the row maximum
        # here, once; the tiles add alpha * (key - q_origin) back
        # HOLE: affine_bias_q
        bias_a = bias_alpha * LOG2E
        bias_cols = bias_a * tl.arange(0, BLOCK_N).to(COMPUTE)[None, :]
        m2 = m2 - (bias_beta * LOG2E * (offs_m - q_origin).to(COMPUTE)
                   + ((bias_alpha + bias_beta) * q_origin.to(COMPUTE) + bias_gamma) * LOG2E)
    else:
        bias_a = 0.0
        bias_cols = 0.0

    if USE_BLOCK_MASK:
        sparse_row = (start_m * BLOCK_M) // SPARSE_Q_BLOCK
        TILES_PER_BLOCK: tl.constexpr = SPARSE_KV_BLOCK // BLOCK_N
        if HAS_FULL_BLOCKS:
            n_full = tl.load(FULL_KV_NUM_BLOCKS + off_b * stride_fnb + off_h * stride_fnh
                             + sparse_row * stride_fnm)
            full_list = FULL_KV_INDICES + off_b * stride_fib + off_h * stride_fih + sparse_row * stride_fim
            for t in tl.range(0, n_full * TILES_PER_BLOCK, warp_specialize=WARP_SPECIALIZE):
                block = tl.load(full_list + (t // TILES_PER_BLOCK) * stride_fin)
                dq = _dq_tile(
                    dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
                    stride_kn, stride_kd, stride_vn, stride_vd,
                    block * SPARSE_KV_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_N, b_idx, h_idx, q_idx, q_in,
                sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
                    # HOLE: capture_pass
                    # HOLE: grad_pass
                    # HOLE: hoisted_pass_q
                    HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, not KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                    SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
                )
        n_partial = tl.load(KV_NUM_BLOCKS + off_b * stride_nb + off_h * stride_nh + sparse_row * stride_nm)
        partial_list = KV_INDICES + off_b * stride_ib + off_h * stride_ih + sparse_row * stride_im
        for t in tl.range(0, n_partial * TILES_PER_BLOCK):
            block = tl.load(partial_list + (t // TILES_PER_BLOCK) * stride_in)
            dq = _dq_tile(
                dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                block * SPARSE_KV_BLOCK + (t % TILES_PER_BLOCK) * BLOCK_N, b_idx, h_idx, q_idx, q_in,
                sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
                # HOLE: capture_pass
                # HOLE: grad_pass
                # HOLE: hoisted_pass_q
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, HAS_MASK, not KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
    elif HAS_MASK:
        q_lo = start_m * BLOCK_M
        q_hi = tl.minimum(q_lo + BLOCK_M, Q_LEN) - 1
        # HOLE: hoist_tile_test_q
        # HOLE: kv_ranges
    else:
        kv_whole = (KV_LEN // BLOCK_N) * BLOCK_N
        for start_n in tl.range(0, kv_whole, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            dq = _dq_tile(
                dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                start_n, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
                # HOLE: capture_pass
                # HOLE: grad_pass
                # HOLE: hoisted_pass_q
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, False, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
        if not KV_EVEN:
            dq = _dq_tile(
                dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,
                stride_kn, stride_kd, stride_vn, stride_vd,
                kv_whole, b_idx, h_idx, q_idx, q_in, sm_scale, qk_scale, KV_LEN, q_origin, bias_cols, bias_a,
                # HOLE: capture_pass
                # HOLE: grad_pass
                # HOLE: hoisted_pass_q
                HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, False, True, UPCAST, DOT_PRECISION, USE_TMA,
                SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,
            )
    dq = dq * (sm_scale * inv_l)[:, None]
    tl.store(DQ + off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh
             + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=q_in[:, None] & (offs_d[None, :] < HEAD_D))
