"""Captured-tensor gradients without atomics, summed in a fixed order: bitwise reproducible.

The default backward adds each pair's contribution to a captured tensor's gradient with atomic adds,
whose order (and so the last bits of a float sum) changes from run to run. With `deterministic=True` the
kernels compute dq, dk and dv as usual (they never use atomics: each program owns its rows) and the
captured gradients come from this pass instead: query rows are processed in chunks (at most
`CHUNK_ELEMENTS` pairs at once, so memory stays bounded at any length); within a chunk every
contribution dz * dz/dL is computed with torch from the IR's derivative, sorted by the element it belongs
to (a stable sort), and summed per element by a float64 prefix sum; chunks are added in order. Its cost is
about that of a dense attention backward in torch, plus the sort.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from attnc.ir.derivative import derivative, gradient_loads
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.node import Node
from attnc.ir.program import Program
from attnc.runtime.launch import compute_dtype

CHUNK_ELEMENTS = 1 << 22


def captured_gradients(program: Program, query: Tensor, key: Tensor, value: Tensor, lse: Tensor, delta: Tensor,
                       dout: Tensor, *, tensors: Sequence[Tensor], params: Sequence[int | float], scale: float,
                       slots: Sequence[int]) -> dict[int, Tensor]:
    """Gradients of the captured tensors `slots` (read by `program.score`), in the dtype the kernels compute
    in (float32, or float64 for float64 inputs)."""
    assert program.score is not None
    reads = [r for r in gradient_loads(program.score, program.tensors) if r.arg in slots]
    partials = {r: derivative(program.score, r) for r in reads}
    sums = {slot: torch.zeros(tensors[slot].numel(), dtype=torch.float64, device=query.device) for slot in slots}
    B, Hq, Q, _ = query.shape
    KV, group = key.shape[2], Hq // key.shape[1]
    acc = compute_dtype(query.dtype)
    k = key.to(acc).repeat_interleave(group, dim=1)
    v = value.to(acc).repeat_interleave(group, dim=1)
    env = Env(*index_grids(B, Hq, Q, KV, query.device), tensors=tensors, params=params,
              float64=acc == torch.float64)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, B * Hq * KV))
    for start in range(0, Q, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        chunk = dataclasses.replace(env, q=env.q[:, :, rows])
        dz, chunk = _score_gradient(program, query[:, :, rows], k, v, lse[:, :, rows], delta[:, :, rows],
                                    dout[:, :, rows], scale, chunk)
        for read in reads:
            contribution = torch.where(dz == 0, 0.0, dz * evaluate(partials[read], chunk).to(acc))
            index = _flat_index(read, tensors[read.arg], chunk).expand_as(contribution)
            _ordered_add(sums[read.arg], index.reshape(-1), contribution.reshape(-1))
    return {slot: total.view(tensors[slot].shape).to(acc) for slot, total in sums.items()}


def _score_gradient(program: Program, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, dout: Tensor,
                    scale: float, env: Env) -> tuple[Tensor, Env]:
    """dz = p * (dO.v - delta) on a chunk of rows (0 where masked), and the env with its scores."""
    acc = k.dtype
    scores = torch.matmul(q.to(acc), k.transpose(-1, -2)) * scale
    env = dataclasses.replace(env, score=scores)
    z = torch.broadcast_to(evaluate(program.score, env).to(acc), scores.shape)
    lse = torch.where(lse == -math.inf, math.inf, lse.to(acc)).unsqueeze(-1)
    p = torch.exp(z - lse)
    if program.mask is not None:
        p = torch.where(evaluate(program.mask, env), p, 0.0)
    dp = torch.matmul(dout.to(acc), v.transpose(-1, -2))
    return torch.where(p == 0, 0.0, p * (dp - delta.to(acc).unsqueeze(-1))), env


def _flat_index(read: Node, tensor: Tensor, env: Env) -> Tensor:
    """The element of `tensor` each pair's read lands on (indices clamped as LOAD does), as a flat int64."""
    flat = torch.zeros((), dtype=torch.int64, device=tensor.device)
    stride = 1
    for d in reversed(range(tensor.dim())):
        index = evaluate(read.src[d], env).to(torch.int64).clamp(0, tensor.shape[d] - 1)
        flat = flat + index * stride
        stride *= tensor.shape[d]
    return flat


def _ordered_add(target: Tensor, index: Tensor, values: Tensor) -> None:
    """target[index[i]] += values[i], summed in an order fixed by the data, never by thread scheduling."""
    order = torch.argsort(index, stable=True)
    index, prefix = index[order], torch.cumsum(values[order].double(), dim=0)
    last = torch.ones_like(index, dtype=torch.bool)
    last[:-1] = index[1:] != index[:-1]
    totals = prefix[last]
    totals = torch.cat([totals[:1], totals[1:] - totals[:-1]])
    touched = index[last]  # each element once: a gather and a scatter, no accumulation in memory
    target[touched] = target[touched] + totals
