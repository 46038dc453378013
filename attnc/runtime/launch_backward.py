"""Argument preparation and launch of the generated backward kernels (dK/dV, then dQ).

Between the passes only O(rows) statistics live: the forward's row statistics (its lse, base-2 row maximum
and log2 of its row sum; `launch.row_statistics`) and delta = rowsum(dO * O) - dlse (the second term carries
the gradient of a returned lse that fed later computation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import triton

from attnc.runtime.config import INTERPRETER_TILES, KernelConfig
from attnc.runtime.launch import (
    Shapes,
    block_mask_args,
    capture_args,
    check_block_mask,
    compute_dtype,
    constexprs,
    row_statistics,
    scalar_argument,
    score_factor_positive,
    tile_divisors,
    with_tma_if_ready,
)


@dataclasses.dataclass(frozen=True)
class BackwardConfigs:
    dkdv: KernelConfig  # block_n: keys per program; block_m: query tile of its loop
    dq: KernelConfig  # block_m: queries per program; block_n: key tile of its loop

    def fit_to_blocks(self, q_block: int, kv_block: int) -> BackwardConfigs:
        return BackwardConfigs(self.dkdv.fit_to_blocks(q_block, kv_block), self.dq.fit_to_blocks(q_block, kv_block))


def backward_configs(head_dim: int, head_dim_v: int, *, interpret: bool) -> BackwardConfigs:
    """Tiles for the two backward kernels: Hopper's rows of the default table (`autotune.DEFAULTS_BY_ARCH`,
    where the choice is explained). The dK/dV program keeps two [BLOCK_N, D] accumulators, the dQ program
    one [BLOCK_M, D]."""
    if interpret:
        return BackwardConfigs(INTERPRETER_TILES, INTERPRETER_TILES)
    from attnc.runtime.autotune import default_for

    return BackwardConfigs(default_for("backward_dkdv", "sm_90", head_dim, head_dim_v),
                           default_for("backward_dq", "sm_90", head_dim, head_dim_v))


def delta_rows(out: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None) -> torch.Tensor:
    """rowsum(dO * O) - dlse in the compute dtype (float32; float64 for float64 inputs), contiguous like the lse."""
    work = compute_dtype(out.dtype)
    delta = (dout.to(work) * out.to(work)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(work)
    return delta.contiguous()


def key_side_rows(stats: torch.Tensor, out: torch.Tensor, dout: torch.Tensor,
                  dlse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(statistics, dO, delta) for the dK/dV kernel, which spends no operation per score on the row sum l: its
    exponent subtracts m + e, with e = floor(log2(l)) (as much of it as adds to m exactly), and the rest of 1 / l,
    f = 2^(e - log2(l)) in (1/2, 1], multiplies dO and delta instead. Its dK and dV are then exact for dO
    rounded once more to its dtype (a relative 2^-9 in bfloat16), and its exponent is the forward's at any
    magnitude of the logits. Returns statistics whose plane 1 is m + e."""
    m2, log2_l = stats[1], stats[2]
    shifted = m2 + torch.floor(log2_l)
    e = shifted - m2  # what the sum added, exactly: at |m| >= 2^24 the sum rounds
    # an empty row (m = inf) keeps m; a rounding up past log2(l) would make f > 1 (dO could overflow): keep m
    usable = torch.isfinite(shifted) & (e <= log2_l)
    shifted, e = torch.where(usable, shifted, m2), torch.where(usable, e, 0.0)
    f = torch.exp2(e - log2_l)
    work = compute_dtype(out.dtype)
    scaled = (dout.to(work) * f[..., None]).to(dout.dtype)
    delta = (scaled.to(work) * out.to(work)).sum(-1)
    if dlse is not None:
        delta = delta - f * dlse.to(work)
    return torch.stack([stats[0], shifted]), scaled, delta.contiguous()


def _grad_buffers(tensors: Sequence[torch.Tensor], slots: Sequence[int], wanted: Sequence[bool],
                  dummy: torch.Tensor) -> tuple[list[Any], dict[str, bool], dict[int, torch.Tensor]]:
    """Accumulators in the compute dtype (the dummy's, the row statistics') for the captured tensors that need a
    gradient; the dummy for the others."""
    args: list[Any] = []
    flags: dict[str, bool] = {}
    buffers: dict[int, torch.Tensor] = {}
    for slot, want in zip(slots, wanted, strict=True):
        t = tensors[slot]
        if want:
            buffers[slot] = torch.zeros(t.shape, dtype=dummy.dtype, device=t.device)
            args += [buffers[slot], *buffers[slot].stride()]
        else:
            args += [dummy, *([0] * t.dim())]
        flags[f"GRAD{slot}"] = bool(want)
    return args, flags, buffers


def launch_backward(dkdv_kernel: Any, dq_kernel: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None, *,
                    shapes: Shapes, scale: float | None, tensors: Sequence[torch.Tensor],
                    params: Sequence[int | float], grad_slots: Sequence[int], grad_wanted: Sequence[bool],
                    block_mask: Any, configs: BackwardConfigs, has_mask: bool, interpret: bool,
                    divisor_slots: tuple[Sequence[int], Sequence[int]] = ((), ()), factor_slot: int | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """(dq, dk, dv, {slot: gradient in the compute dtype}) for the captured tensors with grad_wanted;
    `divisor_slots`: the parameters dividing the dK/dV and the dQ kernel's tile index, `factor_slot` the score
    mod's last factor (`BackwardSource`)."""
    dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
    stats = row_statistics(lse, compute_dtype(query.dtype))
    delta = delta_rows(out, dout, dlse)
    block_sizes = check_block_mask(block_mask, shapes, query.device) if block_mask is not None else None
    if block_sizes is not None:
        configs = configs.fit_to_blocks(*block_sizes)
    # each kernel streams two operands through descriptors when TMA is on: dK/dV q and dO, dQ k and v.
    # The dQ loop is never warp-specialized: Triton's pass fails on it (seen for a softcap at D = 64).
    dq_config = dataclasses.replace(configs.dq, warp_specialize=False)
    key_stats, key_dout, key_delta = key_side_rows(stats, out, dout, dlse)
    configs = BackwardConfigs(with_tma_if_ready(configs.dkdv, query, key_dout),
                              with_tma_if_ready(dq_config, key, value))
    sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(shapes.D))
    scale_arg = scalar_argument(sm_scale, query.dtype)
    captured = capture_args(tensors, [scalar_argument(p, query.dtype) for p in params])
    grad_args, grad_flags, buffers = _grad_buffers(tensors, grad_slots, grad_wanted, stats)
    if shapes.KV_LEN == 0 or shapes.Q_LEN == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), buffers
    common = [*query.stride(), *key.stride(), *value.stride(), *dout.stride(), *stats.stride()[1:],
              stats.stride(0)]

    def consts(config: KernelConfig, has_full: bool, divisors: int) -> dict[str, Any]:
        c = constexprs(shapes, config, query.dtype, block_sizes=block_sizes, has_full=has_full, has_mask=has_mask,
                       interpret=interpret, scale=sm_scale, divisors=divisors,
                       factor_positive=score_factor_positive(params, factor_slot))
        c["Q_EVEN"] = shapes.Q_LEN % c["SPARSE_Q_BLOCK"] == 0  # as KV_EVEN: every query tile inside
        return c

    q_side, has_full_q = block_mask_args(block_mask, shapes, lse, side="q")
    c = consts(configs.dkdv, has_full_q, tile_divisors(params, divisor_slots[0], configs.dkdv.block_m))
    c.pop("KV_EVEN")
    key_common = [*query.stride(), *key.stride(), *value.stride(), *key_dout.stride(), *key_stats.stride()[1:],
                  key_stats.stride(0)]
    dkdv_kernel[(triton.cdiv(shapes.KV_LEN, configs.dkdv.block_n), shapes.B * shapes.Hkv)](
        query, key, value, key_dout, key_stats, key_delta, dk, dv, *key_common, *dk.stride(), *dv.stride(), *q_side,
        scale_arg, shapes.Hq, shapes.Hkv, shapes.gqa_group, shapes.Q_LEN, shapes.KV_LEN, *captured, **c,
        num_warps=configs.dkdv.num_warps, num_stages=configs.dkdv.num_stages)

    kv_side, has_full_kv = block_mask_args(block_mask, shapes, lse)
    c = consts(configs.dq, has_full_kv, tile_divisors(params, divisor_slots[1], configs.dq.block_n))
    c.pop("Q_EVEN")
    dq_kernel[(triton.cdiv(shapes.Q_LEN, configs.dq.block_m), shapes.B * shapes.Hq)](
        query, key, value, dout, stats, delta, dq, *common, *dq.stride(), *kv_side, scale_arg, shapes.Hq,
        shapes.gqa_group, shapes.Q_LEN, shapes.KV_LEN, *captured, *grad_args, **c, **grad_flags,
        num_warps=configs.dq.num_warps, num_stages=configs.dq.num_stages)
    return dq, dk, dv, buffers
