"""The yardstick: a plain dense FlashAttention-2 forward and backward, written from the published algorithm
(Dao, "FlashAttention-2", 2023), against which `attnc.perf.report` judges attnc's generated kernels.

Nothing here is attnc-specific: no mask, no score mod, no tile classes, no padding of head dims. Per
(query tile, key tile) the forward does one QK^T matmul, an online softmax in base 2 whose only per-score
arithmetic is one fused multiply-add (the softmax scale and log2(e) are folded into one factor, applied to
the row maximum rather than to each score) and one exp2, and one PV matmul. The backward recomputes P from
the forward's log-sum-exp in the same way.

This file is real Triton loadable by path (the ahead-of-time worker loads kernels by file path): at import
it needs only `triton`; torch is imported by the launchers, which run the kernels on CUDA tensors or, with
TRITON_INTERPRET=1, on CPU tensors.

Conventions: q [B, H, Q_LEN, D], k [B, H, KV_LEN, D], v [B, H, KV_LEN, Dv], unit last strides, D and Dv
powers of two of at least 16, lengths multiples of the tiles (the yardstick measures the steady-state loop,
so it has no ragged tail), scale > 0 (so the row maximum of the raw scores scales to the maximum of the
scaled ones). lse is the natural-log log-sum-exp per row, [B, H, Q_LEN], float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import triton
import triton.language as tl

if TYPE_CHECKING:
    import torch

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# Tiles per kernel and head dim on sm_90 (block_m, block_n, num_warps, num_stages), the sizes good Hopper
# Triton kernels use. block_m always counts queries and block_n keys. The forward's 128 query rows give each
# of the 8 warps' two warpgroups a 64-row wgmma; dK/dV keeps 128 key rows resident so its wgmma M dimension
# is the keys, and steps 64 queries at a time (at D = 128: 245 registers; 128 queries spill, as do 4 warps);
# dQ keeps 128 query rows and steps 64 keys (155 registers at D = 128). Each compiles for sm_90 with no
# spills, wgmma, no ptxas performance warning and pipelined TMA loads (tests/test_perf_report.py; every
# static report records them).
SM90_TILES: dict[str, dict[int, tuple[int, int, int, int]]] = {
    "forward": {64: (128, 128, 8, 3), 128: (128, 128, 8, 3)},
    "backward_dkdv": {64: (64, 128, 8, 2), 128: (64, 128, 8, 2)},
    "backward_dq": {64: (128, 64, 8, 2), 128: (128, 64, 8, 2)},
}
KERNELS = {"forward": "yardstick_forward", "backward_dkdv": "yardstick_dkdv", "backward_dq": "yardstick_dq",
           "preprocess": "yardstick_delta"}
DELTA_BLOCK = 64  # rows per program of the preprocess


@triton.jit
def _tile(base, desc, start, stride_row, ROWS: tl.constexpr, COLS: tl.constexpr, USE_TMA: tl.constexpr):
    """The [ROWS, COLS] tile of a row-major [rows, COLS] head starting at row `start`."""
    if USE_TMA:
        return desc.load([start, 0])
    rows = start + tl.arange(0, ROWS)
    return tl.load(base + rows[:, None] * stride_row + tl.arange(0, COLS)[None, :])


@triton.jit
def _descriptor(base, rows, stride_row, BLOCK: tl.constexpr, COLS: tl.constexpr, USE_TMA: tl.constexpr):
    # one return (Triton types a function by its returns): the descriptor, or the pointer itself
    return (tl.make_tensor_descriptor(base, shape=[rows, COLS], strides=[stride_row, 1], block_shape=[BLOCK, COLS])
            if USE_TMA else base)


@triton.jit
def yardstick_forward(
    Q, K, V, OUT, LSE, sm_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, Q_LEN, KV_LEN,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_b = tl.program_id(1) // H
    off_h = tl.program_id(1) % H
    q_head = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_head = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_head = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    q_desc = _descriptor(q_head, Q_LEN, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
    k_desc = _descriptor(k_head, KV_LEN, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
    v_desc = _descriptor(v_head, KV_LEN, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)

    q = _tile(q_head, q_desc, start_m, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
    # scores in log2 units: exp(s * scale - m) == exp2(s * scale * log2(e) - m'), one factor for both
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DV], tl.float32)
    tl.assume(KV_LEN > 0)  # as in yardstick_dkdv
    for start_n in tl.range(0, KV_LEN, BLOCK_N):
        k = _tile(k_head, k_desc, start_n, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
        s = tl.dot(q, tl.trans(k))
        # scale > 0: the maximum of the scaled scores is the scaled maximum, so each score needs one
        # fused multiply-add (s * qk_scale - m) before its exp2
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _tile(v_head, v_desc, start_n, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    out = acc / l_i[:, None]
    rows = start_m + tl.arange(0, BLOCK_M)
    o_head = OUT + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    tl.store(o_head + rows[:, None] * stride_om + tl.arange(0, HEAD_DV)[None, :], out.to(OUT.dtype.element_ty))
    tl.store(LSE + tl.program_id(1).to(tl.int64) * Q_LEN + rows, (m_i + tl.math.log2(l_i)) * LN2)


@triton.jit
def yardstick_delta(
    OUT, DO, DELTA, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom, H, Q_LEN,
    HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(O * dO), the backward's per-row correction term."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_b = tl.program_id(1) // H
    off_h = tl.program_id(1) % H
    cols = tl.arange(0, HEAD_DV)[None, :]
    o = tl.load(OUT + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + rows[:, None] * stride_om
                + cols)
    do = tl.load(DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
                 + rows[:, None] * stride_dom + cols)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + tl.program_id(1).to(tl.int64) * Q_LEN + rows, delta)


@triton.jit
def yardstick_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
    H, Q_LEN, KV_LEN,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """dK and dV of BLOCK_N keys, looping over query tiles of BLOCK_M. Computed transposed ([keys, queries])
    so the keys are the matmuls' M dimension."""
    start_n = tl.program_id(0) * BLOCK_N
    off_b = tl.program_id(1) // H
    off_h = tl.program_id(1) % H
    q_head = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_head = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_head = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    do_head = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    row_stats = tl.program_id(1).to(tl.int64) * Q_LEN
    q_desc = _descriptor(q_head, Q_LEN, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
    do_desc = _descriptor(do_head, Q_LEN, stride_dom, BLOCK_M, HEAD_DV, USE_TMA)
    k_desc = _descriptor(k_head, KV_LEN, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
    v_desc = _descriptor(v_head, KV_LEN, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)

    k = _tile(k_head, k_desc, start_n, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
    v = _tile(v_head, v_desc, start_n, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)
    qk_scale = sm_scale * LOG2E
    dk = tl.zeros([BLOCK_N, HEAD_D], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DV], tl.float32)
    # the loop runs at least once (the launcher checks): said to the compiler, the accumulators have no
    # zero-trip path defined by plain moves, on which ptxas would serialize every wgmma (C7515)
    tl.assume(Q_LEN > 0)
    for start_m in tl.range(0, Q_LEN, BLOCK_M):
        q = _tile(q_head, q_desc, start_m, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
        do = _tile(do_head, do_desc, start_m, stride_dom, BLOCK_M, HEAD_DV, USE_TMA)
        rows = start_m + tl.arange(0, BLOCK_M)
        lse2 = tl.load(LSE + row_stats + rows) * LOG2E  # natural log -> log2, per row
        delta = tl.load(DELTA + row_stats + rows)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse2[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk)

    keys = start_n + tl.arange(0, BLOCK_N)
    # dK and dV share q's strides (the launcher makes them contiguous like k and v)
    dk_head = DK + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    dv_head = DV + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    tl.store(dk_head + keys[:, None] * stride_kn + tl.arange(0, HEAD_D)[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty))
    tl.store(dv_head + keys[:, None] * stride_vn + tl.arange(0, HEAD_DV)[None, :], dv.to(DV.dtype.element_ty))


@triton.jit
def yardstick_dq(
    Q, K, V, DO, LSE, DELTA, DQ, sm_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
    H, Q_LEN, KV_LEN,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """dQ of BLOCK_M queries, looping over key tiles of BLOCK_N."""
    start_m = tl.program_id(0) * BLOCK_M
    off_b = tl.program_id(1) // H
    off_h = tl.program_id(1) % H
    q_head = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_head = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_head = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    do_head = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    q_desc = _descriptor(q_head, Q_LEN, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
    do_desc = _descriptor(do_head, Q_LEN, stride_dom, BLOCK_M, HEAD_DV, USE_TMA)
    k_desc = _descriptor(k_head, KV_LEN, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
    v_desc = _descriptor(v_head, KV_LEN, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)

    q = _tile(q_head, q_desc, start_m, stride_qm, BLOCK_M, HEAD_D, USE_TMA)
    do = _tile(do_head, do_desc, start_m, stride_dom, BLOCK_M, HEAD_DV, USE_TMA)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_stats = tl.program_id(1).to(tl.int64) * Q_LEN
    lse2 = tl.load(LSE + row_stats + rows) * LOG2E
    delta = tl.load(DELTA + row_stats + rows)
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    tl.assume(KV_LEN > 0)  # as in yardstick_dkdv
    for start_n in tl.range(0, KV_LEN, BLOCK_N):
        k = _tile(k_head, k_desc, start_n, stride_kn, BLOCK_N, HEAD_D, USE_TMA)
        v = _tile(v_head, v_desc, start_n, stride_vn, BLOCK_N, HEAD_DV, USE_TMA)
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse2[:, None])
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)

    dq_head = DQ + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    tl.store(dq_head + rows[:, None] * stride_qm + tl.arange(0, HEAD_D)[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty))


# -- launchers ---------------------------------------------------------------------------------------------


def sm90_tiles(kind: str, head_dim: int, head_dim_v: int) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) of `kind` on sm_90 for these head dims (the wider decides)."""
    rows = SM90_TILES[kind]
    widest = max(head_dim, head_dim_v)
    fitting = [d for d in sorted(rows) if widest <= d]
    if not fitting:
        raise ValueError(f"attnc: the yardstick has sm_90 tiles for head dims up to {max(rows)}, not {widest}")
    return rows[fitting[0]]


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
            tiles: tuple[int, int, int, int] | None = None, use_tma: bool = True,
            kernels: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of dense attention. `tiles`: (block_m, block_n, num_warps, num_stages); default sm_90's.
    `kernels`: stand-ins for the kernels by KERNELS key (`attnc.perf.launches.Recorder` records the launch)."""
    import torch

    B, H, q_len, D = q.shape
    kv_len, Dv = v.shape[2], v.shape[3]
    block_m, block_n, num_warps, num_stages = tiles or sm90_tiles("forward", D, Dv)
    scale = _check(q, k, v, scale, block_m, block_n)
    out = torch.empty(B, H, q_len, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, q_len, dtype=torch.float32, device=q.device)
    kernel = _kernels(kernels, q.device, use_tma)["forward"]
    kernel[(q_len // block_m, B * H)](
        q, k, v, out, lse, scale, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        H, q_len, kv_len, HEAD_D=D, HEAD_DV=Dv, BLOCK_M=block_m, BLOCK_N=block_n, USE_TMA=use_tma,
        num_warps=num_warps, num_stages=num_stages)
    return out, lse


def backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
             dout: torch.Tensor, scale: float | None = None, *,
             tiles: Mapping[str, tuple[int, int, int, int]] | None = None, use_tma: bool = True,
             kernels: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of dense attention given the forward's out and lse. `tiles`: per kernel
    ("backward_dkdv", "backward_dq"), (block_m, block_n, num_warps, num_stages); default sm_90's.
    `kernels`: as for `forward`."""
    import torch

    B, H, q_len, D = q.shape
    kv_len, Dv = v.shape[2], v.shape[3]
    tiles = tiles or {kind: sm90_tiles(kind, D, Dv) for kind in ("backward_dkdv", "backward_dq")}
    dout, lse = dout.contiguous(), lse.contiguous()
    delta = torch.empty_like(lse)
    launch = _kernels(kernels, q.device, use_tma)
    launch["preprocess"][(triton.cdiv(q_len, DELTA_BLOCK), B * H)](
        out, dout, delta, *out.stride()[:3], *dout.stride()[:3], H, q_len, HEAD_DV=Dv, BLOCK_M=DELTA_BLOCK)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3], H, q_len, kv_len)
    for kind in ("backward_dkdv", "backward_dq"):
        block_m, block_n, num_warps, num_stages = tiles[kind]
        scale = _check(q, k, v, scale, block_m, block_n)
        consts = {"HEAD_D": D, "HEAD_DV": Dv, "BLOCK_M": block_m, "BLOCK_N": block_n, "USE_TMA": use_tma,
                  "num_warps": num_warps, "num_stages": num_stages}
        if kind == "backward_dkdv":
            launch[kind][(kv_len // block_n, B * H)](q, k, v, dout, lse, delta, dk, dv, scale, *common, **consts)
        else:
            launch[kind][(q_len // block_m, B * H)](q, k, v, dout, lse, delta, dq, scale, *common, **consts)
    return dq, dk, dv


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, block_m: int,
           block_n: int) -> float:
    """The softmax scale, after checking what the kernels assume (see the module docstring)."""
    q_len, D = q.shape[2:]
    kv_len, Dv = v.shape[2:]
    if q_len % block_m or kv_len % block_n or not (q_len and kv_len):
        raise ValueError(f"yardstick: lengths ({q_len}, {kv_len}) must be positive multiples of the tiles "
                         f"({block_m}, {block_n})")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("yardstick: q, k and v need unit last strides")
    if D & (D - 1) or Dv & (Dv - 1) or min(D, Dv) < 16:
        raise ValueError(f"yardstick: head dims must be powers of two of at least 16, got {D} and {Dv}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if scale <= 0:
        raise ValueError("yardstick: the scale must be positive (the row maximum is scaled, not each score)")
    return scale


def _kernels(given: Mapping[str, Any] | None, device: Any, use_tma: bool) -> Mapping[str, Any]:
    """The kernels to launch by KERNELS key: the stand-ins given, else this module's (with an allocator for
    the tensor descriptors when they are used)."""
    if given is not None:
        return given
    if use_tma:
        _ensure_allocator(device)
    return {kind: globals()[name] for kind, name in KERNELS.items()}


def _ensure_allocator(device: Any) -> None:
    """Device-side tensor descriptors live in scratch memory Triton asks an allocator for."""
    import torch

    def scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(scratch)
