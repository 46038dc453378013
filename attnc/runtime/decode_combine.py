"""The combine of split-KV decoding: each row's split results merged exactly through their lse, in one kernel.

With split outputs o_s (each normalised over its own keys) and natural-log lse l_s, the row's lse is
l = log sum_s exp(l_s) and its output o = sum_s exp(l_s - l) o_s (`attnc.runtime.merge`). A split in which the
row sees no key has l_s = -inf and weight 0; a row that sees none anywhere gets 0 and -inf, never NaN. The
kernel writes the output in the caller's layout and dtype, so the merge costs one read of the partial results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def combine_splits(
    OUT_PART, LSE_PART, OUT, LSE,
    stride_ps, stride_pb, stride_ph, stride_pm, stride_pd,
    stride_ls, stride_lb, stride_lh, stride_lm,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_rb, stride_rh, stride_rm,
    H, Q_LEN, SPLITS,
    HEAD_DV: tl.constexpr, DV_PAD: tl.constexpr,
):
    row = tl.program_id(0)
    off_b = row // (H * Q_LEN)
    off_h = (row // Q_LEN) % H
    off_m = row % Q_LEN
    COMPUTE: tl.constexpr = LSE_PART.dtype.element_ty
    lse_row = LSE_PART + off_b.to(tl.int64) * stride_lb + off_h * stride_lh + off_m * stride_lm
    part_row = OUT_PART + off_b.to(tl.int64) * stride_pb + off_h * stride_ph + off_m * stride_pm
    offs_dv = tl.arange(0, DV_PAD)
    top = tl.full([], float("-inf"), COMPUTE)
    for s in range(SPLITS):
        top = tl.maximum(top, tl.load(lse_row + s * stride_ls))
    # no split saw a key: every weight below is exp(-inf) = 0 against a finite stand-in maximum
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.zeros([], COMPUTE)
    acc = tl.zeros([DV_PAD], COMPUTE)
    for s in range(SPLITS):
        weight = tl.exp(tl.load(lse_row + s * stride_ls) - top)
        part = tl.load(part_row + s * stride_ps + offs_dv * stride_pd, mask=offs_dv < HEAD_DV, other=0.0)
        total += weight
        acc += weight * part.to(COMPUTE)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    tl.store(OUT + off_b.to(tl.int64) * stride_ob + off_h * stride_oh + off_m * stride_om + offs_dv * stride_od,
             out.to(OUT.dtype.element_ty), mask=offs_dv < HEAD_DV)
    lse = tl.where(empty, float("-inf"), top + tl.log(tl.where(empty, 1.0, total)))
    tl.store(LSE + off_b * stride_rb + off_h * stride_rh + off_m * stride_rm, lse)


def launch_combine(out_parts: torch.Tensor, lse_parts: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   dv_pad: int) -> None:
    """Merge `out_parts [S, B, H, Q_LEN, Dv]` and `lse_parts [S, B, H, Q_LEN]` into `out [B, H, Q_LEN, Dv]` (any
    strides and floating dtype) and `lse [B, H, Q_LEN]`."""
    _, B, H, Q_LEN, Dv = out_parts.shape
    if B * H * Q_LEN == 0:
        return
    combine_splits[(B * H * Q_LEN,)](
        out_parts, lse_parts, out, lse, *out_parts.stride(), *lse_parts.stride(), *out.stride(), *lse.stride(),
        H, Q_LEN, out_parts.shape[0], HEAD_DV=Dv, DV_PAD=dv_pad, num_warps=1,
    )
